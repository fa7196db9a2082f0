"""`modeldoctor annotate` finds the list and the checkpoint in the folders the demo writes, without extra flags."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from modeldoctor.cli.commands.annotate import find_checkpoint, listing_folder
from modeldoctor.models.checkpoint import CheckpointMeta, save_checkpoint
from modeldoctor.models.zoo import build_model


def _checkpoint(path: Path, seed: int) -> str:
    torch.manual_seed(seed)
    meta = CheckpointMeta("simple-cnn", 10, 1, 28, [str(d) for d in range(10)], [0.1], [0.3], "mnist5k")
    save_checkpoint(path, build_model("simple-cnn", 10, 1, 28), meta)
    return meta.weights_sha256


def test_demo_layout_is_found(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    (out / "baseline").mkdir(parents=True)
    (out / "other").mkdir()
    (out / "diagnosis").mkdir()
    _checkpoint(out / "other" / "model.pt", seed=1)  # another model: sorted first among */model.pt, wrong weights
    wanted = _checkpoint(out / "baseline" / "model.pt", seed=0)
    (out / "diagnosis" / "diagnosis.json").write_text(json.dumps({"weights_sha256": wanted}))
    (out / "diagnosis" / "annotate.json").write_text(json.dumps({"per_class": {}}))
    assert listing_folder(out) == out / "diagnosis" and listing_folder(out / "diagnosis") == out / "diagnosis"
    assert find_checkpoint(out / "diagnosis") == out / "baseline" / "model.pt"
    (out / "diagnosis" / "diagnosis.json").write_text(json.dumps({"weights_sha256": "0" * 64}))
    assert find_checkpoint(out / "diagnosis") is None  # never a model the diagnosis was not made for


def test_cli_layout_model_beside_the_diagnosis(tmp_path: Path) -> None:
    (tmp_path / "diagnosis").mkdir()
    _checkpoint(tmp_path / "model.pt", seed=0)
    assert find_checkpoint(tmp_path / "diagnosis") == tmp_path / "model.pt"  # no diagnosis.json: the first found
