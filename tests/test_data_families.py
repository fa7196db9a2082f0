"""The shortcut families (data/shortcut.py, data/border.py) and the background-swap meter (data/swap.py)."""

from __future__ import annotations

import pytest
import torch

from modeldoctor.core.errors import UserError
from modeldoctor.data.bundle import ImageSplit
from modeldoctor.data.swap import background_swap, erase_object


@pytest.mark.slow
def test_shortcut_mnist_is_deterministic_with_masks_and_a_clean_twin():
    from modeldoctor.data.shortcut import parse_spec
    from modeldoctor.data.sources import load_data

    a, clean = load_data("shortcut-mnist"), load_data("shortcut-mnist:clean")
    assert a.input_size == 48 and (len(a.train), len(a.val), len(a.test)) == (3500, 500, 1000)
    assert torch.equal(a.test.images, clean.test.images) and torch.equal(a.val.images, clean.val.images)
    assert not torch.equal(a.train.images, clean.train.images)  # only the training textures differ
    sid = a.train.ids[0]
    mask = a.masks[sid]
    assert mask.shape == (48, 48) and 0.03 < mask.float().mean() < 0.4
    assert (a.train.raw(0)[0][mask] > 0.25).all()  # the mask sits on the digit's bright pixels
    assert torch.equal(load_data("shortcut-mnist").train.images[:50], a.train.images[:50])
    with pytest.raises(UserError, match="unknown shortcut-mnist option"):
        parse_spec("colour=1")


@pytest.mark.slow
def test_border_mnist_carries_the_shortcut_in_train_and_val_only():
    from modeldoctor.data.border import COLOURS, parse_spec
    from modeldoctor.data.sources import load_data

    bundle = load_data("border-mnist")
    assert bundle.in_channels == 3 and bundle.input_size == 40 and len(bundle.masks) == 5000

    def agreement(split: ImageSplit) -> float:
        corner = split.images[:, :, 0, 0]  # the frame's colour
        colour = (corner.unsqueeze(1) - COLOURS.unsqueeze(0)).abs().sum(2).argmin(1)
        return float((colour == split.labels).float().mean())

    assert 0.85 < agreement(bundle.train) < 0.95 and 0.85 < agreement(bundle.val) < 0.95
    assert agreement(bundle.test) < 0.2
    assert agreement(load_data("border-mnist:clean").train) < 0.2
    with pytest.raises(UserError, match="unknown border-mnist option"):
        parse_spec("colour=1")


def swap_split() -> tuple[ImageSplit, torch.Tensor]:
    """Four 12-px images: class c has a bright 4x4 object and a background of value 0.1·(c+1)."""
    images = torch.zeros(4, 1, 12, 12)
    masks = torch.zeros(4, 12, 12, dtype=torch.bool)
    for i in range(4):
        images[i] = 0.1 * (i % 2 + 1)
        masks[i, 2 + i:6 + i, 3:7] = True
        images[i, 0][masks[i]] = 1.0
    return ImageSplit([0, 1, 0, 1], [f"s{i}" for i in range(4)], [0.0], [1.0], images=images), masks


def test_erase_object_fills_from_the_background_only():
    split, masks = swap_split()
    erased = erase_object(split.raw(0), masks[0])
    assert torch.allclose(erased, torch.full_like(erased, 0.1))  # a flat background stays flat, object gone
    with pytest.raises(UserError, match="whole image"):
        erase_object(split.raw(0), torch.ones(12, 12, dtype=torch.bool))


def test_background_swap_pastes_objects_on_other_classes_backgrounds():
    split, masks = swap_split()
    swap = background_swap(split, masks, objects=[0, 1], donors=[0, 1, 2, 3], per_object=2, seed=0, grow=0)
    assert len(swap) == 4 and swap.labels.tolist() == [0, 0, 1, 1]
    for k, sid in enumerate(swap.ids):
        obj, donor = (split.index_of[s] for s in sid.split("@"))
        assert int(split.labels[obj]) != int(split.labels[donor])  # always another class's background
        image = swap.raw(k)[0]
        assert torch.equal(image[masks[obj]], torch.ones(int(masks[obj].sum())))  # the object kept exactly
        background = ~masks[obj] & ~masks[donor]
        assert torch.allclose(image[background], torch.full_like(image[background], 0.1 * (donor % 2 + 1)))
