"""``train``, ``evaluate_model`` and ``list_layers``: a baseline classifier, its metrics and its candidate layers."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from modeldoctor.analyses.adversarial import fgsm_accuracy
from modeldoctor.analyses.input_gradients import double_backprop_loss
from modeldoctor.core.device import place
from modeldoctor.core.layers import default_layer, layer_table
from modeldoctor.data.bundle import DataBundle
from modeldoctor.models.checkpoint import CheckpointMeta, weights_hash
from modeldoctor.models.focused_dropout import insert_focused_dropout
from modeldoctor.models.zoo import build_model
from modeldoctor.training import TrainConfig, chance_accuracy, cross_entropy_loss, evaluate, fit, recipe_for

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """A trained model, the metadata its checkpoint records, and how training went."""

    model: nn.Module
    meta: CheckpointMeta
    metrics: dict[str, Any]  # "val" / "test": :func:`modeldoctor.training.evaluate` of the kept weights
    best_epoch: int
    history: list[dict[str, float]]
    seconds: float
    warnings: list[str]  # e.g. the chance-level warning

    def to_dict(self) -> dict[str, Any]:
        """What ``modeldoctor train --json`` prints (less ``"checkpoint"``)."""
        return {"metrics": self.metrics, "best_epoch": self.best_epoch, "history": self.history,
                "seconds": self.seconds, "weights_sha256": self.meta.weights_sha256, "warnings": self.warnings}


def train(spec: str, data: DataBundle, config: TrainConfig | None = None,
          focused_dropout: Mapping[str, Any] | None = None, input_grad_reg: float = 0.0) -> TrainResult:
    """Build model ``spec`` for ``data`` (seeded by ``config.seed``) on the current device and train it; the epoch
    is chosen on val.

    ``focused_dropout``: keyword arguments of :func:`~modeldoctor.models.focused_dropout.insert_focused_dropout`;
    ``input_grad_reg`` = λ of double backpropagation (loss + λ · mean squared input gradient).  Both are recorded
    in the checkpoint's ``train_config`` so loading rebuilds the same model.
    """
    cfg = config or TrainConfig(**recipe_for(spec))
    torch.manual_seed(cfg.seed)
    model = place(build_model(spec, data.num_classes, data.in_channels, data.input_size))
    regularisers: dict[str, Any] = {}
    if focused_dropout:
        insert_focused_dropout(model, **focused_dropout)
        regularisers["focused_dropout"] = dict(focused_dropout)
    if input_grad_reg:
        regularisers["input_grad_reg"] = input_grad_reg
    loss_fn = double_backprop_loss(input_grad_reg) if input_grad_reg else cross_entropy_loss
    started = time.perf_counter()
    summary = fit(model, data.train, data.val, data.num_classes, cfg, loss_fn=loss_fn)
    metrics = {s: evaluate(model, data.split(s), data.num_classes) for s in ("val", "test")}
    meta = CheckpointMeta(model=spec, num_classes=data.num_classes, in_channels=data.in_channels,
                          input_size=data.input_size, class_names=data.class_names, mean=data.mean, std=data.std,
                          dataset=data.spec, train_config=cfg.to_dict() | regularisers,
                          metrics={k: {"accuracy": v["accuracy"], "per_class": v["per_class"]} for k, v in metrics.items()},
                          weights_sha256=weights_hash(model))
    logger.info("trained %s on %s: val %.4f test %.4f (best epoch %d)", spec, data.spec, metrics["val"]["accuracy"],
                metrics["test"]["accuracy"], summary["best_epoch"])
    notes = [note] if (note := chance_warning(spec, data, cfg, metrics["val"]["accuracy"])) else []
    for line in notes:
        warnings.warn(line, stacklevel=2)
    return TrainResult(model, meta, metrics, summary["best_epoch"], summary["history"], time.perf_counter() - started,
                       notes)


def chance_warning(spec: str, data: DataBundle, cfg: TrainConfig, val_accuracy: float) -> str | None:
    """A line naming likely fixes when validation accuracy ends not 2 points above chance (the majority class's
    share of the validation split), else ``None``: a chance-level model is not worth diagnosing or treating."""
    chance = chance_accuracy(data.val, data.num_classes)
    if val_accuracy > chance + 0.02:
        return None
    return (f"{spec} ends at validation accuracy {val_accuracy:.1%}, not 2 points above chance ({chance:.1%}); "
            f"likely fixes: a larger --input-size (now {data.input_size} px; ImageNet architectures downsample 32×), "
            f"another --lr (now {cfg.lr:g}) or --optimizer (now {cfg.optimizer}; try adam), more --epochs "
            f"(now {cfg.epochs})")


def evaluate_model(model: nn.Module, data: DataBundle, splits: Sequence[str] = ("val", "test"),
                   fgsm: Sequence[float] = ()) -> dict[str, Any]:
    """:func:`~modeldoctor.training.evaluate` on each split; with ``fgsm`` ε values (raw [0, 1] pixels) also the test
    accuracy under FGSM at each ε, under ``["test"]["fgsm"]``."""
    metrics = {s: evaluate(model, data.split(s), data.num_classes) for s in splits}
    if fgsm:
        metrics.setdefault("test", {})["fgsm"] = fgsm_accuracy(model, data.test, list(fgsm))
    return metrics


def list_layers(model: nn.Module, input_shape: tuple[int, int, int]) -> dict[str, Any]:
    """Every candidate layer that runs (:func:`~modeldoctor.core.layers.layer_table`: Conv2d layers, and token or
    channels-last norms and blocks), with its depth index, layout (nchw, nhwc, tokens P+HxW), feature-map shape for
    one input of ``input_shape``, whether that map is spatial (> 1×1) and on the main path (both needed for a
    default), and the default layer."""
    table = layer_table(model, input_shape)
    default = default_layer(model, input_shape)
    return {"input_shape": list(input_shape), "default": default,
            "layers": [{"name": t.name, "kind": t.kind, "depth": t.depth, "layout": t.layout,
                        "out_shape": list(t.out_shape),
                        "spatial": t.spatial, "main_path": t.main_path, "default": t.name == default} for t in table]}
