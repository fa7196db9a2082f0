"""``from_model``: a classifier trained elsewhere, checked against the data, evaluated once, ready for every
command (and, with a spec, for a checkpoint that rebuilds it)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from modeldoctor.core.errors import UserError
from modeldoctor.core.layers import train_mode
from modeldoctor.core.outputs import select_logits
from modeldoctor.data.bundle import DataBundle
from modeldoctor.models.checkpoint import CheckpointMeta, weights_hash
from modeldoctor.models.probe import probe_min_input, require_cnn
from modeldoctor.training import TrainConfig, chance_accuracy, evaluate, recipe_for

logger = logging.getLogger(__name__)


@dataclass
class Imported:
    """A foreign model with the metadata its checkpoint records and its accuracy on the data."""

    model: nn.Module
    meta: CheckpointMeta
    metrics: dict[str, Any]  # "val" / "test": :func:`modeldoctor.training.evaluate`
    warnings: list[str]

    def to_dict(self) -> dict[str, Any]:
        """What ``modeldoctor import --json`` prints (less the file paths)."""
        return {"model": self.meta.model, "dataset": self.meta.dataset, "input_size": self.meta.input_size,
                "classes": self.meta.class_names, "mean": self.meta.mean, "std": self.meta.std,
                "accuracy": {s: m["accuracy"] for s, m in self.metrics.items()},
                "weights_sha256": self.meta.weights_sha256, "warnings": self.warnings}


def check_fits(model: nn.Module, data: DataBundle, name: str) -> None:
    """One forward pass on a validation image: the model takes the data's size and channels and has one output
    per class; each failure is one line naming the fix."""
    require_cnn(model, name)
    x = data.val[0][0].unsqueeze(0)
    try:
        with train_mode(model, False), torch.no_grad():
            logits = select_logits(model(x))
    except (RuntimeError, ValueError, AssertionError, IndexError) as exc:
        need = probe_min_input(model, data.in_channels)
        if data.input_size < need:
            raise UserError(f"{name} needs inputs of at least {need} px, the data has {data.input_size} px; "
                            f"pass --input-size {need} or larger") from None
        raise UserError(f"{name} cannot run on {data.spec} images of shape {tuple(x.shape[1:])} "
                        f"({str(exc).splitlines()[0][:100]}); check the data's channels and --input-size") from None
    if logits.shape[-1] != data.num_classes:
        raise UserError(f"{name} has {logits.shape[-1]} outputs but {data.spec} has {data.num_classes} classes; "
                        "use the data the model was trained on or --classes with one name per output")
    require_cnn(model, name, (int(x.shape[1]), int(x.shape[2]), int(x.shape[3])))


def from_model(model: nn.Module, data: DataBundle, spec: str | None = None, class_names: Sequence[str] | None = None,
               mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
               train_config: TrainConfig | None = None, source: str | None = None) -> Imported:
    """Take a live ``model`` trained elsewhere: ``mean`` / ``std`` = the normalisation it was trained with (default:
    the data's own statistics), ``class_names`` = one name per output in output order (default: the data's).

    ``spec`` (e.g. ``"resnet18"``, ``"timm:convnext_tiny"``, ``"pkg.mod:factory"``) lets a checkpoint rebuild the
    architecture; ``train_config`` = the optimiser settings it was trained with, which the treatment reuses
    (default: the family's reference recipe, recorded as assumed).  The model is evaluated once on val and test,
    in eval mode, and left in the mode it had."""
    name = spec or type(model).__name__
    if mean is not None or std is not None:
        data.set_normalisation(mean or data.mean, std or data.std)
    if class_names is not None:
        if len(class_names) != data.num_classes:
            raise UserError(f"--classes names {len(class_names)} classes but {data.spec} has {data.num_classes}; "
                            "give one name per class, in the model's output order")
        data.class_names = list(class_names)
    check_fits(model, data, name)
    metrics = {s: evaluate(model, data.split(s), data.num_classes) for s in ("val", "test")}
    recipe = (train_config or TrainConfig(**recipe_for(spec or ""))).to_dict()
    meta = CheckpointMeta(model=spec or f"live:{type(model).__name__}", num_classes=data.num_classes,
                          in_channels=data.in_channels, input_size=data.input_size, class_names=data.class_names,
                          mean=list(data.mean), std=list(data.std), dataset=data.spec,
                          train_config=recipe | {"imported": source or "live model",
                                                 "assumed_recipe": train_config is None},
                          metrics={s: {"accuracy": m["accuracy"], "per_class": m["per_class"]}
                                   for s, m in metrics.items()},
                          weights_sha256=weights_hash(model))
    chance = chance_accuracy(data.val, data.num_classes)
    notes = []
    if metrics["val"]["accuracy"] <= chance + 0.02:
        notes.append(f"{name} scores {metrics['val']['accuracy']:.1%} on validation, not 2 points above chance "
                     f"({chance:.1%}); check --mean/--std (the normalisation it was trained with), the order of "
                     "--classes, and --input-size")
    for line in notes:
        warnings.warn(line, stacklevel=2)
    logger.info("imported %s: val %.4f test %.4f", name, metrics["val"]["accuracy"], metrics["test"]["accuracy"])
    return Imported(model, meta, metrics, notes)
