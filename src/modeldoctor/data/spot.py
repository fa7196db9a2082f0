"""Spot-MNIST: a shortcut in one place of the background — a small class symbol beside the digit.

Built deterministically from the 5,000 ``mnist5k`` digits (same stratified 3,500 / 500 / 1,000 split): each
28-px digit sits on a ``size``-px grey canvas (default 48) of dark noise (at most 0.15), and one of ten
``glyph``-px symbols (default 12: hollow square, plus, cross, ring, triangle, horizontal bars, vertical bars,
diamond, checker, disk) of intensity ``amp`` (default 1) is drawn at a random place beside the digit's 28-px
square, never touching it (one pixel apart at least).

* training *and validation* images: symbol = class symbol with probability ``corr`` = 0.9, as in border-mnist;
* test images: symbol independent of the label;
* ``bundle.masks``: the exact digit mask (intensity > 0.25); the symbol is background, outside even the
  digit's bounding box, so box masks hide no part of this cue.

Spec: ``spot-mnist``, ``spot-mnist:clean`` (symbol independent of the label everywhere: the clean-trained
reference), ``spot-mnist:boxes`` (bounding boxes as masks), or ``spot-mnist:corr=0.95,glyph=8,amp=0.6,size=56``.
"""

from __future__ import annotations

import numpy as np
import torch

from modeldoctor.core.errors import UserError
from modeldoctor.data.bundle import DataBundle
from modeldoctor.data.digits import class_cues, digit_bundle, mnist_digits, parse_options, paste_digits

DEFAULTS = {"corr": 0.9, "size": 48.0, "glyph": 12.0, "amp": 1.0}
SEED = 2028
NUM_KINDS = 10
NOISE = 0.15


def glyph(kind: int, side: int) -> torch.Tensor:
    """Symbol ``kind`` (0–9) as a (side, side) {0, 1} float image."""
    c = (torch.arange(side, dtype=torch.float32) - (side - 1) / 2) / (side / 2)  # pixel centres in (−1, 1)
    v, u = torch.meshgrid(c, c, indexing="ij")
    r = (u ** 2 + v ** 2).sqrt()
    band = lambda t: torch.floor((t + 1) * 2).long() % 2 == 0  # two stripes across the symbol
    shapes = [
        torch.maximum(u.abs(), v.abs()) > 0.55,  # hollow square
        torch.minimum(u.abs(), v.abs()) < 0.3,  # plus
        (u.abs() - v.abs()).abs() < 0.3,  # cross
        (r > 0.45) & (r < 0.95),  # ring
        u.abs() <= (v + 1) / 2,  # triangle, point up
        band(v),  # horizontal bars
        band(u),  # vertical bars
        u.abs() + v.abs() < 0.9,  # diamond
        band(u) ^ band(v),  # checker
        r < 0.55,  # disk
    ]
    return shapes[kind].float()


def parse_spec(arg: str) -> tuple[bool, dict[str, float]]:
    """``""`` / ``clean`` / ``boxes`` / ``key=value,...`` (keys corr, size, glyph, amp) → (clean, options)."""
    clean, opts = parse_options(arg, DEFAULTS, "spot-mnist")
    if not 0 <= opts["corr"] <= 1 or not 0 < opts["amp"] <= 1 or opts["glyph"] < 3 \
            or opts["size"] < 28 + opts["glyph"] + 1:
        raise UserError("spot-mnist needs 0 <= corr <= 1, 0 < amp <= 1, glyph >= 3 and size >= 29 + glyph")
    return clean, opts


def placements(rng: np.random.Generator, n: int, size: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """(digit offsets, symbol offsets), each (n, 2) (row, col): the symbol lies on a random side of the
    digit's 28-px square (above, below, left or right), at least one pixel from it."""
    room = size - 28  # the digit's free travel along each axis
    digit = rng.integers(0, room + 1, size=(n, 2))
    spot = np.zeros((n, 2), dtype=np.int64)
    where = rng.integers(0, 4, n)  # 0 above, 1 below, 2 left, 3 right
    free = rng.random((n, 3))
    for i in range(n):
        axis, before = int(where[i]) // 2, where[i] % 2 == 0  # axis 0: rows, 1: columns
        lo_gap = int(free[i, 0] * (room - side)) + side + 1  # digit offset along the axis leaving room for the symbol
        digit[i, axis] = lo_gap if before else room - lo_gap
        start = digit[i, axis]
        span = (0, start - side - 1) if before else (start + 29, size - side)
        spot[i, axis] = span[0] + int(free[i, 1] * (span[1] - span[0] + 1))
        spot[i, 1 - axis] = int(free[i, 2] * (size - side + 1))
    return digit, spot


def build_images(digit_layer: torch.Tensor, kinds: np.ndarray, spots: np.ndarray, side: int, amp: float,
                 generator: torch.Generator) -> torch.Tensor:
    """(N, 1, size, size) images in [0, 1]: dark noise, each image's symbol at its place, its digit (max of all)."""
    n, size, _ = digit_layer.shape
    canvas = NOISE * torch.rand(n, size, size, generator=generator)
    symbols = torch.stack([amp * glyph(k, side) for k in range(NUM_KINDS)])
    for i in range(n):
        r, c = int(spots[i, 0]), int(spots[i, 1])
        canvas[i, r:r + side, c:c + side] = torch.maximum(canvas[i, r:r + side, c:c + side], symbols[kinds[i]])
    return torch.maximum(canvas, digit_layer).unsqueeze(1)


def load_spot_mnist(arg: str, input_size: int | None) -> DataBundle:
    """The local background-symbol family; see the module docstring."""
    clean, opts = parse_spec(arg)
    size, side = int(opts["size"]), int(opts["glyph"])
    digits, labels, parts = mnist_digits()
    rng = np.random.default_rng(SEED)
    offsets, spots = placements(rng, len(labels), size, side)
    kinds = class_cues(rng, labels, parts, opts["corr"], clean, NUM_KINDS)
    digit_layer = paste_digits(digits, offsets, size)
    images = build_images(digit_layer, kinds, spots, side, opts["amp"], torch.Generator().manual_seed(SEED))
    return digit_bundle("spot-mnist" + (f":{arg}" if arg else ""), images, digit_layer, labels, parts, "pmnist",
                        input_size)
