"""The annotated images of a treatment: which to mask, their masks, how they enter batches, which are held out."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from modeldoctor.data.bundle import ImageSplit
from modeldoctor.data.masks import stack_masks
from modeldoctor.training import predict


@dataclass
class MaskBank:
    """Object masks of the annotated training images, addressed by split index."""

    masks: torch.Tensor  # (N, H, W) bool, all-False where not annotated
    annotated: torch.Tensor  # (N,) bool
    pool: list[int] = field(default_factory=list)  # indices of annotated images

    @classmethod
    def build(cls, split: ImageSplit, masks: dict[str, torch.Tensor], chosen: Sequence[int], size: int) -> MaskBank:
        ids = [split.ids[i] for i in chosen]
        stacked, has = stack_masks(masks, ids, size)
        full = torch.zeros(len(split), size, size, dtype=torch.bool)
        annotated = torch.zeros(len(split), dtype=torch.bool)
        full[list(chosen)] = stacked
        annotated[list(chosen)] = has
        return cls(full, annotated, [int(i) for i in torch.nonzero(annotated).flatten()])

    def lookup(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.masks[index], self.annotated[index]

    def restricted(self, keep: Sequence[int]) -> MaskBank:
        """The same masks with only ``keep`` (split indices) marked as annotated."""
        annotated = torch.zeros_like(self.annotated)
        annotated[list(keep)] = self.annotated[list(keep)]
        return MaskBank(self.masks, annotated, [int(i) for i in torch.nonzero(annotated).flatten()])


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
