"""Foundation: the train/evaluate CLI contract, datasets and their splits, one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modeldoctor import cli
from modeldoctor.core.errors import UserError
from modeldoctor.data.sources import load_data
from modeldoctor.io.loading import data_for_model
from modeldoctor.models.zoo import build_model


def _run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_error_line(argv: list[str], capsys) -> str:
    code, out, err = _run_cli(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 1, (code, out, err)
    assert lines[0].startswith(f"modeldoctor {argv[0]}: error:")
    return lines[0]


def test_train_then_evaluate_end_to_end(tmp_path: Path, capsys) -> None:
    """The subprocess CLI prints exactly one JSON object; evaluate reproduces train's metrics from the file."""
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "modeldoctor", "train", "--model", "simple-cnn-narrow",
                           "--data", "mnist5k", "--epochs", "1", "--batch-size", "32", "--lr", "0.2", "--out", str(out),
                           "--seed", "1", "--json"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 1
    trained = json.loads(proc.stdout)
    assert trained["checkpoint"] == str(out / "model.pt") and Path(trained["checkpoint"]).is_file()
    for split in ("val", "test"):
        metrics = trained["metrics"][split]
        assert isinstance(metrics["accuracy"], float) and len(metrics["per_class"]) == 10
        assert metrics["accuracy"] > 0.5  # chance is 0.1
    code, stdout, _ = _run_cli(["evaluate", "--checkpoint", trained["checkpoint"], "--data", "mnist5k", "--json"],
                               capsys)
    assert code == 0 and len(stdout.splitlines()) == 1
    evaluated = json.loads(stdout)
    assert evaluated["checkpoint"] == trained["checkpoint"]
    for split in ("val", "test"):
        assert evaluated["metrics"][split]["accuracy"] == pytest.approx(trained["metrics"][split]["accuracy"])
        assert evaluated["metrics"][split]["per_class"] == pytest.approx(trained["metrics"][split]["per_class"])


def test_mnist5k_split_is_stratified_fixed_and_disjoint(mnist5k) -> None:
    assert (len(mnist5k.train), len(mnist5k.val), len(mnist5k.test)) == (3500, 500, 1000)
    ids = [set(s.ids) for s in (mnist5k.train, mnist5k.val, mnist5k.test)]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    total = np.bincount(np.concatenate([s.labels.numpy() for s in (mnist5k.train, mnist5k.val, mnist5k.test)]))
    for split, fraction in ((mnist5k.val, 0.1), (mnist5k.test, 0.2)):
        assert np.abs(np.bincount(split.labels.numpy(), minlength=10) - fraction * total).max() <= 1
    again = load_data("mnist5k")
    assert again.val.ids == mnist5k.val.ids and again.test.ids == mnist5k.test.ids
    image, label, index = mnist5k.val[7]
    assert image.shape == (1, 28, 28) and label == int(mnist5k.val.labels[7]) and index == 7


