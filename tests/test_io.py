"""io/: one writer and one reader per output document, and the file names everything shares."""

from __future__ import annotations

from pathlib import Path

import pytest

from modeldoctor.core.errors import UserError
from modeldoctor.io import names
from modeldoctor.io.documents import read_annotation_list, read_treatment, write_annotation_list, write_treatment


def test_annotation_list_round_trip_and_refusal(tmp_path: Path) -> None:
    doc = {"per_class": {"a": [{"id": "x", "confidence": 0.1, "label": 0, "predicted": 1}]}}
    path = write_annotation_list(tmp_path, doc)
    assert path.name == names.ANNOTATE
    assert read_annotation_list(tmp_path) == doc == read_annotation_list(path)
    (tmp_path / "other.json").write_text('{"x": 1}')
    with pytest.raises(UserError, match="not an annotate.json"):
        read_annotation_list(tmp_path / "other.json")


def test_treatment_round_trip_and_refusal(tmp_path: Path) -> None:
    metrics = {"val": {"accuracy": 0.5, "per_class": [0.5]}, "test": {"accuracy": 0.4, "per_class": [0.4]}}
    doc = {"checkpoint": "m.pt", "original": metrics, "control": None, "treated": metrics}
    assert write_treatment(tmp_path, doc).name == names.TREAT
    assert read_treatment(tmp_path) == doc
    with pytest.raises(UserError, match="does not exist"):
        read_treatment(tmp_path / "missing.json")


def test_arm_checkpoint_names() -> None:
    assert names.arm_checkpoint("treated") == "treated.pt"
    assert names.arm_checkpoint("control", 2) == "control-seed2.pt"
