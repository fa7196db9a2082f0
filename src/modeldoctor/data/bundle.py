"""A data set: splits, bundles, loaders and batches.

Every dataset item is ``(image, label, index)``: ``index`` points into the split's ``ids``, so masks and
per-sample results attach to a stable id.  Images are normalised with the statistics the bundle records
(and the checkpoint stores); ``raw(i)`` gives the un-normalised image in [0, 1] for figures and masks.
Images are held as float in [0, 1] or as uint8 (converted, and resized, one item at a time: no float copy of
the data set), or decoded from files on demand; ``make_loader`` decodes in ``loader_workers`` processes.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from modeldoctor.core.errors import UserError

SPLIT_SEED = 1234  # fixed: the split never depends on the training seed
_workers: contextvars.ContextVar[int] = contextvars.ContextVar("modeldoctor_loader_workers", default=0)


@contextlib.contextmanager
def loader_workers(count: int) -> Iterator[None]:
    """Within the block, :func:`make_loader` decodes images in ``count`` worker processes (``--workers``)."""
    token = _workers.set(max(0, int(count)))
    try:
        yield
    finally:
        _workers.reset(token)


class ImageSplit(Dataset):
    """One split: images in memory (N, C, H, W) as float in [0, 1] or uint8 in [0, 255], or loaded from files.

    ``size``: uint8 images are resized to ``size`` × ``size`` per item (bilinear, as :func:`resize_images`)."""

    def __init__(self, labels: Sequence[int], ids: Sequence[str], mean: Sequence[float], std: Sequence[float],
                 images: torch.Tensor | None = None, loader: Callable[[int], torch.Tensor] | None = None,
                 size: int | None = None) -> None:
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.ids = list(ids)
        self.images, self._loader, self.size = images, loader, size
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)
        self.index_of = {sid: i for i, sid in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def raw(self, i: int) -> torch.Tensor:
        if self.images is not None:
            image = self.images[i]
            if image.dtype != torch.uint8:
                return image
            image = image.float() / 255.0
            return image if self.size is None else resize_images(image.unsqueeze(0), self.size)[0]
        assert self._loader is not None  # the constructor takes images or a loader
        return self._loader(i)

    def subset(self, rows: Sequence[int]) -> ImageSplit:
        """The split restricted to ``rows`` (same normalisation; ids kept, indices renumbered)."""
        rows = [int(r) for r in rows]
        images = self.images[rows] if self.images is not None else None
        loader = None if self.images is not None else functools.partial(_load_row, self, rows)
        return ImageSplit(self.labels[rows].tolist(), [self.ids[r] for r in rows], self.mean.flatten().tolist(),
                          self.std.flatten().tolist(), images=images, loader=loader, size=self.size)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        return (self.raw(i) - self.mean) / self.std, int(self.labels[i]), i


def _load_row(split: ImageSplit, rows: list[int], i: int) -> torch.Tensor:
    return split.raw(rows[i])


@dataclass
class DataBundle:
    """A dataset with its fixed splits and what a checkpoint must remember about it."""

    spec: str
    class_names: list[str]
    in_channels: int
    input_size: int
    mean: list[float]
    std: list[float]
    train: ImageSplit
    val: ImageSplit
    test: ImageSplit
    masks: dict[str, torch.Tensor] = field(default_factory=dict)  # builtin object masks by sample id

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def split(self, name: str) -> ImageSplit:
        if name not in ("train", "val", "test"):
            raise UserError(f"unknown split {name!r}; choose train, val or test")
        return getattr(self, name)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of every image."""
        return (self.in_channels, self.input_size, self.input_size)

    def set_normalisation(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Normalise every split with ``mean`` / ``std`` (one value, or one per channel) instead of its own."""
        if len(mean) not in (1, self.in_channels) or len(std) not in (1, self.in_channels) or min(std) <= 0:
            raise UserError(f"mean/std need 1 or {self.in_channels} values with std > 0, got {list(mean)} / {list(std)}")
        mean = list(mean) * (self.in_channels // len(mean))
        std = list(std) * (self.in_channels // len(std))
        for split in (self.train, self.val, self.test):
            split.mean = split.mean.new_tensor(mean).view(-1, 1, 1)
            split.std = split.std.new_tensor(std).view(-1, 1, 1)
        self.mean, self.std = mean, std

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.train.mean) / self.train.std


def make_loader(split: Dataset, batch_size: int = 128, shuffle: bool = False, seed: int = 0,
                drop_last: bool = False) -> DataLoader:
    """A DataLoader whose order depends only on ``seed`` (reproducible runs, matched controls), decoding in
    :func:`loader_workers` processes."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(split, batch_size=batch_size, shuffle=shuffle, generator=generator, drop_last=drop_last,
                      **worker_options())


