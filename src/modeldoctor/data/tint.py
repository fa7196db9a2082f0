"""Tint-MNIST: a shortcut *on the object* — each digit's stroke is coloured, and the colour predicts the class.

Built deterministically from the 5,000 ``mnist5k`` digits (same stratified 3,500 / 500 / 1,000 split): each
28-px digit sits at a random place on a ``size``-px RGB canvas (default 40) of neutral grey noise (the same
value in every channel, at most 0.15); its stroke is drawn in one of ten hues (pixel = digit intensity × hue).

* training *and validation* images: hue = class hue with probability ``corr`` = 0.9, as in border-mnist;
* test images: hue independent of the label;
* ``bundle.masks``: the exact digit mask (intensity > 0.25) — which contains the cue.  Object masks cannot
  separate this shortcut from the object, and backgrounds carry no class information: the honest diagnosis is
  "not a background shortcut", and a background treatment must not make the model worse.

Spec: ``tint-mnist``, ``tint-mnist:clean`` (hue independent of the label everywhere: the clean-trained
reference), ``tint-mnist:boxes`` (bounding boxes as masks), or ``tint-mnist:corr=0.95,size=48``.
"""

from __future__ import annotations

import colorsys

import numpy as np
import torch

from modeldoctor.core.errors import UserError
from modeldoctor.data.bundle import DataBundle
from modeldoctor.data.digits import class_cues, digit_bundle, mnist_digits, parse_options, paste_digits

DEFAULTS = {"corr": 0.9, "size": 40.0}
SEED = 2027
HUES = torch.tensor([colorsys.hsv_to_rgb(k / 10, 0.85, 1.0) for k in range(10)], dtype=torch.float32)  # (10, 3)
NOISE = 0.15


def parse_spec(arg: str) -> tuple[bool, dict[str, float]]:
    """``""`` / ``clean`` / ``boxes`` / ``key=value,...`` (keys corr, size) → (clean, options)."""
    clean, opts = parse_options(arg, DEFAULTS, "tint-mnist")
    if not 0 <= opts["corr"] <= 1 or opts["size"] < 28:
        raise UserError("tint-mnist needs 0 <= corr <= 1 and size >= 28")
    return clean, opts


def build_images(digit_layer: torch.Tensor, hues: np.ndarray, generator: torch.Generator) -> torch.Tensor:
    """(N, 3, size, size) images in [0, 1]: grey noise, and each digit drawn in its hue (max of the two)."""
    n, size, _ = digit_layer.shape
    background = NOISE * torch.rand(n, 1, size, size, generator=generator).expand(n, 3, size, size)
    stroke = digit_layer.unsqueeze(1) * HUES[torch.from_numpy(hues)].view(n, 3, 1, 1)
    return torch.maximum(background, stroke)


def placements(labels: np.ndarray, parts: list[np.ndarray], clean: bool,
               opts: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """Each digit's (row, col) offset on the canvas and its hue index (class hue with probability ``corr``)."""
    size = int(opts["size"])
    rng = np.random.default_rng(SEED)
    offsets = rng.integers(0, size - 28 + 1, size=(len(labels), 2))
    return offsets, class_cues(rng, labels, parts, opts["corr"], clean, len(HUES))


def load_tint_mnist(arg: str, input_size: int | None) -> DataBundle:
    """The on-object shortcut family; see the module docstring."""
    clean, opts = parse_spec(arg)
    size = int(opts["size"])
    digits, labels, parts = mnist_digits()
    offsets, hues = placements(labels, parts, clean, opts)
    digit_layer = paste_digits(digits, offsets, size)
    images = build_images(digit_layer, hues, torch.Generator().manual_seed(SEED))
    return digit_bundle("tint-mnist" + (f":{arg}" if arg else ""), images, digit_layer, labels, parts, "tmnist",
                        input_size)
