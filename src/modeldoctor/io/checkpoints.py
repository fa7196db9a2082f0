"""The checkpoints the commands write: a trained model, the treated / control fine-tunes of an input checkpoint,
and its decomposed copy.  Each records its parent and never overwrites it."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from torch import nn

from modeldoctor.analyses.decompose import DecomposedLinear, final_linear, swapped_module
from modeldoctor.analyses.decompose_protocol import Decomposition
from modeldoctor.io import names
from modeldoctor.models.checkpoint import CheckpointMeta, save_checkpoint


def write_model(directory: str | Path, model: nn.Module, meta: CheckpointMeta) -> Path:
    """``directory/model.pt``."""
    return save_checkpoint(Path(directory) / names.MODEL, model, meta)


def write_arm(directory: str | Path, arm: str, seed: int, model: nn.Module, parent: CheckpointMeta,
              parent_path: str | Path, train_config: dict[str, Any], metrics: dict[str, Any]) -> Path:
    """``treated.pt`` / ``control.pt`` (``-seedN`` for seed N > 0): the parent's metadata with the fine-tune's
    recipe, its metrics and ``parent`` = the input checkpoint's absolute path."""
    child = dataclasses.replace(parent, train_config=train_config, metrics=metrics,
                                parent=str(Path(parent_path).resolve()))
    return save_checkpoint(Path(directory) / names.arm_checkpoint(arm, seed), model, child, protect=(parent_path,))


def write_decomposed(directory: str | Path, model: nn.Module, parent: CheckpointMeta, parent_path: str | Path,
                     decomposition: Decomposition) -> Path:
    """``decomposed.pt``: the decomposed network (retrained when there was retraining) as an ordinary checkpoint of
    ``model``'s architecture, its final layer's weights zero outside each class's influential features."""
    summary = decomposition.summary
    accuracy = summary["accuracy_retrained"] or summary["accuracy_decomposed"]
    meta = dataclasses.replace(parent, parent=str(parent_path), metrics={"test": {"accuracy": accuracy}})
    name, _ = final_linear(model)
    net = decomposition.model
    layer = net.get_submodule(name)
    assert isinstance(layer, DecomposedLinear)
    with swapped_module(net, name, layer.to_linear()):
        return save_checkpoint(Path(directory) / names.DECOMPOSED, net, meta, protect=(parent_path,))
