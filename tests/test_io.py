"""io/: one writer and one reader per output document, the file names everything shares, and the inputs read
from disk (object masks, images, samples)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modeldoctor.core.errors import UserError
from modeldoctor.data.bundle import bundle_from_tensors
from modeldoctor.io import names
from modeldoctor.io.checkpoints import write_arm, write_model
from modeldoctor.io.documents import (
    ABLATION,
    ANNOTATION_LIST,
    DECOMPOSITION,
    DISSECTION,
    INFLUENTIAL,
    STABILITY,
    TREATMENT,
)
from modeldoctor.io.loading import read_image, read_mask_image, read_object_masks, read_sample
from modeldoctor.models.checkpoint import CheckpointMeta, load_checkpoint, weights_hash
from modeldoctor.models.zoo import build_model

METRICS = {"val": {"accuracy": 0.5, "per_class": [0.5]}, "test": {"accuracy": 0.4, "per_class": [0.4]}}


def test_annotation_list_round_trip_and_refusal(tmp_path: Path) -> None:
    doc = {"per_class": {"a": [{"id": "x", "confidence": 0.1, "label": 0, "predicted": 1}]}}
    path = ANNOTATION_LIST.write(tmp_path, doc)
    assert path.name == names.ANNOTATE
    assert ANNOTATION_LIST.read(tmp_path) == doc == ANNOTATION_LIST.read(path)
    (tmp_path / "other.json").write_text('{"x": 1}')
    with pytest.raises(UserError, match="not a valid annotate.json .*'per_class'.*modeldoctor diagnose --lowest K"):
        ANNOTATION_LIST.read(tmp_path / "other.json")


def test_treatment_round_trip_and_refusal(tmp_path: Path) -> None:
    doc = {"checkpoint": "m.pt", "original": METRICS, "control": None, "treated": METRICS}
    assert TREATMENT.write(tmp_path, doc).name == names.TREAT
    assert TREATMENT.read(tmp_path) == doc
    with pytest.raises(UserError, match="does not exist"):
        TREATMENT.read(tmp_path / "missing.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="not a valid treat.json"):
        TREATMENT.read(tmp_path / "list.json")


@pytest.mark.parametrize("document", [ANNOTATION_LIST, TREATMENT, ABLATION, DECOMPOSITION, INFLUENTIAL, STABILITY,
                                      DISSECTION])
def test_every_document_reads_back_what_it_writes_and_refuses_to_write_what_it_cannot_read(
        tmp_path: Path, document) -> None:
    complete = {key: i for i, key in enumerate(document.keys)} | {"extra": [1.5, None]}
    assert document.write(tmp_path, complete) == tmp_path / document.name
    assert document.read(tmp_path) == complete
    with pytest.raises(ValueError, match=document.keys[-1]):
        document.write(tmp_path / "other", {k: v for k, v in complete.items() if k != document.keys[-1]})
    assert not (tmp_path / "other").exists()


def test_file_names() -> None:
    assert names.arm_checkpoint("treated") == "treated.pt"
    assert names.arm_checkpoint("control", 2) == "control-seed2.pt"
    assert names.explain_overlay("mnist5k-0007") == "explain-mnist5k-0007.png"
    assert names.explain_overlay("a b/c") == "explain-a_b_c.png"
    assert Path(names.explain_overlay("x")).match(names.EXPLAIN_PATTERN)
    assert Path(names.arm_checkpoint("treated", 3)).match(names.CHECKPOINT_PATTERN)
    assert names.figure("stability") == "stability.png"


def test_arm_checkpoint_records_its_parent_and_recipe(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("simple-cnn-narrow", 3, 1)
    meta = CheckpointMeta("simple-cnn-narrow", 3, 1, 28, ["a", "b", "c"], [0.0], [1.0], "toy", {"lr": 0.1})
    parent = write_model(tmp_path, model, meta)
    assert parent == tmp_path / names.MODEL
    path = write_arm(tmp_path / "t", "treated", 2, model, meta, parent, {"lr": 0.01, "treatment": {"x": 1}}, METRICS)
    assert path.name == "treated-seed2.pt"
    _, child = load_checkpoint(path)
    assert child.parent == str(parent.resolve()) and child.train_config["treatment"] == {"x": 1}
    assert child.metrics == METRICS and child.weights_sha256 == weights_hash(model)
    assert meta.train_config == {"lr": 0.1} and meta.parent is None  # the parent's metadata is not touched
    with pytest.raises(UserError, match="refusing to overwrite"):
        write_arm(tmp_path, "model", 0, model, meta, parent, {}, METRICS)  # model.pt is the input


def _bundle(masks: dict[str, torch.Tensor] | None = None):
    n, size = 12, 8
    images = torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(0))
    ids = [f"s{i}" for i in range(n)]
    parts = [np.arange(0, 6), np.arange(6, 9), np.arange(9, 12)]
    return bundle_from_tensors("io-toy", images, np.arange(n) % 3, ids, ["a", "b", "c"], parts, None, masks=masks or {})


def test_object_masks_from_builtin_a_folder_or_boxes(tmp_path: Path) -> None:
    square = torch.zeros(8, 8, dtype=torch.bool)
    square[2:5, 2:5] = True
    bundle = _bundle({"s0": square, "s7": square})
    assert set(read_object_masks(bundle, "builtin")) == {"s0"}  # train ids only
    assert set(read_object_masks(bundle, "builtin", split="val")) == {"s7"}
    Image.fromarray(square.numpy().astype(np.uint8) * 255).save(tmp_path / "s1.png")
    from_folder = read_object_masks(bundle, str(tmp_path))
    assert set(from_folder) == {"s1"} and torch.equal(from_folder["s1"], square)
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("id,x0,y0,x1,y1\ns2,2,2,5,5\n")
    assert set(read_object_masks(bundle, None, boxes=str(boxes))) == {"s2"}
    with pytest.raises(UserError, match="no mask in .* matches a val image id"):
        read_object_masks(bundle, str(tmp_path), split="val")
    with pytest.raises(UserError, match="has no built-in masks"):
        read_object_masks(_bundle(), "builtin")
    with pytest.raises(UserError, match="--masks builtin"):
        read_object_masks(bundle, None)


def test_samples_and_image_files(tmp_path: Path) -> None:
    square = torch.zeros(8, 8, dtype=torch.bool)
    square[1:4, 1:4] = True
    bundle = _bundle({"s3": square})
    sample = read_sample(bundle, "train", "s3")
    assert (sample.name, sample.label, sample.index) == ("s3", 0, 3) and torch.equal(sample.mask, square)
    torch.testing.assert_close(sample.image, bundle.normalise(sample.raw.unsqueeze(0))[0])
    with pytest.raises(UserError, match="no sample 'nope' in the val split"):
        read_sample(bundle, "val", "nope")
    Image.fromarray(np.full((16, 16), 255, dtype=np.uint8)).save(tmp_path / "white.png")
    image = read_image(tmp_path / "white.png", bundle, label=2)
    assert image.name == "white" and image.raw.shape == (1, 8, 8) and float(image.raw.min()) == 1.0
    assert image.label == 2 and image.mask is None
    mask = read_mask_image(tmp_path / "white.png", (4, 4))
    assert mask.shape == (4, 4) and bool(mask.all())
    with pytest.raises(UserError, match="does not exist"):
        read_image(tmp_path / "missing.png", bundle)