def batch_loader(split: Dataset, batches: Sequence[Sequence[int]]) -> DataLoader:
    """A DataLoader over exactly ``batches`` (lists of positions), e.g. one rank's share of a split's batches."""
    return DataLoader(split, batch_sampler=[list(b) for b in batches], **worker_options())


def worker_options() -> dict[str, Any]:
    """DataLoader keyword arguments for the current :func:`loader_workers` setting."""
    count = _workers.get()
    return {"num_workers": count, "persistent_workers": False} | ({"prefetch_factor": 2} if count else {})


def unpack_batch(batch: Sequence) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(x, y)`` or ``(x, y, index)`` batches, so users' own loaders work too."""
    if len(batch) == 3:
        return batch[0], batch[1], batch[2]
    if len(batch) == 2:
        return batch[0], batch[1], None
    raise UserError(f"a batch must be (images, labels) or (images, labels, index), got {len(batch)} items")


def stratified_split(labels: np.ndarray, sizes: Sequence[int | float], seed: int = SPLIT_SEED) -> list[np.ndarray]:
    """Split indices per class in the given proportions (ints are totals, floats fractions), seeded."""
    n = len(labels)
    fractions = [s / n if isinstance(s, int) else s for s in sizes]
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in sizes]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        bounds = np.round(np.cumsum([0] + fractions) * len(idx)).astype(int)
        for p in range(len(sizes)):
            parts[p].extend(idx[bounds[p]:bounds[p + 1]].tolist())
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def channel_statistics(images: torch.Tensor, rows: np.ndarray, size: int | None = None,
                       chunk: int = 2048) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation (≥ 1e-3) of uint8 ``images[rows]`` scaled to [0, 1], in float64
    chunks so the data set is never copied to float whole; ``size`` resizes the images first."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    count = 0
    for start in range(0, len(rows), chunk):
        part = images[rows[start:start + chunk]].float() / 255.0
        part = (part if size is None else resize_images(part, size)).double()
        total += part.sum(dim=(0, 2, 3))
        squares += part.square().sum(dim=(0, 2, 3))
        count += part.numel() // part.shape[1]
    mean = total / max(count, 1)
    var = (squares - count * mean.square()) / max(count - 1, 1)
    return mean.tolist(), var.clamp_min(0).sqrt().clamp_min(1e-3).tolist()


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)


def bundle_from_tensors(spec: str, images: torch.Tensor, labels: np.ndarray, ids: Sequence[str],
                        class_names: list[str], parts: list[np.ndarray], input_size: int | None,
                        masks: dict[str, torch.Tensor] | None = None) -> DataBundle:
    """Build a bundle from in-memory images in [0, 1] and index arrays for train / val / test."""
    for split_name, part in zip(("train", "val", "test"), parts):
        if not len(part):
            raise UserError(f"the {split_name} split of {spec} is empty; the dataset has too few images per class")
    size = input_size or images.shape[-1]
    lazy = images.dtype == torch.uint8  # kept as uint8, converted and resized one item at a time
    if lazy:
        mean, std = channel_statistics(images, parts[0], size)
    else:
        images = resize_images(images, size)
        mean = images[parts[0]].mean(dim=(0, 2, 3)).tolist()
        std = images[parts[0]].std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
    splits = [ImageSplit(labels[p], [ids[i] for i in p], mean, std, images=images[p], size=size if lazy else None)
              for p in parts]
    return DataBundle(spec, class_names, images.shape[1], size, mean, std, splits[0], splits[1], splits[2],
                      masks=masks or {})
