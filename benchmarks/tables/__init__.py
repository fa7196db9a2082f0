"""The generators of every TABLE block in README.md and docs/, one module per subject."""
