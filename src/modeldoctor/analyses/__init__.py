"""Companion methods: input gradients, FGSM, Discovery 2, unit deletion, dissection, decomposition, Grad-CAM."""
