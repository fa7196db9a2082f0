import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modeldoctor.analyses.dissect import dissect, dissection_summary, object_background, stroke_concepts
from modeldoctor.cli.app import main
from modeldoctor.core.errors import UserError
from modeldoctor.data.bundle import ImageSplit
from modeldoctor.models.checkpoint import CheckpointMeta, save_checkpoint, weights_hash
from modeldoctor.models.zoo import build_model


def _split(images: torch.Tensor) -> ImageSplit:
    n = len(images)
    return ImageSplit([0] * n, [f"s{i}" for i in range(n)], [0.0] * images.shape[1], [1.0] * images.shape[1],
                      images=images)


def _identity_conv(channels: int) -> nn.Module:
    conv = nn.Conv2d(channels, channels, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(channels).view(channels, channels, 1, 1))
    return nn.Sequential(conv)


def test_unit_equal_to_a_mask_gets_iou_one():
    """4 images of 10x10, one object pixel each: exactly 1% of all positions, the paper's top-1% level."""
    gen = torch.Generator().manual_seed(0)
    obj = torch.zeros(4, 10, 10, dtype=torch.bool)
    for i, (r, c) in enumerate([(1, 2), (5, 5), (9, 0), (3, 8)]):
        obj[i, r, c] = True
    strength = 1 + torch.rand(4, 10, 10, generator=gen)
    images = torch.stack([obj * strength, (~obj) * torch.rand(4, 10, 10, generator=gen) * 0.5], 1)
    model = _identity_conv(2)
    masks = {f"s{i}": {"object": obj[i], "background": ~obj[i]} for i in range(4)}
    result = dissect(model, _split(images), masks, ["0"], batch_size=3)["0"]
    assert result.concepts == ["background", "object"]
    assert result.iou[0, 1] == 1.0 and result.iou[0, 0] == 0.0
    labels = result.labels()
    assert labels[0] == {"unit": 0, "concept": "object", "iou": 1.0}
    assert labels[1]["concept"] == "background" and 0 < labels[1]["iou"] < 0.05  # 4 of 396 background pixels
    assert result.counts(min_iou=0.5) == {"background": 0, "object": 1}


def test_dissect_matches_direct_computation():
    """Streaming thresholds and batched counts equal a one-shot computation over all activations."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 6, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(6, 5, 3, padding=1))
    images = torch.rand(7, 1, 12, 12)
    masks = {f"s{i}": {"bright": images[i, 0] > 0.7, "corner": torch.arange(144).view(12, 12) < 30}
             for i in range(7)}
    result = dissect(model, _split(images), masks, ["2"], quantile=0.05, batch_size=3)["2"]
    with torch.no_grad():
        acts = model(images)  # (7, 5, 6, 6)
    flat = acts.transpose(0, 1).reshape(5, -1)
    k = int(np.ceil(0.05 * flat.shape[1]))
    t = flat.sort(1, descending=True).values[:, k]
    active = F.interpolate(acts, size=(12, 12), mode="bilinear", align_corners=False) > t.view(1, -1, 1, 1)
    for c_idx, concept in enumerate(result.concepts):
        label = torch.stack([masks[f"s{i}"][concept] for i in range(7)])[:, None]
        inter = (active & label).sum((0, 2, 3)).float()
        union = (active | label).sum((0, 2, 3)).float()
        assert torch.allclose(result.iou[:, c_idx], inter / union)
    assert torch.allclose(result.thresholds, t)


def test_stroke_concepts_and_model_left_alone(mnist5k):
    concepts = stroke_concepts(mnist5k.val)
    first = concepts[mnist5k.val.ids[0]]
    assert torch.equal(first["stroke"], mnist5k.val.raw(0)[0] > 0.5) and torch.equal(first["background"], ~first["stroke"])
    model = build_model("simple-cnn-narrow", 10, 1)
    model.train()
    before = weights_hash(model)
    subset = {sid: concepts[sid] for sid in mnist5k.val.ids[:40:4]}
    results = dissect(model, mnist5k.val, subset, ["features.7", "features.11"], batch_size=4)
    assert weights_hash(model) == before and model.training
    assert all(not m._forward_hooks for m in model.modules())
    summary = dissection_summary(results)
    for name, units in (("features.7", 16), ("features.11", 32)):
        layer = summary["layers"][name]
        assert layer["num_samples"] == 10 and len(layer["units"]) == units
        assert sum(layer["counts"].values()) <= units
        assert all(0 <= u["iou"] <= 1 and u["concept"] in ("stroke", "background") for u in layer["units"])


def test_masks_must_match_ids():
    with pytest.raises(UserError, match="no sample"):
        dissect(_identity_conv(1), _split(torch.rand(2, 1, 4, 4)), {"other": {"object": np.ones((4, 4))}}, ["0"])
    with pytest.raises(UserError, match="quantile"):
        dissect(_identity_conv(1), _split(torch.rand(2, 1, 4, 4)), {"s0": {"object": np.ones((4, 4))}}, ["0"],
                quantile=1.5)
    masks = object_background({"s0": np.eye(4)})
    assert masks["s0"]["object"].sum() == 4 and masks["s0"]["background"].sum() == 12


def test_dissect_and_ablate_cli(mnist5k, tmp_path, capsys):
    from PIL import Image

    torch.manual_seed(0)
    model = build_model("simple-cnn-narrow", 10, 1)
    meta = CheckpointMeta("simple-cnn-narrow", 10, 1, 28, mnist5k.class_names, mnist5k.mean, mnist5k.std, "mnist5k")
    ckpt = save_checkpoint(tmp_path / "model.pt", model, meta)
    mask_dir = tmp_path / "masks"
    mask_dir.mkdir()
    for i in range(0, 500, 50):
        png = ((mnist5k.val.raw(i)[0] > 0.3).numpy() * 255).astype(np.uint8)
        Image.fromarray(png).save(mask_dir / f"{mnist5k.val.ids[i]}.png")
    out = tmp_path / "dissect"
    assert main(["dissect", "--checkpoint", str(ckpt), "--masks", str(mask_dir), "--out", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    layer = printed["layers"]["features.11"]
    assert printed["concept_source"] == "masks" and layer["num_samples"] == 10 and len(layer["units"]) == 32
    assert set(layer["concepts"]) == {"object", "background"}
    assert json.loads((out / "dissect.json").read_text())["layers"]["features.11"]["units"] == layer["units"]

    assert main(["dissect", "--checkpoint", str(ckpt), "--max-samples", "8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["concept_source"] == "builtin-stroke"
    assert main(["dissect", "--checkpoint", str(ckpt), "--masks", str(tmp_path), "--json"]) == 2

    assert main(["ablate", "--checkpoint", str(ckpt), "--max-samples", "20", "--k", "1", "--c", "2",
                 "--dissect", str(out / "dissect.json"), "--json"]) == 0
    ranking = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["ranking"]
    assert all(e["concept"] in ("object", "background") and "iou" in e for e in ranking["worst"] + ranking["best"])
