"""Refining box masks to the object: OpenCV's GrabCut initialised with each box.

A box carries its own background inside it, so a background cue inside the box survives any mask-guided
treatment and the swap meter built from the same boxes over-reports.  :func:`refine_boxes` separates the object
from the in-box background: every pixel outside the box is fixed background, every pixel inside is "probably
object", and GrabCut's colour models (Gaussian mixtures of the in-box and out-of-box colours) and its graph cut
decide which in-box pixels are object.  Where GrabCut finds no object, or cannot run (a box covering the
whole image), the box is kept.  OpenCV is optional (``pip install 'modeldoctor[masks]'``); without it the
boxes come back unchanged with a one-line warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from modeldoctor.core.errors import UserError
from modeldoctor.data.bundle import ImageSplit

MISSING = "box refinement needs OpenCV (pip install 'modeldoctor[masks]'); using the boxes unrefined"


def _cv2() -> Any:
    """The ``cv2`` module, or None where OpenCV is not installed."""
    try:
        import cv2
    except ImportError:
        return None
    return cv2


def refine_boxes(images: torch.Tensor, boxes: torch.Tensor, iterations: int = 5) -> torch.Tensor:
    """(N, C, H, W) images in [0, 1] (C = 1 or 3) and (N, H, W) bool box masks → (N, H, W) bool object masks,
    each a subset of its box (a box where GrabCut finds nothing, or without OpenCV; see the module docstring).

    Deterministic: OpenCV's random generator is re-seeded before each image."""
    if images.dim() != 4 or images.shape[1] not in (1, 3) or boxes.shape != (images.shape[0], *images.shape[-2:]):
        raise UserError(f"refine_boxes needs (N, 1 or 3, H, W) images and (N, H, W) box masks, got "
                        f"{tuple(images.shape)} and {tuple(boxes.shape)}")
    cv2 = _cv2()
    boxes = boxes.bool()
    if cv2 is None:
        warnings.warn(MISSING, UserWarning, stacklevel=2)
        return boxes.clone()
    colour = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1)
    pixels = colour.permute(0, 2, 3, 1).contiguous().numpy()  # (N, H, W, 3), the 8-bit colour image GrabCut takes
    out = boxes.clone()
    for i in range(len(boxes)):
        box = boxes[i].numpy()
        if not box.any() or box.all():
            continue
        mask = np.where(box, cv2.GC_PR_FGD, cv2.GC_BGD).astype(np.uint8)
        cv2.setRNGSeed(0)
        try:
            cv2.grabCut(pixels[i], mask, None, np.zeros((1, 65)), np.zeros((1, 65)), iterations,
                        cv2.GC_INIT_WITH_MASK)
        except cv2.error:
            continue
        found = ((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)) & box
        if found.any():
            out[i] = torch.from_numpy(found)
    return out


def refine_masks(split: ImageSplit, masks: Mapping[str, torch.Tensor], iterations: int = 5,
                 batch: int = 256) -> dict[str, torch.Tensor]:
    """:func:`refine_boxes` over ``{id: box mask}`` for the ids of ``split`` (others are ignored), images read
    from the split ``batch`` at a time; returns ``{id: refined mask}``."""
    ids = [sid for sid in masks if sid in split.index_of]
    out: dict[str, torch.Tensor] = {}
    if _cv2() is None and ids:
        warnings.warn(MISSING, UserWarning, stacklevel=2)
        return {sid: masks[sid].bool() for sid in ids}
    for start in range(0, len(ids), batch):
        chunk = ids[start:start + batch]
        images = torch.stack([split.raw(split.index_of[sid]) for sid in chunk])
        refined = refine_boxes(images, torch.stack([masks[sid].bool() for sid in chunk]), iterations)
        out.update(zip(chunk, refined))
    return out
