"""The Python API: one function per CLI command, on model objects instead of files.

Most commands already are a library function (``diagnose``, ``explain``, ``ablate``, ``decompose``,
``stability``, ``report``) and :mod:`modeldoctor` re-exports them; this module adds what only the CLI composed:
:func:`treat` (the treated fine-tune *and* its matched control, as ``modeldoctor treat`` runs them), the
``treat.json`` document (:func:`treatment_document`) and :func:`annotation_list` (``diagnose --lowest``).  The
CLI and the demo call these; every function leaves the model passed in unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modeldoctor.core.errors import UserError
from modeldoctor.core.layers import conv_layer_names, train_mode
from modeldoctor.core.replay import NoiseReplay
from modeldoctor.data.bundle import DataBundle
from modeldoctor.data.masks import check_masks, default_expansion
from modeldoctor.doctor.annotation import MaskBank, lowest_confidence
from modeldoctor.doctor.arms import mean_std, treat_and_control
from modeldoctor.doctor.diagnosis import Diagnosis
from modeldoctor.doctor.selection import SampleScores, least_confident, sample_ids, score_samples
from modeldoctor.doctor.treatment import TreatConfig, default_layers
from modeldoctor.training import TrainConfig


@dataclass
class TreatmentResult:
    """The treated model, its matched control, and their metrics ``M = {"val": …, "test": …, "swap": …}``."""

    treated: nn.Module
    control: nn.Module | None
    original: dict[str, Any]
    treated_metrics: dict[str, Any]
    control_metrics: dict[str, Any] | None
    config: TreatConfig
    train_config: TrainConfig
    annotated: list[str] = field(default_factory=list)  # ids of the training images whose masks trained
    held_out: list[str] = field(default_factory=list)  # ids of the annotated images kept for the swap test
    lambdas: dict[str, Any] = field(default_factory=dict)  # λ in use (auto-calibrated ones included)
    weight_change: dict[str, dict[str, float]] = field(default_factory=dict)  # arm → layer → ‖ΔW‖/‖W‖
    select: str = "val"  # the checkpoint rule actually used

    def summary(self) -> dict[str, Any]:
        """The ``treat.json`` layout: ``{"original": M, "control": M, "treated": M, ...}``."""
        return {"original": self.original, "control": self.control_metrics, "treated": self.treated_metrics,
                "config": self.config.to_dict(), "train_config": self.train_config.to_dict(),
                "annotated": len(self.annotated), "held_out": len(self.held_out), "lambdas": self.lambdas,
                "select": self.select, "weight_change": self.weight_change}


def treat(model: nn.Module, diagnosis: Diagnosis | None, data: DataBundle,
          masks: Mapping[str, torch.Tensor] | None = None, annotate_per_class: int | None = 20,
          constraints: Sequence[str] = ("space",), epochs: int = 5, lr: float = 0.05, batch_size: int = 64,
          seed: int = 0, control: bool = True, train_config: TrainConfig | None = None,
          relevant: dict[str, torch.Tensor] | None = None, state_dir: str | Path | None = None,
          resume: bool = False, **options: Any) -> TreatmentResult:
    """Eq. 7: fine-tune a copy of ``model`` with the constraints, and (``control=True``) a second copy without.

    ``masks``: object masks by training-sample id (default: ``data.masks``); the space-wise constraint uses those
    of the ``annotate_per_class`` lowest-confidence training images per class (``None``: every mask), less the
    held-out quarter that measures background-swap accuracy and chooses the checkpoint.
    ``diagnosis`` (or ``relevant``, per layer (num_classes, K) bool) supplies the relevant kernels of the
    channel-wise constraint.  ``options`` are :class:`~modeldoctor.doctor.treatment.TreatConfig` fields
    (``lam_space``, ``noise_draws``, ``select``, …).  Both arms share weights, data order, optimiser, epochs,
    seed and checkpoint rule; ``state_dir`` saves their state every epoch so ``resume=True`` continues.
    """
    space_default, channel_default = default_layers(model, (data.in_channels, data.input_size, data.input_size))
    cfg = TreatConfig(**{"space_layers": space_default, "channel_layers": channel_default,
                         "expansion": default_expansion(data.input_size), **options, "constraints": tuple(constraints)})
    if "channel" in cfg.constraints and relevant is None:
        if diagnosis is None:
            raise UserError("the channel-wise constraint needs a diagnosis; pass diagnose(model, ...) or drop 'channel'")
        relevant = {name: diagnosis.relevant(name) for name in cfg.channel_layers or []}
    bank = None
    given = check_masks(dict(masks if masks is not None else data.masks), data.input_size) if (
        masks or data.masks) else {}
    candidates = [sid for sid in data.train.ids if sid in given]
    if {"space", "input-gradient"} & set(cfg.constraints) and not candidates:
        raise UserError("no object mask matches a training image id; pass masks={sample_id: bool HxW tensor}")
    if candidates:
        chosen = lowest_confidence(model, data.train, candidates, annotate_per_class, data.num_classes)
        bank = MaskBank.build(data.train, given, chosen, data.input_size)
    base = train_config or TrainConfig()
    run_cfg = TrainConfig(**{**base.to_dict(), "epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed})
    arms = treat_and_control(model, data, cfg, run_cfg, relevant, bank, control=control, state_dir=state_dir,
                             resume=resume)
    ctrl = arms.get("control")
    return TreatmentResult(arms["treated"][0], ctrl[0] if ctrl else None, arms["original"], arms["treated"][1],
                           ctrl[1] if ctrl else None, cfg, run_cfg, arms["annotated"], arms["held_out"],
                           arms["lambdas"], arms["weight_change"], arms["select"])


def treatment_document(results: Sequence[TreatmentResult], checkpoint: str) -> dict[str, Any]:
    """The ``treat.json`` document for one or several seeds (means with ``std`` over seeds when several)."""
    document = {"checkpoint": checkpoint, **results[0].summary()}
    if len(results) > 1:
        for arm in ("original", "control", "treated"):
            runs = [getattr(r, f"{arm}_metrics" if arm != "original" else "original") for r in results]
            document[arm] = mean_std(runs) if all(r is not None for r in runs) else None
    return document


def annotation_list(model: nn.Module, data: DataBundle, per_class: int = 20, split: str = "train",
                    scores: SampleScores | None = None) -> dict[str, Any]:
    """The ``annotate.json`` document: per class, the ``per_class`` images whose true class the model trusts least.

    ``scores``: the split's scoring pass if the caller already ran it (the diagnosis does)."""
    dataset = data.split(split)
    if scores is None:
        with train_mode(model, False):
            scores = score_samples(NoiseReplay(model, conv_layer_names(model)[-1:]), dataset)
    return least_confident(scores, per_class, data.class_names, sample_ids(dataset, scores.position.tolist()))