def _png_tree(root: Path, classes: dict[str, int], size: int = 12, mode: str = "L") -> None:
    rng = np.random.default_rng(0)
    for c, (name, count) in enumerate(classes.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            shape = (size, size) if mode == "L" else (size, size, 3)
            pixels = (rng.random(shape) * 60 + 150 * c).astype(np.uint8)
            Image.fromarray(pixels, mode).save(root / name / f"{i:02d}.png")


def test_imagefolder_seeded_split(tmp_path: Path) -> None:
    _png_tree(tmp_path, {"cat": 10, "dog": 10})
    bundle = load_data(f"imagefolder:{tmp_path}")
    assert bundle.class_names == ["cat", "dog"] and bundle.in_channels == 1 and bundle.input_size == 12
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (14, 2, 4)
    assert load_data(f"imagefolder:{tmp_path}").test.ids == bundle.test.ids
    image, label, _ = bundle.test[0]
    assert image.shape == (1, 12, 12) and bundle.class_names[label] == bundle.test.ids[0].split("/")[0]
    assert bundle.test.raw(0).min() >= 0 and bundle.test.raw(0).max() <= 1


def test_imagefolder_with_split_folders_and_rgb(tmp_path: Path) -> None:
    for split, count in (("train", 4), ("val", 2), ("test", 3)):
        _png_tree(tmp_path / split, {"a": count, "b": count}, size=10, mode="RGB")
    bundle = load_data(f"imagefolder:{tmp_path}", input_size=16)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (8, 4, 6)
    assert bundle.in_channels == 3 and bundle.train[0][0].shape == (3, 16, 16)
    assert all(i.startswith("val/") for i in bundle.val.ids)


def test_imagefolder_too_small_for_a_validation_split(tmp_path: Path) -> None:
    _png_tree(tmp_path, {"a": 3, "b": 3})
    with pytest.raises(UserError, match="has no images"):
        load_data(f"imagefolder:{tmp_path}")


def _write_idx(path: Path, array: np.ndarray) -> None:
    magic = 0x0800 + array.ndim  # unsigned byte data, ndim dimensions
    header = np.array([magic, *array.shape], dtype=">i4").tobytes()
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_torchvision_mnist_from_its_raw_files(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = {"train": rng.integers(0, 256, (100, 28, 28)), "t10k": rng.integers(0, 256, (12, 28, 28))}
    for prefix, pixels in images.items():
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", pixels)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(len(pixels)) % 10)
    bundle = load_data(f"mnist:{tmp_path}")
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (90, 10, 12)
    assert bundle.num_classes == 10 and bundle.in_channels == 1 and bundle.input_size == 28
    assert bundle.test.labels.tolist() == [i % 10 for i in range(12)]
    assert torch.allclose(bundle.test.raw(3)[0] * 255, torch.from_numpy(images["t10k"][3]).float(), atol=1e-3)


@pytest.mark.parametrize("spec, message", [
    ("cifar10:/no/such/root", "does not exist"),
    ("svhn:", "does not exist"),
    ("nosuchdata", "choose one of"),
    ("imagefolder:/no/such/dir", "does not exist"),
])
def test_bad_dataset_specs(spec: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        load_data(spec)


def test_empty_dataset_root_says_files_are_missing(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="files not found"):
        load_data(f"fashion-mnist:{tmp_path}")


def test_cli_bad_inputs_exit_2_with_one_line(tmp_path: Path, capsys) -> None:
    line = _one_error_line(["train", "--model", "resnet9000", "--data", "mnist5k", "--out", str(tmp_path)], capsys)
    assert "resnet9000" in line and "simple-cnn" in line and "resnet18" in line and "timm:NAME" in line
    line = _one_error_line(["train", "--model", "simple-cnn", "--data", "imagenet", "--out", str(tmp_path)], capsys)
    assert "imagenet" in line and "mnist5k" in line
    line = _one_error_line(["train", "--model", "simple-cnn", "--data", f"cifar10:{tmp_path}/x", "--out",
                            str(tmp_path)], capsys)
    assert "cifar10" in line and "does not exist" in line
    line = _one_error_line(["train", "--model", "inception_v3", "--input-size", "64", "--out", str(tmp_path)], capsys)
    assert "at least 75 px" in line
    assert list(tmp_path.iterdir()) == []


def test_too_small_input_names_the_minimum() -> None:
    with pytest.raises(UserError, match="alexnet needs inputs of at least 63 px, got 62 px"):
        build_model("alexnet", 10, 3, input_size=62)


def test_train_enlarges_small_images_to_the_model_minimum_and_never_shrinks(tmp_path: Path) -> None:
    assert data_for_model("mnist5k", "inception_v3").input_size == 75
    assert data_for_model("mnist5k", "resnet18").input_size == 28
    _png_tree(tmp_path, {"a": 10, "b": 10}, size=80)
    assert data_for_model(f"imagefolder:{tmp_path}", "alexnet").input_size == 80


def test_user_factory_and_channel_adaptation() -> None:
    model = build_model("modeldoctor.models.zoo:SimpleCNN", 7, 2)
    assert model(torch.randn(2, 2, 16, 16)).shape == (2, 7)
    assert build_model("resnet18", 5, 1).conv1.in_channels == 1
    with pytest.raises(UserError, match="cannot import"):
        build_model("no_such_pkg.mod:factory", 10, 3)
    with pytest.raises(UserError, match="timm does not know"):
        build_model("timm:no_such_net", 10, 3)
