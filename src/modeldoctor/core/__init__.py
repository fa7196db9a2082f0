"""Engine: layer addressing and hooks, model state, noise replay, output selection, atomic files, errors."""
