"""Background swap: a shortcut test that needs no decorrelated data, only a few object masks.

Each held-out annotated image's object (its mask, grown by ``grow`` pixels, 0 by default: a grown mask carries a
ring of the object's own background, a cue that travels with it) is pasted onto the background of an annotated
image of *another* class, whose own object is first erased (filled with copies of that image's own background from
beyond the object, so no trace of the donor's object is left and the fill keeps the background's texture).  A model
that reads the object keeps its prediction; a model that reads the background follows the donor's class.  Accuracy
on these composites is therefore a shortcut meter that uses only the user's masks, never test data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from modeldoctor.core.errors import UserError
from modeldoctor.data.bundle import ImageSplit
from modeldoctor.data.masks import expand_mask


def erase_object(image: torch.Tensor, mask: torch.Tensor, grow: int = 2) -> torch.Tensor:
    """``image`` (C, H, W) in [0, 1] with its object (mask (H, W) grown by ``grow``) filled from the background.

    The hole is filled with copies of this image's own background taken just beyond the hole's bounding box
    (shifted by its height or width, in the nearest direction first; only pixels that look like the hole's
    surroundings are copied), so the fill keeps the background's noise and texture: a smooth fill would mark every
    composite as one, and a model can learn to read the object only on images that carry that mark.  What no copy
    reaches is filled by diffusion (the mean of known 3×3 neighbours).
    """
    hole = expand_mask(mask, grow)
    if hole.all():
        raise UserError("an object mask covers the whole image, so it has no background to swap; "
                        "give coarse masks of the object only")
    filled, missing = _copy_fill(image, hole)
    return _diffusion_fill(filled, missing)


def _copy_fill(image: torch.Tensor, hole: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rows, cols = torch.nonzero(hole.any(1)).flatten(), torch.nonzero(hole.any(0)).flatten()
    dy, dx = int(rows[-1] - rows[0]) + 1, int(cols[-1] - cols[0]) + 1
    height, width = hole.shape
    shifts = sorted([(0, dx), (0, -dx), (dy, 0), (-dy, 0), (dy, dx), (dy, -dx), (-dy, dx), (-dy, -dx)],
                    key=lambda s: abs(s[0]) + abs(s[1]))
    filled, missing = image.clone(), hole.clone()
    alike = _like_surroundings(image, hole)
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    for sy, sx in shifts:
        src_y, src_x = ys + sy, xs + sx
        inside = (src_y >= 0) & (src_y < height) & (src_x >= 0) & (src_x < width)
        src_y, src_x = src_y.clamp(0, height - 1), src_x.clamp(0, width - 1)
        usable = missing & inside & ~hole[src_y, src_x] & alike[src_y, src_x]
        filled[:, usable] = image[:, src_y[usable], src_x[usable]]
        missing = missing & ~usable
    return filled, missing


def _like_surroundings(image: torch.Tensor, hole: torch.Tensor, ring: int = 2) -> torch.Tensor:
    """(H, W) bool: pixels whose every channel lies within 4 robust deviations (1.4826 · MAD) of the median of the
    ``ring`` pixels around the hole — copies from elsewhere (a frame, a far corner) must look like what surrounds
    the object, or the fill would paste them into the middle of the background."""
    around = expand_mask(hole, ring) & ~hole
    values = image[:, around]  # (C, n)
    median = values.median(1, keepdim=True).values
    spread = 1.4826 * (values - median).abs().median(1, keepdim=True).values
    limit = (4 * spread + 0.02).view(-1, 1, 1)
    return ((image - median.view(-1, 1, 1)).abs() <= limit).all(0)


def _diffusion_fill(image: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
    known = (~hole).to(image.dtype).unsqueeze(0)
    filled = image * known
    while bool((known == 0).any()):
        total = F.avg_pool2d(filled.unsqueeze(0), 3, stride=1, padding=1)[0]
        weight = F.avg_pool2d(known.unsqueeze(0), 3, stride=1, padding=1)[0]
        reached = (weight > 0) & (known == 0)
        filled = torch.where(reached, total / weight.clamp_min(1e-12), filled)
        known = torch.where(reached, torch.ones_like(known), known)
    return torch.where(hole.unsqueeze(0), filled, image)


PLACES = ("own", "donor")


def object_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(N, 4) long ``(top, bottom, left, right)``, inclusive, of each (N, H, W) mask's bounding box."""
    def span(hit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # (N, L) bool → first and last True
        index = torch.arange(hit.shape[1])
        return torch.where(hit, index, hit.shape[1]).min(1).values, torch.where(hit, index, -1).max(1).values

    (top, bottom), (left, right) = span(masks.any(2)), span(masks.any(1))
    return torch.stack([top, bottom, left, right], 1)


def donor_shift(boxes: torch.Tensor, targets: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, 2) long (rows, cols) that move each of ``boxes`` (N, 4: top, bottom, left, right) so its centre sits on
    the matching ``targets`` box's centre (halves rounded to even), the whole box staying inside the frame."""
    move = torch.round((targets[:, 0::2] + targets[:, 1::2] - boxes[:, 0::2] - boxes[:, 1::2]) / 2).long()
    limit = torch.tensor([height - 1, width - 1])
    return torch.maximum(torch.minimum(move, limit - boxes[:, 1::2]), -boxes[:, 0::2])


def shifted(images: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) ``images`` each moved by its (rows, cols) in ``shifts``; what enters from outside is zero."""
    n, channels, height, width = images.shape
    rows = torch.arange(height).view(1, -1, 1) - shifts[:, 0].view(-1, 1, 1)  # source row of each output row
    cols = torch.arange(width).view(1, 1, -1) - shifts[:, 1].view(-1, 1, 1)
    inside = ((rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)).view(n, 1, -1)
    source = (rows.clamp(0, height - 1) * width + cols.clamp(0, width - 1)).view(n, 1, -1)
    picked = images.flatten(2).gather(2, source.expand(n, channels, -1))
    return (picked * inside).view_as(images)


def paste_object(image: torch.Tensor, mask: torch.Tensor, background: torch.Tensor, grow: int = 0,
                 at: torch.Tensor | None = None) -> torch.Tensor:
    """``image``'s object (``mask`` grown by ``grow`` pixels) over ``background`` (both (C, H, W) in [0, 1]).

    With ``at`` (the background image's own object mask) the object takes that object's place (its box centred
    on the other's, kept in frame) instead of staying where it was: what surrounded the erased object — a symbol
    beside it, a frame around it — then surrounds the pasted one as it did in the real image, and the pasted
    object covers most of the erased hole's fill."""
    keep = expand_mask(mask, grow)
    if at is not None:
        shift = donor_shift(object_boxes(keep[None]), object_boxes(at[None].bool()), *keep.shape)
        keep, image = shifted(keep[None, None], shift)[0, 0], shifted(image[None], shift)[0]
    return torch.where(keep.unsqueeze(0), image, background)


def background_swap(split: ImageSplit, masks: torch.Tensor | Mapping[int, torch.Tensor], objects: Sequence[int],
                    donors: Sequence[int], per_object: int = 3, seed: int = 0, grow: int = 0,
                    place: str = "own") -> ImageSplit:
    """Composites of each ``objects`` image (split indices) on ``per_object`` donors of other classes.

    ``masks``: bool (H, W) object masks by split index (a (len(split), H, W) tensor or a mapping), needed at
    ``objects`` and ``donors``.  ``place``: the object stays where it was (``"own"``) or takes the donor's
    object's place (``"donor"``, :func:`paste_object`).  Returns an
    :class:`ImageSplit` (labels = the object's class, ids ``"<object id>@<donor id>"``, the split's
    normalisation), so it can be evaluated or used to choose a checkpoint like any split.
    """
    if place not in PLACES:
        raise UserError(f"unknown paste place {place!r}; choose {' or '.join(PLACES)}")
    generator = torch.Generator().manual_seed(seed)
    images, labels, ids = [], [], []
    erased: dict[int, torch.Tensor] = {}
    for i in objects:
        label = int(split.labels[i])
        others = [d for d in donors if int(split.labels[d]) != label]
        if not others:
            raise UserError("background swap needs annotated images of at least two classes")
        for p in torch.randperm(len(others), generator=generator)[:per_object].tolist():
            d = others[p]
            if d not in erased:
                erased[d] = erase_object(split.raw(d), masks[d])
            images.append(paste_object(split.raw(i), masks[i], erased[d], grow,
                                       at=masks[d] if place == "donor" else None))
            labels.append(label)
            ids.append(f"{split.ids[i]}@{split.ids[d]}")
    if not images:
        raise UserError("no held-out annotated images for the background-swap test; annotate more images "
                        "or raise --holdout-annotated")
    mean, std = split.mean.flatten().tolist(), split.std.flatten().tolist()
    return ImageSplit(labels, ids, mean, std, images=torch.stack(images))
