"""The whole story on offline data: a classifier that learned a background shortcut, diagnosed and treated.

1. train a baseline on ``shortcut-mnist`` (the background texture gives the class away in training only);
2. diagnose it (Eq. 3–4, every conv layer) and list the images worth annotating (lowest confidence per class);
3. treat it with the space- and channel-wise constraints using 20 object masks per class, next to the matched
   control (the same fine-tune without the constraints); evaluate original / control / treated;
4. build the HTML report, whose derivative-map figures show how much of the model's attention sits on the
   background before and after.

Everything goes through the Python API (no subprocesses) and lands in ``out`` in the same files the CLI writes,
so ``modeldoctor report OUT`` rebuilds the report.  The settings follow ``benchmarks/shortcut.py``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from modeldoctor.api import annotation_list, treat, treatment_document
from modeldoctor.data.sources import load_data
from modeldoctor.doctor.arms import split_metrics
from modeldoctor.doctor.diagnosis import diagnose
from modeldoctor.io import names
from modeldoctor.io.diagnosis_files import save_diagnosis
from modeldoctor.io.documents import write_annotation_list, write_treatment
from modeldoctor.models.checkpoint import CheckpointMeta, save_checkpoint
from modeldoctor.models.zoo import build_model
from modeldoctor.report import report
from modeldoctor.training import TrainConfig, fit

logger = logging.getLogger(__name__)

DATA = "shortcut-mnist"
MODEL = "simple-cnn-s2"


@dataclass(frozen=True)
class DemoSettings:
    """Budgets of one demo run; ``QUICK`` keeps the same steps at a fraction of the cost (CI)."""

    train_epochs: int = 10
    finetune_epochs: int = 5
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
    torch.manual_seed(seed)
    model = build_model(MODEL, data.num_classes, data.in_channels, data.input_size)
    cfg = TrainConfig(epochs=settings.train_epochs, batch_size=64, lr=0.05, seed=seed)
    log(f"training {MODEL} on {DATA} for {cfg.epochs} epochs")
    fit(model, data.train, data.val, data.num_classes, cfg, desc="baseline")
    meta = CheckpointMeta(MODEL, data.num_classes, data.in_channels, data.input_size, data.class_names, data.mean,
                          data.std, data.spec, cfg.to_dict(), split_metrics(model, data.val, data.test, data.num_classes))
    checkpoint = save_checkpoint(out / "baseline" / names.MODEL, model, meta)
    lap("train")

    log("diagnosing every conv layer")
    diagnosis = diagnose(model, data.train, layers="all", samples_per_class=settings.samples_per_class,
                         noise_draws=settings.noise_draws, seed=seed, class_names=data.class_names, model_spec=MODEL)
    save_diagnosis(diagnosis, out / "diagnosis")
    annotate = annotation_list(model, data, per_class=settings.annotate_per_class)
    write_annotation_list(out / "diagnosis", annotate)
    lap("diagnose")

    log(f"treating with {settings.annotate_per_class} masks per class, and the matched control")
    result = treat(model, diagnosis, data, annotate_per_class=settings.annotate_per_class,
                   epochs=settings.finetune_epochs, lr=settings.finetune_lr, batch_size=64, seed=seed,
                   mix_annotated=settings.mix_annotated)
    for arm, tuned, metrics in (("treated", result.treated, result.treated_metrics),
                                ("control", result.control, result.control_metrics)):
        child = CheckpointMeta(**{**asdict(meta), "metrics": metrics, "parent": str(checkpoint),
                                  "train_config": result.train_config.to_dict() | {"treatment": result.config.to_dict()
                                                                                   if arm == "treated" else None}})
        if tuned is not None:
            save_checkpoint(out / "treat" / names.arm_checkpoint(arm), tuned, child)
    write_treatment(out / "treat", treatment_document([result], str(checkpoint)))
    lap("treat")

    html = report(out, max_images=settings.max_images)
    lap("report")
    seconds["total"] = round(time.perf_counter() - started, 1)
    return {"html": str(html), "original": result.original, "control": result.control_metrics,
            "treated": result.treated_metrics, "annotated": len(result.annotated), "held_out": len(result.held_out),
            "lambdas": result.lambdas, "select": result.select, "quick": quick,
            "settings": asdict(settings), "seconds": seconds}
