"""The JSON documents other steps read back: one writer and one reader each.

``annotate.json``: ``{"per_class": {class_name: [{"id", "confidence", "label", "predicted"}, ...]}}`` — per true
class, the training images with the lowest probability of their true label, lowest first.

``treat.json``: ``{"checkpoint", "config", "train_config", "annotated", "held_out", "select", "lambdas",
"weight_change", "original" | "control" | "treated": M}`` with ``M = {"val" | "test" | "swap": {"accuracy",
"per_class"}}`` (plus ``"std"`` and ``"seeds"`` over several seeds); ``control`` is null without a control.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modeldoctor.core.errors import UserError
from modeldoctor.core.files import read_json, write_json
from modeldoctor.io import names


def write_annotation_list(directory: str | Path, document: dict[str, Any]) -> Path:
    return write_json(Path(directory) / names.ANNOTATE, document)


def read_annotation_list(path: str | Path) -> dict[str, Any]:
    """``path``: the file or the directory holding it."""
    document = read_json(_file(path, names.ANNOTATE))
    if "per_class" not in document:
        raise UserError(f"{path} is not an annotate.json (no 'per_class'); run `modeldoctor diagnose --lowest K`")
    return document


def write_treatment(directory: str | Path, document: dict[str, Any]) -> Path:
    return write_json(Path(directory) / names.TREAT, document)


def read_treatment(path: str | Path) -> dict[str, Any]:
    """``path``: the file or the directory holding it."""
    document = read_json(_file(path, names.TREAT))
    if not {"original", "treated"} <= set(document):
        raise UserError(f"{path} is not a treat.json (no 'original'/'treated'); run `modeldoctor treat`")
    return document


def _file(path: str | Path, name: str) -> Path:
    p = Path(path)
    return p / name if p.is_dir() else p
