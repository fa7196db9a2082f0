"""Checkpoints: weights-only loading, refusal of pickles, damaged and foreign files, atomic writes."""

from __future__ import annotations

import os
import pickle
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from modeldoctor import cli
from modeldoctor.core.errors import UserError
from modeldoctor.core.files import atomic_path, write_json
from modeldoctor.models.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from modeldoctor.models.zoo import build_model


def _meta(model: str = "simple-cnn-narrow") -> CheckpointMeta:
    return CheckpointMeta(model=model, num_classes=10, in_channels=1, input_size=28,
                          class_names=[str(i) for i in range(10)], mean=[0.13], std=[0.31], dataset="mnist5k")


@pytest.fixture()
def good(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(tmp_path / "model.pt", build_model("simple-cnn-narrow", 10, 1), _meta())


class WritesFile:
    """Unpickling this runs os.system, which would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _error(path: Path, trust: bool = False) -> str:
    with pytest.raises(UserError) as info:
        load_checkpoint(path, trust=trust)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_round_trip_restores_weights_and_metadata(good: Path) -> None:
    torch.manual_seed(0)
    original = build_model("simple-cnn-narrow", 10, 1).eval()
    model, meta = load_checkpoint(good)
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(model(x), original(x))
    assert not model.training
    assert meta.model == "simple-cnn-narrow" and meta.class_names[3] == "3" and len(meta.weights_sha256) == 64


@pytest.mark.parametrize("container", ["torch-archive", "plain-pickle"])
def test_malicious_pickle_is_refused_without_running_code(tmp_path: Path, container: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    if container == "torch-archive":
        torch.save({"format": "modeldoctor-checkpoint/1", "payload": WritesFile(marker)}, path)
    else:
        path.write_bytes(pickle.dumps(WritesFile(marker)))
    assert "--trust-checkpoint" in _error(path)
    assert not marker.exists()


def test_trusted_pickled_dict_in_our_format_loads(good: Path, tmp_path: Path) -> None:
    blob = torch.load(good, weights_only=True)
    blob["extra"] = np.arange(3)  # any non-tensor Python object makes the file a real pickle
    path = tmp_path / "trusted.pt"
    torch.save(blob, path)
    assert "--trust-checkpoint" in _error(path)
    model, meta = load_checkpoint(path, trust=True)
    assert meta.model == "simple-cnn-narrow" and not model.training


def test_trusted_full_model_pickle_says_how_to_resave(tmp_path: Path) -> None:
    path = tmp_path / "full.pt"
    torch.save(build_model("simple-cnn-narrow", 10, 1), path)
    assert "--trust-checkpoint" in _error(path)
    assert "save_checkpoint" in _error(path, trust=True)


@pytest.mark.parametrize("damage", ["truncated", "flipped-byte", "empty", "text", "png", "foreign-dict"])
def test_damaged_or_foreign_file_gives_one_clear_line(good: Path, tmp_path: Path, damage: str) -> None:
    data = good.read_bytes()
    path = tmp_path / f"{damage}.pt"
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flipped-byte":
        offset = data.index(b"data/0") + 200  # inside the first tensor's bytes, past its zip header
        path.write_bytes(data[:offset] + bytes([data[offset] ^ 0xFF]) + data[offset + 1:])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "text":
        path.write_text('{"not": "a checkpoint"}\n')
    elif damage == "png":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    else:
        torch.save({"weights": torch.zeros(3)}, path)
    expected = {"truncated": "corrupted", "flipped-byte": "do not match the SHA-256", "empty": "not a PyTorch checkpoint",
                "text": "not a PyTorch checkpoint", "png": "not a PyTorch checkpoint",
                "foreign-dict": "not a modeldoctor checkpoint"}[damage]
    assert expected in _error(path)
    assert expected in _error(path, trust=True)


def test_checkpoint_of_another_architecture_is_refused(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "wrong.pt", build_model("simple-cnn-narrow", 10, 1), _meta("resnet20"))
    assert "does not fit" in _error(path)


def test_missing_checkpoint(tmp_path: Path) -> None:
    assert "does not exist" in _error(tmp_path / "nope.pt")


@pytest.mark.parametrize("content", ["truncated", "foreign"])
def test_cli_exit_code_2_and_one_line_for_bad_checkpoint(good: Path, tmp_path: Path, capsys, content: str) -> None:
    path = tmp_path / "bad.pt"
    path.write_bytes(good.read_bytes()[:100] if content == "truncated" else b"hello")
    assert cli.main(["evaluate", "--checkpoint", str(path), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("modeldoctor evaluate: error:") and str(path) in lines[0]


def test_interrupted_save_leaves_no_partial_file(tmp_path: Path, monkeypatch) -> None:
    def half_then_crash(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", half_then_crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "model.pt", build_model("simple-cnn-narrow", 10, 1), _meta())
    assert list(tmp_path.iterdir()) == []


def test_interrupted_write_keeps_the_previous_file(tmp_path: Path) -> None:
    target = write_json(tmp_path / "metrics.json", {"accuracy": 0.9})
    before = target.read_bytes()
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("{ half")
        raise RuntimeError("crash mid-write")
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_finished_file_gets_normal_permissions(good: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(good.stat().st_mode) == 0o666 & ~umask


@pytest.mark.parametrize("via_symlink", [False, True])
def test_input_file_is_never_overwritten(good: Path, tmp_path: Path, via_symlink: bool) -> None:
    before = good.read_bytes()
    target = good
    if via_symlink:
        target = tmp_path / "link.pt"
        target.symlink_to(good)
    with pytest.raises(UserError, match="refusing to overwrite the input file"):
        save_checkpoint(target, build_model("simple-cnn-narrow", 10, 1), _meta(), protect=(good,))
    assert good.read_bytes() == before
