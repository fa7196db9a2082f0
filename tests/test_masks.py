"""data/masks.py: expansion, resizing, files (PNG, boxes, labelme), checks, receptive-field background."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from modeldoctor.core.errors import UserError
from modeldoctor.data.masks import background_mask, check_masks, default_expansion, expand_mask, load_boxes, load_masks


def test_expansion_and_resizing_on_hand_made_masks():
    m = torch.zeros(1, 8, 8, dtype=torch.bool)
    m[0, 3, 3] = True
    grown = expand_mask(m, 1)
    assert grown.sum() == 9 and grown[0, 2:5, 2:5].all()
    assert expand_mask(m, 0).equal(m)
    bg = background_mask(m, (4, 4), expansion=0)  # cell (1, 1) covers pixels 2..3 → object
    expected = torch.ones(4, 4)
    expected[1, 1] = 0
    assert bg.shape == (1, 1, 4, 4) and torch.equal(bg[0, 0], expected)
    bg = background_mask(m, (4, 4), expansion=1)  # pixels 2..4 → cells 1 and 2
    expected[1:3, 1:3] = 0
    assert torch.equal(bg[0, 0], expected)
    assert background_mask(m, (16, 16), expansion=0).sum() == 256 - 4  # upsampled feature maps
    assert [default_expansion(s) for s in (28, 32, 96, 224)] == [2, 3, 10, 30]
    assert default_expansion(48) == 5 and default_expansion(448) == 60


def test_mask_files_boxes_and_labelme(tmp_path):
    from PIL import Image

    arr = np.zeros((16, 16), dtype=np.uint8)
    arr[4:8, 4:8] = 255
    Image.fromarray(arr).save(tmp_path / "a.png")
    (tmp_path / "b.json").write_text(json.dumps({"imageHeight": 16, "imageWidth": 16, "shapes": [
        {"label": "obj", "shape_type": "polygon", "points": [[0, 0], [7, 0], [7, 7], [0, 7]]}]}))
    Image.fromarray(np.zeros((10, 20), dtype=np.uint8)).save(tmp_path / "c.png")
    masks = load_masks(tmp_path, ["a", "b", "missing"], 8)
    assert set(masks) == {"a", "b"}
    assert masks["a"].sum() == 4 and masks["a"][2:4, 2:4].all()
    assert masks["b"][:4, :4].all() and not masks["b"][5:, 5:].any()
    with pytest.raises(UserError, match="aspect"):
        load_masks(tmp_path, ["c"], 8)
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("id,x0,y0,x1,y1\na,1,2,3,4\n")
    got = load_boxes(boxes, ["a"], 8)["a"]
    assert got.sum() == 4 and got[2:4, 1:3].all()
    boxes.write_text("id,x0,y0,x1,y1\na,5,2,3,4\n")
    with pytest.raises(UserError, match="empty or outside"):
        load_boxes(boxes, ["a"], 8)


def test_check_masks_warns_and_refuses():
    good = torch.zeros(4, 4, dtype=torch.bool)
    good[1, 1] = True
    with pytest.warns(UserWarning) as caught:
        kept = check_masks({"ok": good, "empty": torch.zeros(4, 4, dtype=torch.bool),
                            "full": torch.ones(4, 4, dtype=torch.bool)}, 4)
    assert set(kept) == {"ok"}
    messages = " ".join(str(w.message) for w in caught)
    assert "empty" in messages and "whole image" in messages
    with pytest.raises(UserError, match="images are"):
        check_masks({"ok": torch.ones(5, 5, dtype=torch.bool)}, 4)
    with pytest.raises(UserError, match="no usable mask"):
        check_masks({"e": torch.zeros(4, 4, dtype=torch.bool)}, 4)


def test_coco_polygons_and_rle_compressed_or_not(tmp_path):
    import json

    from pycocotools import mask as coco_mask

    from modeldoctor.data.masks import load_coco

    full = np.zeros((20, 20), dtype=np.uint8)
    full[5:15, 2:8] = 1
    compressed = coco_mask.encode(np.asfortranarray(full))
    compressed["counts"] = compressed["counts"].decode()
    column_major = full.flatten(order="F")
    runs, value, count = [], 0, 0
    for pixel in column_major:
        if pixel != value:
            runs.append(count)
            value, count = pixel, 0
        count += 1
    runs.append(count)
    doc = {"images": [{"id": 1, "file_name": "train/a.jpg", "height": 20, "width": 20},
                      {"id": 2, "file_name": "b.png", "height": 20, "width": 20},
                      {"id": 3, "file_name": "c.png", "height": 20, "width": 20}],
           "annotations": [{"image_id": 1, "segmentation": [[0, 0, 10, 0, 10, 10, 0, 10]]},
                           {"image_id": 1, "segmentation": [[12, 12, 19, 12, 19, 19]]},
                           {"image_id": 2, "segmentation": compressed},
                           {"image_id": 3, "segmentation": {"counts": runs, "size": [20, 20]}}]}
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(doc))
    masks = load_coco(path, ["a", "b", "c", "nope"], 20)
    assert set(masks) == {"a", "b", "c"}
    assert masks["a"][0:10, 0:10].all() and masks["a"][15, 18] and not masks["a"][15, 5]  # two polygons, one union
    assert torch.equal(masks["b"], torch.from_numpy(full.astype(bool)))
    assert torch.equal(masks["c"], masks["b"])
    small = load_coco(path, ["b"], 10)["b"]  # resized to the model's input like every other mask source
    assert small.shape == (10, 10) and small[5, 2] and not small[0, 0]
    path.write_text(json.dumps({"images": []}))
    with pytest.raises(UserError, match="not a COCO instances file"):
        load_coco(path, ["a"], 20)
