"""Object masks are read per id on demand, and the treatment's mask bank holds only the annotated pool."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modeldoctor.data import masks as mask_module
from modeldoctor.data.masks import check_masks, load_boxes, load_coco, load_masks
from modeldoctor.doctor.annotation import MaskBank


def test_mask_files_are_read_when_looked_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for sid in ("a", "b", "c"):
        image = np.zeros((8, 8), dtype=np.uint8)
        image[2:4, 2:4] = 255
        Image.fromarray(image).save(tmp_path / f"{sid}.png")
    reads: list[Path] = []
    original = mask_module._read_png
    monkeypatch.setattr(mask_module, "_read_png", lambda p: reads.append(p) or original(p))
    masks = load_masks(tmp_path, ["a", "b", "c", "missing"], 8)
    assert set(masks) == {"a", "b", "c"} and "missing" not in masks and reads == []
    assert masks["b"].sum() == 4 and [p.name for p in reads] == ["b.png"]
    with pytest.raises(KeyError):
        masks["missing"]


def test_boxes_and_coco_rasterise_per_id(tmp_path: Path) -> None:
    (tmp_path / "boxes.csv").write_text("id,x0,y0,x1,y1\na,0,0,2,2\na,6,6,8,8\nb,1,1,3,3\n")
    boxes = load_boxes(tmp_path / "boxes.csv", ["a", "b"], 8)
    assert boxes["a"].sum() == 8 and boxes["b"].sum() == 4
    coco = {"images": [{"id": 1, "file_name": "x/a.png", "height": 8, "width": 8}],
            "annotations": [{"image_id": 1, "segmentation": [[0, 0, 4, 0, 4, 4, 0, 4]]}]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    found = load_coco(tmp_path / "coco.json", ["a.png", "other"], 8)
    assert list(found) == ["a.png"] and found["a.png"][:4, :4].all() and not found["a.png"][5:, 5:].any()
    kept = check_masks(found, 8)  # stays lazy, restricted to the usable ids
    assert isinstance(kept, mask_module.LazyMasks) and list(kept) == ["a.png"]


def test_mask_bank_holds_only_the_pool() -> None:
    class Split:
        ids = [f"s{i}" for i in range(1000)]

        def __len__(self) -> int:
            return len(self.ids)

    masks = {"s3": torch.eye(4, dtype=torch.bool), "s7": torch.ones(4, 4, dtype=torch.bool)}
    bank = MaskBank.build(Split(), masks, [3, 7, 9], 4)  # type: ignore[arg-type]
    assert bank.pool == [3, 7] and bank.masks.shape == (2, 4, 4)
    got, annotated = bank.lookup(torch.tensor([7, 0, 3]))
    assert annotated.tolist() == [True, False, True]
    assert torch.equal(got[0], masks["s7"]) and not got[1].any() and torch.equal(got[2], masks["s3"])
    only = bank.restricted([3])
    assert only.pool == [3] and torch.equal(only.lookup(torch.tensor([3]))[0][0], masks["s3"])
    assert set(bank.by_index()) == {3, 7}
