"""``--device``: every command runs on an explicitly chosen CPU and refuses an unavailable device in one line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modeldoctor.cli.app import command_names, main
from modeldoctor.core.device import current_device, model_device, resolve_device, using
from modeldoctor.core.errors import UserError
from scaling import image_folder, naive_accuracy


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny image folder with object masks and boxes, and a model trained on it with ``--device cpu``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("device")
    data = image_folder(root / "data")
    for png in data.rglob("*.png"):
        mask = np.zeros((16, 16), dtype=np.uint8)
        mask[2:12, 2:12] = 255
        (root / "masks" / png.parent.name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(root / "masks" / png.parent.name / png.name)
    with open(root / "boxes.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "x0", "y0", "x1", "y1"])
        writer.writerows([[str(p.relative_to(data)), 2, 2, 12, 12] for p in sorted(data.rglob("*.png"))])
    assert main(["train", "--model", "simple-cnn", "--data", f"imagefolder:{data}", "--epochs", "1", "--batch-size",
                 "16", "--out", str(root / "base"), "--device", "cpu", "--json"]) == 0
    yield root
    torch.set_num_threads(before)


def _run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict:
    capsys.readouterr()
    assert main([*argv, "--device", "cpu", "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_every_computing_command_runs_with_device_cpu(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = ["--checkpoint", str(workspace / "base" / "model.pt")]
    diag = workspace / "diag"
    assert _run(capsys, ["evaluate", *ckpt])["metrics"]["val"]["num_samples"] > 0
    assert _run(capsys, ["layers", *ckpt])["default"] == "features.11"
    _run(capsys, ["diagnose", *ckpt, "--noise-draws", "2", "--samples-per-class", "4", "--lowest", "2",
                  "--out", str(diag), "--amp", "bf16"])
    _run(capsys, ["diagnose", *ckpt, "--noise-draws", "2", "--samples-per-class", "4", "--lowest", "2",
                  "--out", str(diag)])
    _run(capsys, ["explain", *ckpt, "--diagnosis", str(diag), "--sample", "c0/000.png", "--out", str(workspace / "ex")])
    treated = _run(capsys, ["treat", *ckpt, "--boxes", str(workspace / "boxes.csv"), "--epochs", "1",
                            "--batch-size", "16", "--out", str(workspace / "treat")])
    for arm in ("treated", "control"):
        expected = naive_accuracy(workspace / "treat" / f"{arm}.pt", "val")
        assert treated[arm]["val"]["accuracy"] == pytest.approx(expected, abs=1e-6)  # float32 mean
    _run(capsys, ["ablate", *ckpt, "--max-samples", "12", "--out", str(workspace / "ablate")])
    _run(capsys, ["decompose", *ckpt, "--retrain-epochs", "0", "--noise-repeats", "1", "--out", str(workspace / "dec")])
    _run(capsys, ["stability", *ckpt, "--no-detectors", "--eps", "0.9", "--max-samples", "18", "--draws", "2",
                  "--out", str(workspace / "stab")])
    _run(capsys, ["dissect", *ckpt, "--masks", str(workspace / "masks"), "--out", str(workspace / "dissect")])
    _run(capsys, ["report", str(workspace)])


MINIMAL_ARGS = {"train": ["--model", "simple-cnn", "--out", "x"], "layers": ["--model", "simple-cnn"],
                "explain": ["--checkpoint", "x", "--diagnosis", "x", "--sample", "x"], "treat": ["--checkpoint", "x",
                "--out", "x"], "report": ["x"], "demo": [], "annotate": [],
                "import": ["--model", "x", "--weights", "x", "--data", "x", "--out", "x"]}


@pytest.mark.parametrize("command", command_names())
def test_an_unavailable_device_is_refused_in_one_line(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    argv = [command, *MINIMAL_ARGS.get(command, ["--checkpoint", "x"]), "--device", "cuda:99"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cuda:99 is not available" in err[0] and "cpu" in err[0]


def test_devices_resolve_and_the_model_device_is_used() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("gpu", "cuda:x", "tpu"):
        with pytest.raises(UserError, match="unknown device"):
            resolve_device(bad)
    with using("cpu") as chosen:
        assert current_device() == chosen == torch.device("cpu")
    assert model_device(torch.nn.Linear(2, 2)) == torch.device("cpu")
