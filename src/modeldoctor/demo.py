"""The whole story on offline data: a classifier that learned a background shortcut, diagnosed and treated.

1. train a baseline on ``shortcut-mnist`` (the background texture gives the class away in training only);
2. diagnose it (Eq. 3–4, every conv layer), check whether it reads the background (swap composites from the
   dataset's masks) and list the images worth annotating (worst classes first, lowest confidence per class);
3. treat it with the shipped default (candidates tried on held-out background swaps made from 20 object masks
   per class), next to the matched control (the same fine-tune without the treatment's terms); evaluate
   original / control / treated and state the verdict: did the chosen candidate beat the control on swaps?
4. build the HTML report, which leads with that verdict.

Everything goes through the Python API (no subprocesses) and lands in ``out`` in the same files the CLI writes,
so ``modeldoctor report OUT`` rebuilds the report.  The settings follow ``benchmarks/shortcut.py``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from modeldoctor import api
from modeldoctor.data.sources import load_data
from modeldoctor.doctor.diagnosis import DiagnosisOptions
from modeldoctor.io import names
from modeldoctor.io.checkpoints import write_arm, write_model
from modeldoctor.io.diagnosis_files import save_diagnosis
from modeldoctor.io.documents import ANNOTATION_LIST, TREATMENT
from modeldoctor.training import TrainConfig

logger = logging.getLogger(__name__)

DATA = "shortcut-mnist"
MODEL = "simple-cnn-s2"


@dataclass(frozen=True)
class DemoSettings:
    """Budgets of one demo run; ``QUICK`` keeps the same steps at a fraction of the cost (CI)."""

    train_epochs: int = 10
    finetune_epochs: int = 3
    finetune_lr: float = 0.05  # the training lr: the treatment keeps the original optimiser settings
    samples_per_class: int = 50  # T of Eq. 4
    noise_draws: int = 10  # J of Eq. 4 (the treatment keeps its own default)
    annotate_per_class: int = 20  # masks the treatment may use, as in the paper
    mix_annotated: int = 16  # annotated images appended to every batch (treated and control alike)
    max_images: int = 6


FULL = DemoSettings()
QUICK = DemoSettings(train_epochs=2, finetune_epochs=1, samples_per_class=10, noise_draws=2, max_images=4)


def log(message: str) -> None:
    logger.info("%s", message)


def run_demo(out: str | Path = "runs/demo", quick: bool = False, seed: int = 0) -> dict[str, Any]:
    """Run the four steps into ``out``; returns ``{"html", "original", "control", "treated", ...}`` (M as in treat)."""
    settings = QUICK if quick else FULL
    out = Path(out)
    started = time.perf_counter()
    seconds: dict[str, float] = {}

    def lap(step: str) -> None:
        seconds[step] = round(time.perf_counter() - started - sum(seconds.values()), 1)
        log(f"{step} done ({seconds[step]:.0f} s)")

    data = load_data(DATA)
    cfg = TrainConfig(epochs=settings.train_epochs, batch_size=64, lr=0.05, seed=seed)
    log(f"training {MODEL} on {DATA} for {cfg.epochs} epochs")
    baseline = api.train(MODEL, data, cfg)
    checkpoint = write_model(out / names.BASELINE_DIR, baseline.model, baseline.meta)
    lap("train")

    log("diagnosing every conv layer")
    options = DiagnosisOptions(samples_per_class=settings.samples_per_class, noise_draws=settings.noise_draws, seed=seed)
    diagnosed = api.diagnose_model(baseline.model, data, "all", options, lowest=settings.annotate_per_class,
                                   model_spec=MODEL, masks=data.masks)
    save_diagnosis(diagnosed.diagnosis, out / names.DIAGNOSIS_DIR, diagnosed.shortcut)
    assert diagnosed.annotation is not None  # lowest > 0
    ANNOTATION_LIST.write(out / names.DIAGNOSIS_DIR, diagnosed.annotation)
    lap("diagnose")

    log(f"treating with {settings.annotate_per_class} masks per class, and the matched control")
    result = api.treat(baseline.model, diagnosed.diagnosis, data, annotate_per_class=settings.annotate_per_class,
                       epochs=settings.finetune_epochs, lr=settings.finetune_lr, batch_size=64, seed=seed,
                       mix_annotated=settings.mix_annotated)
    for arm in result.arms():  # one run: the seed-0 names (treated.pt, control.pt) whatever the seed
        write_arm(out / names.TREAT_DIR, arm.name, 0, arm.model, baseline.meta, checkpoint, arm.recipe, arm.metrics)
    TREATMENT.write(out / names.TREAT_DIR, api.treatment_document([result], str(checkpoint)))
    log(f"verdict: {result.verdict.get('message', '')}")
    lap("treat")

    html = api.build_report(out, max_images=settings.max_images)
    lap("report")
    seconds["total"] = round(time.perf_counter() - started, 1)
    return {"html": str(html), "original": result.original, "control": result.control_metrics,
            "treated": result.treated_metrics, "annotated": len(result.annotated), "held_out": len(result.held_out),
            "lambdas": result.lambdas, "select": result.select, "chosen": result.chosen,
            "candidates": result.candidates, "verdict": result.verdict, "quick": quick,
            "settings": asdict(settings), "seconds": seconds}
