"""The Model Doctor method: sample selection, diagnosis (Eq. 3-4), relevance, Discovery 1,
constraints (Eq. 5-6), treatment (Eq. 7), explain."""
