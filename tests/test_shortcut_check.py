"""The shortcut check and the background reliance measures against hand-built models with known answers:
one reads only the object, one reads only the background (fixed windows on images whose object sits in a
known square)."""

import math

import pytest
import torch
from torch import nn

from modeldoctor.core.errors import UserError
from modeldoctor.data.bundle import ImageSplit
from modeldoctor.data.masks import expand_mask
from modeldoctor.doctor.reliance import outside_share, reliance_shares
from modeldoctor.doctor.shortcut import build_swap_set, check_model, mask_tightness, shortcut_check, wilson

SIZE = 16
LEVELS = torch.tensor([0.15, 0.45, 0.75])  # class c: object and background at intensity LEVELS[c]


def object_mask() -> torch.Tensor:
    m = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    m[5:11, 5:11] = True
    return m


class Gate(nn.Module):
    """Multiply by a fixed window, rescaled so that global average pooling gives the window's mean."""

    def __init__(self, window: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("window", window.float() / window.float().mean())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.window


class WindowReader(nn.Module):
    """Classifies the mean intensity v inside ``window``: logit_c = k (v s_c − s_c²/2), i.e. the nearest level."""

    def __init__(self, window: torch.Tensor, k: float = 200.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.conv.bias.zero_()
        self.relu = nn.ReLU()
        self.gate = Gate(window)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(1, 3)
        with torch.no_grad():
            self.fc.weight.copy_(k * LEVELS.view(3, 1))
            self.fc.bias.copy_(-k * LEVELS.pow(2) / 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.gate(self.relu(self.conv(x)))).flatten(1))


def object_reader() -> WindowReader:
    return WindowReader(object_mask())


def background_reader() -> WindowReader:
    return WindowReader(~expand_mask(object_mask(), 2))


def masked_split(per_class: int = 6) -> tuple[ImageSplit, dict[str, torch.Tensor]]:
    labels = torch.arange(3).repeat_interleave(per_class)
    images = LEVELS[labels].view(-1, 1, 1, 1).expand(-1, 1, SIZE, SIZE).clone()
    g = torch.Generator().manual_seed(1)
    images += 0.01 * torch.rand(images.shape, generator=g)  # no two images alike
    ids = [f"img{i}" for i in range(len(labels))]
    split = ImageSplit(labels.tolist(), ids, [0.0], [1.0], images=images)
    return split, {sid: object_mask() for sid in ids}


def test_windows_classify_their_own_images():
    split, _ = masked_split()
    x = torch.stack([split[i][0] for i in range(len(split))])
    for model in (object_reader(), background_reader()):
        assert torch.equal(model(x).argmax(1), split.labels)


def test_object_reader_has_no_shortcut():
    split, masks = masked_split()
    result = shortcut_check(object_reader(), split, masks, ["a", "b", "c"], layer="conv")
    v = result["verdict"]
    assert v["label"] == "not detectably" and not v["reads_background"]
    assert v["follow"] == 0.0 and v["composites"] == 3 * 18 and v["objects"] == 18
    assert result["overall"]["swap_accuracy"] == 1.0 and result["overall"]["own_accuracy"] == 1.0
    assert result["overall"]["activation_share"] == pytest.approx(0.0, abs=1e-9)
    assert result["overall"]["gradcam_share"] == pytest.approx(0.0, abs=1e-9)
    assert result["overall"]["probability_drop"] == pytest.approx(0.0, abs=1e-6)
    for row in result["per_class"].values():
        assert row["follows_background"] == 0.0 and row["pull"] == 0.0


def test_background_reader_is_caught():
    split, masks = masked_split()
    result = shortcut_check(background_reader(), split, masks, ["a", "b", "c"], layer="conv")
    v = result["verdict"]
    assert v["label"] == "reads the background" and v["reads_background"]
    assert v["follow"] == 1.0 and v["own"] == 0.0 and v["excess_ci"][0] > 0.9
    assert result["overall"]["swap_accuracy"] == 0.0 and result["overall"]["own_accuracy"] == 1.0
    assert result["overall"]["activation_share"] == pytest.approx(1.0, abs=1e-9)
    assert result["overall"]["gradcam_share"] == pytest.approx(1.0, abs=1e-9)
    assert result["overall"]["probability_drop"] > 0.9
    confusion = result["donor_confusion"]
    assert all(confusion[a][b] == (None if a == b else 1.0) for a in range(3) for b in range(3))
    assert v["message"].startswith("reads the background: 100% of 54 composites")


def test_measures_leave_the_model_as_found():
    model = background_reader()
    model.train()
    model.fc.weight.requires_grad_(False)
    split, masks = masked_split(3)
    shortcut_check(model, split, masks, ["a", "b", "c"], layer="conv")
    assert model.training and all(m.training for m in model.modules())
    assert not model.fc.weight.requires_grad and model.conv.weight.requires_grad and model.conv.weight.grad is None
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_half_and_half_reader_sits_between():
    """A model reading both windows equally: shares strictly between the two pure readers."""
    window = object_mask() | ~expand_mask(object_mask(), 2)
    split, masks = masked_split(3)
    x = torch.stack([split[i][0] for i in range(len(split))])
    shares = reliance_shares(WindowReader(window), x, split.labels, torch.stack(list(masks.values())), "conv")
    outside = float((~expand_mask(object_mask(), 2)).float().sum() / window.float().sum())
    assert 0.2 < outside < 0.9
    assert torch.allclose(shares["gradcam"], torch.full((9,), outside, dtype=torch.float64), atol=0.02)


def test_composites_pair_objects_with_other_classes_backgrounds():
    split, masks = masked_split(4)
    swaps = build_swap_set(split, masks, per_class=4, per_object=2)
    assert len(swaps.composites) == 24 and len(swaps.restored) == 12
    assert bool((swaps.donor_class != swaps.labels[swaps.object_row]).all())
    # restored: the object on its own background, equal to the image outside the 1-px ring the pipeline redraws
    i = swaps.objects[0]
    assert torch.allclose(swaps.restored.raw(0)[:, object_mask()], split.raw(i)[:, object_mask()])


def test_few_classes_refused():
    split, masks = masked_split(3)
    only_a = {sid: m for sid, m in masks.items() if int(split.labels[split.index_of[sid]]) == 0}
    with pytest.raises(UserError, match="two classes"):
        build_swap_set(split, only_a)


def test_tightness_tells_boxes_from_outlines():
    box = object_mask().unsqueeze(0)
    disc = torch.zeros(1, SIZE, SIZE, dtype=torch.bool)
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    disc[0] = (yy - 8) ** 2 + (xx - 8) ** 2 <= 16
    assert mask_tightness(box)["bbox_fill"] == 1.0 and mask_tightness(box)["box_like"] == 1.0
    assert mask_tightness(disc)["bbox_fill"] == pytest.approx(float(disc.sum()) / 81)
    assert mask_tightness(disc)["box_like"] == 0.0


def test_wilson_interval_textbook_values():
    lo, hi = wilson(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    assert wilson(0, 10)[1] == pytest.approx(0.2775, abs=1e-4)
    assert all(math.isnan(v) for v in wilson(0, 0))


def test_outside_share_of_an_empty_map_is_nan():
    share = outside_share(torch.zeros(1, 4, 4), torch.ones(1, 4, 4))
    assert math.isnan(float(share[0]))


def test_check_model_reuses_one_swap_set_for_several_models():
    split, masks = masked_split(3)
    swaps = build_swap_set(split, masks, per_class=3)
    a = check_model(object_reader(), swaps, ["a", "b", "c"], "conv")
    b = check_model(background_reader(), swaps, ["a", "b", "c"], "conv")
    assert a["verdict"]["composites"] == b["verdict"]["composites"]
    assert a["per_class"]["a"]["swap_accuracy"] == 1.0 and b["per_class"]["a"]["swap_accuracy"] == 0.0
