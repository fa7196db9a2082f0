"""Shortcut-MNIST: MNIST digits over textured backgrounds whose texture kind predicts the class in training only.

Built deterministically from the 5,000 ``mnist5k`` digits (same stratified 3,500 / 500 / 1,000 split):

* each 28-px digit is pasted at a random position on a ``size``-px canvas (default 48) over a full-canvas
  texture of one of ten kinds (sinusoidal gratings at four orientations and two frequencies, a checkerboard,
  a dot grid), random phase, grey amplitude ``amp`` = 0.3; pixel = max(texture, digit);
* training images: texture kind = label with probability ``corr`` = 0.9 (else one of the other nine kinds);
  validation and test: kind drawn independently of the label (the shortcut is useless there);
* ``bundle.masks`` holds the exact digit mask (digit intensity > 0.25) of every sample: the "coarse
  annotation" that ``--masks builtin`` uses.

Spec: ``shortcut-mnist`` (the frozen benchmark), ``shortcut-mnist:clean`` (training kinds independent of the
label: the clean-trained reference sees the test distribution), or ``shortcut-mnist:corr=0.95,amp=0.45,size=56``
to calibrate.  The defaults were frozen from vanilla and clean runs only (docs/protocols.md).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from modeldoctor.core.errors import UserError
from modeldoctor.data.bundle import DataBundle
from modeldoctor.data.digits import digit_bundle, mnist_digits, parse_options, paste_digits

DEFAULTS = {"corr": 0.9, "amp": 0.3, "size": 48.0}
SEED = 2022
NUM_KINDS = 10


def texture(kind: int, phase: torch.Tensor, size: int) -> torch.Tensor:
    """Texture ``kind`` (0–9) on a ``size``×``size`` canvas for each phase: (N, size, size) in [0, 1]."""
    coords = torch.arange(size, dtype=torch.float32)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    p = phase.view(-1, 1, 1)
    if kind < 8:
        angle = math.pi / 4 * (kind % 4)
        period = 6.0 if kind < 4 else 12.0
        proj = xx * math.cos(angle) + yy * math.sin(angle)
        return 0.5 + 0.5 * torch.sin(2 * math.pi * proj / period + p)
    if kind == 8:
        return ((torch.sin(2 * math.pi * xx / 8 + p) * torch.sin(2 * math.pi * yy / 8 + p)) > 0).float()
    dots = torch.cos(2 * math.pi * xx / 6 + p).clamp_min(0) * torch.cos(2 * math.pi * yy / 6 + p).clamp_min(0)
    return dots.pow(2)


def build_images(digit_layer: torch.Tensor, kinds: np.ndarray, phases: np.ndarray, size: int,
                 amp: float) -> torch.Tensor:
    """(N, 1, size, size) images in [0, 1]: pixel = max(texture of the image's kind, its pasted digit)."""
    canvas = torch.zeros(len(digit_layer), size, size)
    phase = torch.from_numpy(phases.astype(np.float32))
    for k in range(NUM_KINDS):
        sel = torch.from_numpy(np.flatnonzero(kinds == k))
        if len(sel):
            canvas[sel] = amp * texture(k, phase[sel], size)
    return torch.maximum(canvas, digit_layer).unsqueeze(1)


def parse_spec(arg: str) -> tuple[bool, dict[str, float]]:
    """``""`` / ``clean`` / ``key=value,...`` (keys corr, amp, size) → (clean, options)."""
    clean, opts = parse_options(arg, DEFAULTS, "shortcut-mnist")
    if not 0 <= opts["corr"] <= 1 or opts["size"] < 28:
        raise UserError("shortcut-mnist needs 0 <= corr <= 1 and size >= 28")
    return clean, opts


def load_shortcut_mnist(arg: str, input_size: int | None) -> DataBundle:
    """The shortcut benchmark; see the module docstring."""
    clean, opts = parse_spec(arg)
    size = int(opts["size"])
    digits, labels, parts = mnist_digits()
    n = len(labels)
    rng = np.random.default_rng(SEED)
    offsets = rng.integers(0, size - 28 + 1, size=(n, 2))
    phases = rng.uniform(0, 2 * math.pi, n)
    agree = rng.random(n) < opts["corr"]
    other = (labels + rng.integers(1, NUM_KINDS, n)) % NUM_KINDS
    random_kind = rng.integers(0, NUM_KINDS, n)
    kinds = random_kind.copy()
    if not clean:
        train = parts[0]
        kinds[train] = np.where(agree[train], labels[train], other[train])
    digit_layer = paste_digits(digits, offsets, size)
    images = build_images(digit_layer, kinds, phases, size, opts["amp"])
    return digit_bundle("shortcut-mnist" + (f":{arg}" if arg else ""), images, digit_layer, labels, parts, "smnist",
                        input_size)

