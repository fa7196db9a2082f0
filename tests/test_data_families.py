"""The shortcut families (data/shortcut.py, data/border.py) and the background-swap meter (data/swap.py)."""

from __future__ import annotations

import pytest
import torch

from modeldoctor.core.errors import UserError
from modeldoctor.data.bundle import ImageSplit
from modeldoctor.data.masks import expand_mask
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


@pytest.mark.slow
def test_tint_mnist_puts_the_cue_on_the_digit_in_train_and_val_only():
    from modeldoctor.data.sources import load_data
    from modeldoctor.data.tint import HUES, parse_spec

    bundle, clean = load_data("tint-mnist"), load_data("tint-mnist:clean")
    assert bundle.in_channels == 3 and bundle.input_size == 40 and len(bundle.masks) == 5000
    assert torch.equal(bundle.test.images, clean.test.images)  # only the training and validation hues differ
    assert torch.equal(load_data("tint-mnist").train.images[:50], bundle.train.images[:50])

    def agreement(split: ImageSplit, masks) -> float:
        hits = 0
        for i, sid in enumerate(split.ids[:300]):
            image = split.raw(i)
            grey = image.max(0).values
            far = ~expand_mask(masks[sid], 2)  # beyond the stroke's faint edge (a few stray faint digit pixels aside)
            assert (image.std(0)[far] < 1e-6).float().mean() > 0.98  # the background is neutral: channels equal
            r, c = divmod(int((grey * masks[sid]).argmax()), grey.shape[1])  # the stroke's brightest pixel
            colour = image[:, r, c] / image[:, r, c].max()
            hits += int((colour - HUES).abs().sum(1).argmin()) == int(split.labels[i])
        return hits / min(300, len(split))

    assert 0.85 < agreement(bundle.train, bundle.masks) < 0.95 and 0.85 < agreement(bundle.val, bundle.masks) < 0.95
    assert agreement(bundle.test, bundle.masks) < 0.2 and agreement(clean.train, clean.masks) < 0.2
    with pytest.raises(UserError, match="unknown tint-mnist option"):
        parse_spec("colour=1")


@pytest.mark.slow
def test_spot_mnist_draws_a_class_symbol_beside_the_digit():
    from modeldoctor.data.sources import load_data
    from modeldoctor.data.spot import glyph, parse_spec

    bundle, clean = load_data("spot-mnist"), load_data("spot-mnist:clean")
    assert bundle.in_channels == 1 and bundle.input_size == 48 and len(bundle.masks) == 5000
    assert torch.equal(bundle.test.images, clean.test.images)
    assert torch.equal(load_data("spot-mnist").train.images[:50], bundle.train.images[:50])

    def crop(m: torch.Tensor) -> torch.Tensor:
        rows, cols = torch.nonzero(m, as_tuple=True)
        return m[rows.min():rows.max() + 1, cols.min():cols.max() + 1]

    symbols = [crop(glyph(k, 12) > 0) for k in range(10)]
    assert all(not torch.equal(a, b) for i, a in enumerate(symbols) for b in symbols[i + 1:])  # ten distinct symbols

    def agreement(split: ImageSplit) -> float:
        hits = 0
        for i, sid in enumerate(split.ids[:300]):
            image, digit = split.raw(i)[0], bundle.masks[sid]
            spot = (image > 0.5) & ~digit  # noise stays below 0.15, the digit's bright pixels are its mask
            rows, cols = torch.nonzero(spot, as_tuple=True)
            assert rows.max() - rows.min() < 12 and cols.max() - cols.min() < 12  # one symbol, nothing else
            d_rows, d_cols = torch.nonzero(digit, as_tuple=True)
            apart_r = rows.min() > d_rows.max() or rows.max() < d_rows.min()
            assert apart_r or cols.min() > d_cols.max() or cols.max() < d_cols.min()  # beside the digit, not on it
            kind = [k for k, s in enumerate(symbols) if torch.equal(crop(spot), s)]
            hits += kind == [int(split.labels[i])]
        return hits / min(300, len(split))

    assert 0.85 < agreement(bundle.train) < 0.95 and 0.85 < agreement(bundle.val) < 0.95
    assert agreement(bundle.test) < 0.2 and agreement(clean.train) < 0.2
    with pytest.raises(UserError, match="unknown spot-mnist option"):
        parse_spec("colour=1")
    with pytest.raises(UserError, match="size >= 29 \\+ glyph"):
        parse_spec("glyph=24")
