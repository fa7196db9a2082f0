"""Background swap: a shortcut test that needs no decorrelated data, only a few object masks.

Each held-out annotated image's object (its mask grown by ``grow`` pixels) is pasted onto the background of
an annotated image of *another* class, whose own object is first erased (filled from the same image shifted
inward from the surrounding background, so no trace of the donor's class object and no seam is left).  A model that reads the
object keeps its prediction; a model that reads the background follows the donor's class.  Accuracy on these
composites is therefore a shortcut meter that uses only the user's masks, never test data.
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

    The hole is filled inward, ring by ring, with the mean of the already-known 3×3 neighbours (a diffusion
    inpainting): smooth, free of the object, and built only from this image's own background.
    """
    hole = expand_mask(mask, grow)
    if hole.all():
        raise UserError("an object mask covers the whole image, so it has no background to swap; "
                        "give coarse masks of the object only")
    known = (~hole).to(image.dtype).unsqueeze(0)
    filled = image * known
    while bool((known == 0).any()):
        total = F.avg_pool2d(filled.unsqueeze(0), 3, stride=1, padding=1)[0]
        weight = F.avg_pool2d(known.unsqueeze(0), 3, stride=1, padding=1)[0]
        reached = (weight > 0) & (known == 0)
        filled = torch.where(reached, total / weight.clamp_min(1e-12), filled)
        known = torch.where(reached, torch.ones_like(known), known)
    return torch.where(hole.unsqueeze(0), filled, image)


def background_swap(split: ImageSplit, masks: torch.Tensor | Mapping[int, torch.Tensor], objects: Sequence[int],
                    donors: Sequence[int], per_object: int = 3, seed: int = 0, grow: int = 1) -> ImageSplit:
    """Composites of each ``objects`` image (split indices) on ``per_object`` donors of other classes.

    ``masks``: bool (H, W) object masks by split index (a (len(split), H, W) tensor or a mapping), needed at
    ``objects`` and ``donors``.  Returns an
    :class:`ImageSplit` (labels = the object's class, ids ``"<object id>@<donor id>"``, the split's
    normalisation), so it can be evaluated or used to choose a checkpoint like any split.
    """
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
            keep = expand_mask(masks[i], grow).unsqueeze(0)
            images.append(torch.where(keep, split.raw(i), erased[d]))
            labels.append(label)
            ids.append(f"{split.ids[i]}@{split.ids[d]}")
    if not images:
        raise UserError("no held-out annotated images for the background-swap test; annotate more images "
                        "or raise --holdout-annotated")
    mean, std = split.mean.flatten().tolist(), split.std.flatten().tolist()
    return ImageSplit(labels, ids, mean, std, images=torch.stack(images))
