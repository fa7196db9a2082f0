"""`modeldoctor diagnose --masks/--boxes`: the shortcut check in --json, diagnosis.json and annotate.json's order;
bad mask arguments are one line and exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from modeldoctor.cli.app import main
from modeldoctor.data.bundle import bundle_from_tensors
from modeldoctor.data.sources import register_dataset
from modeldoctor.io.diagnosis_files import load_diagnosis, read_shortcut
from modeldoctor.models.checkpoint import CheckpointMeta, save_checkpoint
from modeldoctor.models.zoo import build_model

SIZE = 20


def _toy(masks: bool):
    def load(arg: str, input_size: int | None):
        g = torch.Generator().manual_seed(0)
        n = 90
        labels = np.arange(n) % 3
        images = 0.3 * torch.rand(n, 1, SIZE, SIZE, generator=g)
        found = torch.zeros(n, SIZE, SIZE, dtype=torch.bool)
        for i, c in enumerate(labels):
            found[i, 2 + 5 * int(c):8 + 5 * int(c), 7:13] = True
        images[:, 0][found] = 1.0
        parts = [np.arange(0, 60), np.arange(60, 75), np.arange(75, 90)]
        ids = [f"sc-{i:03d}" for i in range(n)]
        return bundle_from_tensors("sc-toy" if masks else "sc-toy-bare", images, labels, ids, ["a", "b", "c"], parts,
                                   input_size, masks={sid: found[i] for i, sid in enumerate(ids)} if masks else None)
    return load


register_dataset("sc-toy", _toy(True))
register_dataset("sc-toy-bare", _toy(False))


@pytest.fixture
def checkpoint(tmp_path: Path, one_thread) -> Path:
    torch.manual_seed(0)
    model = build_model("simple-cnn-narrow", 3, 1, SIZE)
    path = tmp_path / "base" / "model.pt"
    save_checkpoint(path, model, CheckpointMeta("simple-cnn-narrow", 3, 1, SIZE, ["a", "b", "c"], [0.3], [0.3], "sc-toy"))
    return path


def _diagnose(capsys, checkpoint: Path, out: Path, *extra: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["diagnose", "--checkpoint", str(checkpoint), "--samples-per-class", "2", "--noise-draws", "1",
                 "--out", str(out), "--json", *extra])
    captured = capsys.readouterr()
    return code, captured.out if code == 0 else captured.err


def test_masks_builtin_adds_the_check_everywhere(checkpoint: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "diag"
    code, text = _diagnose(capsys, checkpoint, out, "--masks", "builtin", "--lowest", "2", "--shortcut-per-class", "4")
    assert code == 0
    result = json.loads(text.strip().splitlines()[-1])
    check = result["shortcut"]
    assert check["verdict"]["label"] in ("reads the background", "not detectably")
    assert check["verdict"]["objects"] == 12 and check["verdict"]["composites"] == 36
    assert set(check["per_class"]) == {"a", "b", "c"} and check["tightness"]["box_like"] == 1.0  # toy masks are squares
    assert read_shortcut(out) == json.loads((out / "diagnosis.json").read_text())["shortcut"]
    assert read_shortcut(out)["verdict"] == check["verdict"]
    load_diagnosis(out)  # the extra key does not disturb the reader
    annotate = json.loads((out / "annotate.json").read_text())
    assert list(annotate["per_class"]) == annotate["priority"]["order"]
    pulls = [annotate["priority"]["pull"][c] for c in annotate["priority"]["order"]]
    assert pulls == sorted(pulls, reverse=True)


def test_boxes_file_feeds_the_check(checkpoint: Path, tmp_path: Path, capsys) -> None:
    boxes = tmp_path / "boxes.csv"
    rows = ["id,x0,y0,x1,y1"] + [f"sc-{i:03d},6,{2 + 5 * (i % 3)},14,{8 + 5 * (i % 3)}" for i in range(60)]
    boxes.write_text("\n".join(rows) + "\n")
    code, text = _diagnose(capsys, checkpoint, tmp_path / "diag", "--boxes", str(boxes), "--shortcut-per-class", "3")
    assert code == 0
    check = json.loads(text.strip().splitlines()[-1])["shortcut"]
    assert check["verdict"]["objects"] == 9 and check["tightness"]["box_like"] == 1.0
    assert "box-shaped" in check["tightness"]["note"]


@pytest.mark.parametrize("extra, message", [
    (["--masks", "builtin", "--data", "sc-toy-bare"], "no built-in masks"),
    (["--boxes", "missing.csv"], "does not exist"),
    (["--masks", "builtin", "--shortcut-per-class", "0"], "--shortcut-per-class must be"),
])
def test_bad_mask_arguments_are_one_line(checkpoint: Path, tmp_path: Path, capsys, extra, message) -> None:
    code, err = _diagnose(capsys, checkpoint, tmp_path / "diag", *extra)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
