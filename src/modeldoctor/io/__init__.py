"""Output files: one writer and one reader per file name and JSON schema."""
