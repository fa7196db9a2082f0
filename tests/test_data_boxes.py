"""Box masks from exact masks, mask tightness (data/boxes.py) and GrabCut box refinement (data/refine.py)."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from modeldoctor.core.errors import UserError
from modeldoctor.data.boxes import box_masks, box_rows, boxes_of, mask_tightness, split_tightness
from modeldoctor.data.bundle import ImageSplit
from modeldoctor.data.masks import load_boxes


def test_box_masks_fill_each_masks_bounding_box():
    masks = torch.zeros(3, 10, 12, dtype=torch.bool)
    masks[0, 2, 3] = masks[0, 6, 8] = True  # two pixels: the box spans rows 2–6, columns 3–8
    masks[1, 4:6, 0:2] = True
    expected = torch.zeros_like(masks)
    expected[0, 2:7, 3:9] = True
    expected[1, 4:6, 0:2] = True
    assert torch.equal(box_masks(masks), expected)  # the empty third mask stays empty
    assert torch.equal(box_masks(expected), expected)


def test_box_rows_round_trip_through_the_box_reader(tmp_path):
    masks = {f"s{i}": torch.zeros(16, 16, dtype=torch.bool) for i in range(3)}
    masks["s0"][3:5, 7] = True
    masks["s1"][0, 0] = masks["s1"][15, 9] = True
    rows = box_rows(masks)
    assert rows == [{"id": "s0", "x0": 7, "y0": 3, "x1": 8, "y1": 5}, {"id": "s1", "x0": 0, "y0": 0, "x1": 10, "y1": 16}]
    (tmp_path / "boxes.json").write_text(json.dumps(rows))
    read = load_boxes(tmp_path / "boxes.json", list(masks), 16)  # the reader of the annotate page's boxes.json
    lazy = boxes_of(masks)
    assert set(read) == {"s0", "s1"} and len(lazy) == 3
    for sid in read:
        assert torch.equal(read[sid], lazy[sid])


def test_mask_tightness_is_the_objects_share_of_the_mask():
    images = torch.zeros(2, 1, 24, 24)
    checker = (torch.arange(24).view(-1, 1) + torch.arange(24).view(1, -1)) % 2 == 0
    images[:, 0] = torch.where(checker, 0.0, 0.2)  # a background of two values
    obj = torch.zeros(24, 24, dtype=torch.bool)
    obj[8:14, 9:13] = True  # 24 object pixels
    images[:, 0][:, obj] = 1.0
    box = torch.zeros(24, 24, dtype=torch.bool)
    box[6:16, 7:15] = True  # 80 pixels around it
    tight = mask_tightness(images, torch.stack([obj, box]))
    assert tight[0] == pytest.approx(1.0) and tight[1] == pytest.approx(24 / 80)
    assert mask_tightness(images, torch.stack([torch.zeros_like(box), torch.ones_like(box)])).isnan().all()
    with pytest.raises(UserError, match="needs"):
        mask_tightness(images[0], box)
    split = ImageSplit([0, 1], ["a", "b"], [0.0], [1.0], images=images)
    summary = split_tightness(split, {"a": obj, "b": box})
    assert summary["n"] == 2 and summary["median"] == pytest.approx((1 + 24 / 80) / 2)


def disks(n: int = 6, size: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noisy green-grey backgrounds with a red disk of known extent, and a loose box around each disk."""
    g = torch.Generator().manual_seed(0)
    images = 0.2 + 0.2 * torch.rand(n, 3, size, size, generator=g)
    images[:, 1] += 0.2
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    objects = torch.zeros(n, size, size, dtype=torch.bool)
    boxes = torch.zeros_like(objects)
    for i in range(n):
        cy, cx, r = 12 + i % 3 * 3, 11 + i % 2 * 6, 5 + i % 2
        objects[i] = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        boxes[i, cy - r - 4:cy + r + 5, cx - r - 4:cx + r + 5] = True
        images[i, :, objects[i]] = torch.tensor([0.9, 0.15, 0.1]).view(3, 1)
    return images, objects, boxes


def iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a & b).flatten(1).sum(1) / (a | b).flatten(1).sum(1)


def test_refine_boxes_cuts_the_box_down_to_the_object():
    pytest.importorskip("cv2")
    from modeldoctor.data.refine import refine_boxes, refine_masks

    images, objects, boxes = disks()
    refined = refine_boxes(images, boxes)
    assert (refined <= boxes).all()  # never outside the box
    assert (iou(boxes, objects) < 0.5).all() and (iou(refined, objects) > 0.9).all()
    assert torch.equal(refine_boxes(images, boxes), refined)  # deterministic
    split = ImageSplit([0] * len(images), [f"d{i}" for i in range(len(images))], [0.0] * 3, [1.0] * 3, images=images)
    by_id = refine_masks(split, {"d1": boxes[1], "d4": boxes[4], "elsewhere": boxes[0]})
    assert set(by_id) == {"d1", "d4"} and torch.equal(by_id["d4"], refined[4])
    grey = refine_boxes(images[:, :1], boxes)  # one channel (red: the disk is bright there) works too
    assert (iou(grey, objects) > iou(boxes, objects)).all()


def test_refine_boxes_without_opencv_keeps_the_boxes(monkeypatch):
    from modeldoctor.data.refine import refine_boxes

    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 now raises ImportError
    images, _, boxes = disks(2)
    with pytest.warns(UserWarning, match="needs OpenCV"):
        assert torch.equal(refine_boxes(images, boxes), boxes)


@pytest.mark.slow
def test_a_family_spec_with_boxes_carries_box_masks():
    from modeldoctor.data.sources import load_data

    exact, boxed = load_data("spot-mnist:clean"), load_data("spot-mnist:boxes,clean")
    assert torch.equal(exact.train.images, boxed.train.images) and boxed.spec == "spot-mnist:boxes,clean"
    for sid in exact.train.ids[:50]:
        assert torch.equal(boxed.masks[sid], box_masks(exact.masks[sid]))
        assert (boxed.masks[sid] >= exact.masks[sid]).all() and boxed.masks[sid].sum() > exact.masks[sid].sum()
