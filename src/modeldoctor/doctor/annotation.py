"""The annotated images of a treatment: which to mask, their masks, how they enter batches, which are held out."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from modeldoctor.data.bundle import ImageSplit
from modeldoctor.data.masks import stack_masks
from modeldoctor.training import predict


@dataclass
class MaskBank:
    """Object masks of the annotated training images, addressed by split index.

    Only the masks of the pool are held (one (H, W) bool each), never one per training image."""

    masks: torch.Tensor  # (len(pool), H, W) bool: the mask of pool[i] at row i
    annotated: torch.Tensor  # (N,) bool, N = the split's length
    pool: list[int] = field(default_factory=list)  # indices of annotated images, ascending

    def __post_init__(self) -> None:
        self._row = torch.full((len(self.annotated),), -1, dtype=torch.long)
        self._row[self.pool] = torch.arange(len(self.pool))

    @classmethod
    def build(cls, split: ImageSplit, masks: Mapping[str, torch.Tensor], chosen: Sequence[int], size: int) -> MaskBank:
        """The chosen split indices that have a mask in ``masks`` (each read once)."""
        pool = sorted(i for i in chosen if split.ids[i] in masks)
        stacked, _ = stack_masks(masks, [split.ids[i] for i in pool], size)
        annotated = torch.zeros(len(split), dtype=torch.bool)
        annotated[pool] = True
        return cls(stacked, annotated, pool)

    def lookup(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, H, W) masks (all False where not annotated) and the (B,) annotated flags of split indices."""
        row = self._row[index]
        found = self.masks[row.clamp_min(0)] & (row >= 0).view(-1, 1, 1)
        return found, self.annotated[index]

    def by_index(self) -> dict[int, torch.Tensor]:
        """``{split index: mask}`` over the pool."""
        return {i: self.masks[r] for r, i in enumerate(self.pool)}

    def restricted(self, keep: Sequence[int]) -> MaskBank:
        """The same masks with only ``keep`` (split indices) marked as annotated."""
        pool = sorted({int(i) for i in keep} & set(self.pool))
        annotated = torch.zeros_like(self.annotated)
        annotated[pool] = True
        return MaskBank(self.masks[self._row[pool]], annotated, pool)


def holdout_split(pool: Sequence[int], labels: torch.Tensor, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split the annotated pool per class into (used for training, held out for the background-swap test).

    ``round(fraction · n_c)`` images of each class c are held out (at least one when the class has two or
    more), drawn with ``seed``; the rest train.
    """
    generator = torch.Generator().manual_seed(seed)
    train: list[int] = []
    held: list[int] = []
    for c in sorted({int(labels[i]) for i in pool}):
        rows = [i for i in pool if int(labels[i]) == c]
        k = round(fraction * len(rows))
        if fraction > 0 and len(rows) >= 2:
            k = min(max(k, 1), len(rows) - 1)
        order = torch.randperm(len(rows), generator=generator).tolist()
        held += [rows[p] for p in order[:k]]
        train += [rows[p] for p in order[k:]]
    return sorted(train), sorted(held)


def lowest_confidence(model: nn.Module, split: ImageSplit, candidates: Sequence[str], per_class: int | None,
                      num_classes: int) -> list[int]:
    """Split indices of the ``per_class`` lowest-confidence (probability of the true label) images per class among
    ``candidates`` (ids with masks); ``None`` keeps every candidate.  The paper annotated 20 per class."""
    index = sorted(split.index_of[sid] for sid in candidates if sid in split.index_of)
    if per_class is None:
        return index
    logits, labels = predict(model, split)
    conf = logits.softmax(1).gather(1, labels.view(-1, 1)).squeeze(1)
    chosen: list[int] = []
    for c in range(num_classes):
        rows = [i for i in index if int(labels[i]) == c]
        rows.sort(key=lambda i: (float(conf[i]), i))
        chosen += rows[:per_class]
    return sorted(chosen)


Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def batch_mixer(split: ImageSplit, pool: Sequence[int], per_batch: int, seed: int) -> Callable[..., Batch]:
    """Append ``per_batch`` annotated images to every batch; the draw depends only on (seed, batch indices),
    so a resumed run and the control see exactly the same batches."""
    def mix(x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> Batch:
        if per_batch <= 0 or not pool:
            return x, y, idx
        key = zlib.crc32(idx.cpu().numpy().tobytes()) ^ seed
        picks = torch.randint(len(pool), (per_batch,), generator=torch.Generator().manual_seed(key))
        extra = [split[pool[int(p)]] for p in picks]
        return (torch.cat([x, torch.stack([e[0] for e in extra]).to(x.device)]),
                torch.cat([y, torch.tensor([e[1] for e in extra], device=y.device)]),
                torch.cat([idx, torch.tensor([e[2] for e in extra], device=idx.device)]))
    return mix
