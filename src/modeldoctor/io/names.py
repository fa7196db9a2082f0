"""Every output file name in one place: what the commands write, the demo writes and the report looks for."""

from __future__ import annotations

MODEL = "model.pt"
DIAGNOSIS_TENSORS = "diagnosis.safetensors"
DIAGNOSIS_JSON = "diagnosis.json"
ANNOTATE = "annotate.json"
TREAT = "treat.json"
ABLATE = "ablate.json"
ABLATE_UNITS = "ablate_units.csv"
DECOMPOSE = "decompose.json"
INFLUENTIAL = "influential.json"
DECOMPOSED = "decomposed.pt"
STABILITY = "stability.json"
STABILITY_FIGURE = "stability.png"
DISSECT = "dissect.json"
REPORT = "report.html"
FIGURES = "figures"


def arm_checkpoint(arm: str, seed: int = 0) -> str:
    """``treated.pt`` / ``control.pt`` for seed 0, ``treated-seed2.pt`` for seed 2."""
    return f"{arm}{'' if seed == 0 else f'-seed{seed}'}.pt"
