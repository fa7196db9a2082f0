"""Box masks: the bounding box of an exact mask (what a user drawing boxes on the annotate page gives), and how
tight a mask is, estimated from the image alone.

* :func:`box_masks` / :func:`boxes_of` turn exact masks into filled bounding-box masks; :func:`box_rows` gives
  the same boxes as the annotate page's ``boxes.json`` rows (``{"id", "x0", "y0", "x1", "y1"}``, input pixels,
  ``x1`` / ``y1`` exclusive), which :func:`modeldoctor.data.masks.load_boxes` reads back to the same masks.
* :func:`mask_tightness` estimates the **object share of a mask's area** without knowing the object: the share
  of in-mask pixels whose colour is *not* explained by the image just outside the mask.  With in-mask colours a
  mixture ``π · background + (1 − π) · object`` and a ring of ``ring`` pixels around the mask sampling the
  background, the histogram intersection ``Σ_b min(h_in(b), h_ring(b))`` estimates ``π`` (exactly when object and
  background colours fall in different bins); tightness = ``1 − π``.  An exact mask scores near 1; a box scores
  near its object's share of the box (about 0.2–0.3 for an MNIST digit), so a low value says the mask carries
  background — a background cue inside the mask survives any mask-guided treatment.  It errs high where
  background and object share colours, and low where the ring holds colours the in-mask background lacks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from modeldoctor.core.errors import UserError
from modeldoctor.data.bundle import ImageSplit
from modeldoctor.data.masks import LazyMasks, expand_mask


def box_masks(masks: torch.Tensor) -> torch.Tensor:
    """(..., H, W) bool masks → the same shape, each mask replaced by its filled bounding box (empty stays empty)."""
    m = masks.bool()
    rows, cols = m.any(-1), m.any(-2)  # (..., H), (..., W): which rows / columns the object touches
    return (_span(rows).unsqueeze(-1) & _span(cols).unsqueeze(-2)) & m.flatten(-2).any(-1)[..., None, None]


def _span(hit: torch.Tensor) -> torch.Tensor:
    """(..., L) bool → True from the first to the last True along the last axis."""
    after_first = hit.int().cummax(-1).values.bool()
    before_last = hit.flip(-1).int().cummax(-1).values.bool().flip(-1)
    return after_first & before_last


def box_of(mask: torch.Tensor) -> tuple[int, int, int, int] | None:
    """``(x0, y0, x1, y1)`` of one (H, W) mask in pixels, ``x1`` / ``y1`` exclusive; None for an empty mask."""
    ys, xs = torch.nonzero(mask.bool(), as_tuple=True)
    if not len(ys):
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def boxes_of(masks: Mapping[str, torch.Tensor]) -> LazyMasks:
    """``{id: bounding-box mask}`` for every id of ``masks`` (e.g. a family's ``bundle.masks``), each box
    computed when its id is looked up."""
    return LazyMasks(list(masks), lambda sid: box_masks(masks[sid]))


def box_rows(masks: Mapping[str, torch.Tensor]) -> list[dict[str, Any]]:
    """The masks' bounding boxes as ``boxes.json`` rows (empty masks have none)."""
    rows = []
    for sid, mask in masks.items():
        box = box_of(mask)
        if box is not None:
            rows.append({"id": sid, **dict(zip(("x0", "y0", "x1", "y1"), box))})
    return rows


def mask_tightness(images: torch.Tensor, masks: torch.Tensor, ring: int = 2, levels: int = 0) -> torch.Tensor:
    """Estimated object share of each mask's area (module docstring): (N, C, H, W) images in [0, 1] and (N, H, W)
    bool masks → (N,) float in [0, 1]; NaN where a mask is empty or leaves no ring of background around it.

    Colours are quantised to ``levels`` per channel (default 8 for grey, 4 for colour images)."""
    if images.dim() != 4 or masks.shape != (images.shape[0], *images.shape[-2:]):
        raise UserError(f"mask_tightness needs (N, C, H, W) images and (N, H, W) masks, got {tuple(images.shape)} "
                        f"and {tuple(masks.shape)}")
    channels = images.shape[1]
    q = levels or (8 if channels == 1 else 4)
    codes = (images.clamp(0, 1) * q).long().clamp_max(q - 1)
    weights = q ** torch.arange(channels).view(1, -1, 1, 1)
    bins = (codes * weights).sum(1)  # (N, H, W) colour-bin index
    inside = masks.bool()
    around = expand_mask(inside, ring) & ~inside
    out = torch.full((len(images),), float("nan"))
    for i in range(len(images)):
        n_in, n_ring = int(inside[i].sum()), int(around[i].sum())
        if not n_in or not n_ring:
            continue
        h_in = torch.bincount(bins[i][inside[i]], minlength=q ** channels).float() / n_in
        h_ring = torch.bincount(bins[i][around[i]], minlength=q ** channels).float() / n_ring
        out[i] = 1.0 - float(torch.minimum(h_in, h_ring).sum())
    return out


def split_tightness(split: ImageSplit, masks: Mapping[str, torch.Tensor], limit: int = 1000) -> dict[str, float]:
    """:func:`summarise_tightness` of the masks of up to ``limit`` of ``split``'s annotated images, spread
    evenly over the split."""
    ids = [sid for sid in split.ids if sid in masks]
    ids = [ids[i * len(ids) // limit] for i in range(limit)] if len(ids) > limit else ids
    if not ids:
        return {"n": 0}
    images = torch.stack([split.raw(split.index_of[sid]) for sid in ids])
    return summarise_tightness(mask_tightness(images, torch.stack([masks[sid].bool() for sid in ids])))


def summarise_tightness(values: torch.Tensor) -> dict[str, float]:
    """Median and quartiles of per-mask tightness (NaNs ignored) and how many masks had a value."""
    v = values[~values.isnan()].numpy()
    if not len(v):
        return {"n": 0}
    q1, median, q3 = np.quantile(v, [0.25, 0.5, 0.75])
    return {"n": int(len(v)), "median": float(median), "q1": float(q1), "q3": float(q3)}
