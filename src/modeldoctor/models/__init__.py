"""Model zoo, checkpoints and the FocusedDropout layer that checkpoints re-insert."""
