"""Border-MNIST: a second shortcut family — a class-coloured frame, and a validation split that carries it too.

Built deterministically from the 5,000 ``mnist5k`` digits (same stratified 3,500 / 500 / 1,000 split): each
28-px white digit sits at a random place inside a ``size``-px RGB canvas (default 40) on a dark noisy
background, framed by a ``width``-px border (default 3) in one of ten colours.

* training *and validation* images: border colour = class colour with probability ``corr`` = 0.9 — as in
  most real projects, the data a user validates on carries the same shortcut as the data they train on;
* test images: colour independent of the label (the shortcut is useless there);
* ``bundle.masks``: the exact digit mask (intensity > 0.25), the coarse annotation ``--masks builtin`` uses.

Spec: ``border-mnist``, ``border-mnist:clean`` (colour independent of the label everywhere: the clean-trained
reference), or ``border-mnist:corr=0.95,size=48,width=4``.
"""

from __future__ import annotations

import numpy as np
import torch

from modeldoctor.core.errors import UserError
from modeldoctor.data.bundle import DataBundle
from modeldoctor.data.digits import digit_bundle, mnist_digits, parse_options, paste_digits

DEFAULTS = {"corr": 0.9, "size": 40.0, "width": 3.0}
SEED = 2026
COLOURS = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.8, 0.1], [0.15, 0.3, 0.95], [0.9, 0.9, 0.1], [0.9, 0.1, 0.9],
                        [0.1, 0.9, 0.9], [0.95, 0.55, 0.1], [0.55, 0.2, 0.8], [0.5, 0.5, 0.5], [0.6, 0.9, 0.4]])


def parse_spec(arg: str) -> tuple[bool, dict[str, float]]:
    """``""`` / ``clean`` / ``key=value,...`` (keys corr, size, width) → (clean, options)."""
    clean, opts = parse_options(arg, DEFAULTS, "border-mnist")
    if not 0 <= opts["corr"] <= 1 or opts["width"] < 1 or opts["size"] < 28 + 2 * opts["width"]:
        raise UserError("border-mnist needs 0 <= corr <= 1, width >= 1 and size >= 28 + 2 * width")
    return clean, opts


def build_images(digit_layer: torch.Tensor, colours: np.ndarray, size: int, width: int,
                 generator: torch.Generator) -> torch.Tensor:
    """(N, 3, size, size) images in [0, 1]: dark noise, a ``width``-px frame in each image's colour, its digit."""
    n = len(digit_layer)
    images = 0.15 * torch.rand(n, 3, size, size, generator=generator)
    frame = torch.ones(size, size, dtype=torch.bool)
    frame[width:size - width, width:size - width] = False
    images = torch.where(frame, COLOURS[torch.from_numpy(colours)].view(n, 3, 1, 1), images)
    return torch.maximum(images, digit_layer.unsqueeze(1))


def load_border_mnist(arg: str, input_size: int | None) -> DataBundle:
    """The second shortcut benchmark; see the module docstring."""
    clean, opts = parse_spec(arg)
    size, width = int(opts["size"]), int(opts["width"])
    digits, labels, parts = mnist_digits()
    n = len(labels)
    rng = np.random.default_rng(SEED)
    offsets = rng.integers(width, size - width - 28 + 1, size=(n, 2))
    agree = rng.random(n) < opts["corr"]
    other = (labels + rng.integers(1, len(COLOURS), n)) % len(COLOURS)
    colours = rng.integers(0, len(COLOURS), n)
    if not clean:
        shortcut = np.concatenate([parts[0], parts[1]])
        colours[shortcut] = np.where(agree[shortcut], labels[shortcut], other[shortcut])
    digit_layer = paste_digits(digits, offsets, size)
    images = build_images(digit_layer, colours, size, width, torch.Generator().manual_seed(SEED))
    return digit_bundle("border-mnist" + (f":{arg}" if arg else ""), images, digit_layer, labels, parts, "bmnist",
                        input_size)
