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
ANNOTATIONS = "annotations.json"  # `modeldoctor annotate`: every image's boxes / paint / "no object"
BOXES = "boxes.json"  # the boxes as id, x0, y0, x1, y1 rows (`treat --boxes`)
MASKS_DIR = "masks"  # one PNG per annotated image (`treat --masks`)

# Folders: `modeldoctor diagnose` writes DIAGNOSIS_DIR next to the checkpoint by default; the demo lays out
# OUT/BASELINE_DIR/model.pt, OUT/DIAGNOSIS_DIR/ and OUT/TREAT_DIR/.
DIAGNOSIS_DIR = "diagnosis"
BASELINE_DIR = "baseline"
TREAT_DIR = "treat"
ANNOTATION_DIR = "annotation"  # `modeldoctor annotate DIR` writes DIR/ANNOTATION_DIR/ by default

# What the report searches for besides the documents above.
CHECKPOINT_PATTERN = "*.pt"
EXPLAIN_PREFIX = "explain-"
EXPLAIN_PATTERN = f"{EXPLAIN_PREFIX}*.png"


def arm_checkpoint(arm: str, seed: int = 0) -> str:
    """``treated.pt`` / ``control.pt`` for seed 0, ``treated-seed2.pt`` for seed 2."""
    return f"{arm}{'' if seed == 0 else f'-seed{seed}'}.pt"


def explain_overlay(sample: str) -> str:
    """``explain-<sample>.png``, with every character other than letters, digits and ``-_.`` replaced by ``_``."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in sample)
    return f"{EXPLAIN_PREFIX}{safe}.png"


def figure(name: str) -> str:
    """A report figure's PNG inside :data:`FIGURES`."""
    return f"{name}.png"
