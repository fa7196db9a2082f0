"""core/files.py: atomic writes (old file or nothing, never half), input protection, JSON in and out."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from modeldoctor.core.errors import UserError
from modeldoctor.core.files import atomic_path, read_json, write_bytes, write_json, write_text


def test_a_failed_block_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = write_text(tmp_path / "out" / "notes.txt", "old\n")  # parent folders are created
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_text("half")
        raise KeyboardInterrupt
    assert target.read_text() == "old\n" and [p.name for p in target.parent.iterdir()] == ["notes.txt"]
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "new.bin") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash")
    assert not (tmp_path / "new.bin").exists()


def test_finished_files_get_umask_permissions_not_mkstemps_0600(tmp_path: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    path = write_bytes(tmp_path / "a.bin", b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01" and stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def _write_protected(target: Path, source: Path) -> None:
    with atomic_path(target, protect=(source,)) as tmp:
        tmp.write_text("clobbered")


def test_writing_onto_a_protected_input_is_refused(tmp_path: Path) -> None:
    source = write_text(tmp_path / "in.json", "{}")
    link = tmp_path / "link.json"
    link.symlink_to(source)
    for target in (source, link):
        with pytest.raises(UserError, match="refusing to overwrite the input file"):
            _write_protected(target, source)
    assert source.read_text() == "{}"
    with atomic_path(tmp_path / "other.json", protect=(source, tmp_path / "missing.json")) as tmp:
        tmp.write_text("ok")  # a protected file that is elsewhere, or does not exist, is no obstacle
    assert (tmp_path / "other.json").read_text() == "ok"


def test_json_round_trip_of_tensors_arrays_and_paths(tmp_path: Path) -> None:
    doc = {"t": torch.tensor([1.5, 2.0]), "a": np.arange(3), "s": np.float32(0.5), "p": Path("x/y.png"), "n": None}
    path = write_json(tmp_path / "doc.json", doc)
    assert read_json(path) == {"t": [1.5, 2.0], "a": [0, 1, 2], "s": 0.5, "p": "x/y.png", "n": None}
    assert path.read_text().endswith("}\n") and list(json.loads(path.read_text())) == ["t", "a", "s", "p", "n"]
    with pytest.raises(TypeError, match="cannot serialise object"):
        write_json(tmp_path / "bad.json", {"x": object()})
    assert not (tmp_path / "bad.json").exists()


def test_read_json_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        read_json(tmp_path / "missing.json")
    (tmp_path / "cut.json").write_text('{"a": [1, 2')
    with pytest.raises(UserError, match="not valid JSON \\(JSONDecodeError\\); was it truncated"):
        read_json(tmp_path / "cut.json")
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(UserError, match="UnicodeDecodeError"):
        read_json(tmp_path / "bin.json")
