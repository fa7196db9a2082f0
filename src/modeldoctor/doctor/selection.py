"""Which training samples the diagnosis aggregates over, and which ones a user should annotate.

One pass over the data scores every sample (prediction, confidence, confidence in the true label) and,
in the same pass, measures each chosen layer's activation scale (root mean square over every element of
every sample), so a noise range relative to that scale does not depend on the batch size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader, Dataset, SequentialSampler

from modeldoctor.core import distributed
from modeldoctor.core.device import autocast, model_device
from modeldoctor.core.errors import UserError
from modeldoctor.core.replay import NoiseReplay
from modeldoctor.data.bundle import batch_loader, unpack_batch

Target = Literal["predicted", "label"]


@dataclass
class SampleScores:
    """Per-sample results of the scoring pass, in data order.

    ``position`` is where the item sits in the dataset (for ``dataset[position]``); ``index`` is the id-like
    index the item reports (its third element), which seeds its noise: equal for our splits, different for
    e.g. one shard of a larger dataset.
    """

    position: torch.Tensor
    index: torch.Tensor
    label: torch.Tensor
    predicted: torch.Tensor
    confidence: torch.Tensor  # softmax probability of the predicted class
    label_confidence: torch.Tensor  # softmax probability of the true class
    feature_rms: dict[str, float] = field(default_factory=dict)
    feature_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    num_classes: int = 0
    input_shape: tuple[int, ...] = ()


def as_dataset(data: Dataset | DataLoader, batch_size: int) -> tuple[Dataset, int]:
    """A split or a DataLoader over one; items must be ``(image, label[, index])`` addressed by position."""
    if isinstance(data, DataLoader):
        if not isinstance(data.sampler, SequentialSampler):
            raise UserError("pass a DataLoader without shuffling or a custom sampler (or the dataset itself): "
                            "chosen samples are re-read by position")
        return data.dataset, data.batch_size or batch_size
    if isinstance(data, Dataset):
        return data, batch_size
    raise UserError(f"data must be a Dataset of (image, label, index) or a DataLoader, got {type(data).__name__}")


def sample_ids(dataset: Dataset, index: Sequence[int]) -> list[str]:
    ids = getattr(dataset, "ids", None)
    return [str(ids[i]) if ids is not None else str(i) for i in index]


@torch.no_grad()
def score_samples(replay: NoiseReplay, data: Dataset | DataLoader, batch_size: int = 128) -> SampleScores:
    """One eval-mode pass: predictions and confidences for every sample, and the RMS of each replay layer.

    RMS_r = sqrt(Σ m_r² / number of elements), summed over the whole data, so it is batch-size independent.
    Under torchrun each rank scores every ``world``-th batch; the scores are gathered (disjoint fills, exact) and
    the per-batch sums of squares are added in batch order, so every rank gets what one process computes.
    """
    dataset, batch_size = as_dataset(data, batch_size)
    if getattr(data, "drop_last", False):
        raise UserError("pass a DataLoader with drop_last=False: every sample must be scored")
    n = len(dataset)  # type: ignore[arg-type]
    if not n:
        raise UserError("the data is empty; pass a split with at least one sample per class")
    batches = [range(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    mine = distributed.shard(list(enumerate(batches)))
    own = isinstance(data, DataLoader) and not distributed.active()
    loader: DataLoader = data if isinstance(data, DataLoader) and own else batch_loader(dataset, [r for _, r in mine])
    device = model_device(replay.model)
    squares = torch.zeros(len(batches), len(replay.layers), dtype=torch.float64)
    keys = ("index", "label", "predicted", "confidence", "label_conf")
    columns = {k: torch.zeros(n, dtype=torch.float32 if "conf" in k else torch.long) for k in keys}
    meta: dict[str, Any] = {}
    for (b, rows), batch in zip(mine, loader):
        x, y, index = unpack_batch(batch)
        position = torch.as_tensor(rows)
        with autocast(device):
            state = replay.forward(x.to(device))
        for j, (name, feature) in enumerate(state.features.items()):
            require_spatial(name, feature)
            squares[b, j] = feature.double().square().sum().cpu()
            meta.setdefault("shapes", {})[name] = tuple(feature.shape[1:])
        prob = state.logits.float().softmax(1).cpu()
        conf, pred = prob.max(1)
        y = torch.as_tensor(y).long()
        columns["index"][position] = position if index is None else torch.as_tensor(index).long()
        columns["label"][position] = y
        columns["predicted"][position] = pred
        columns["confidence"][position] = conf
        columns["label_conf"][position] = prob.gather(1, y.view(-1, 1)).squeeze(1)
        meta.update(num_classes=prob.shape[1], input_shape=tuple(x.shape[1:]))
    meta = distributed.broadcast_object(meta)  # rank 0 scored batch 0
    cat = {k: distributed.all_reduce(v) for k, v in columns.items()}
    squares = distributed.all_reduce(squares)
    rms = {}
    for j, name in enumerate(replay.layers):
        total = torch.zeros((), dtype=torch.float64)
        for b in range(len(batches)):
            total += squares[b, j]
        rms[name] = float((total / max(n * math.prod(meta["shapes"][name]), 1)).sqrt())
    return SampleScores(torch.arange(n), cat["index"], cat["label"], cat["predicted"], cat["confidence"],
                        cat["label_conf"], rms, meta["shapes"], meta["num_classes"], meta["input_shape"])


def require_spatial(layer: str, feature: torch.Tensor) -> None:
    """Eq. 3 sums over a feature map's positions: a layer must output (batch, channels, height, width)."""
    if feature.dim() != 4:
        raise UserError(f"layer {layer!r} outputs shape {tuple(feature.shape)}, not (batch, channels, height, width); "
                        "choose a convolutional layer (`modeldoctor layers` lists them)")


def most_confident(scores: SampleScores, per_class: int, target: Target = "predicted",
                   min_confidence: float | None = None, require_correct: bool = True) -> dict[int, torch.Tensor]:
    """The ``per_class`` most confident samples of each target class (rows of ``scores``, most confident first).

    Grouped by the class whose score is explained (predicted or true); confidence is that class's softmax
    probability; ties break by index so the choice is deterministic.
    """
    cls = scores.predicted if target == "predicted" else scores.label
    conf = ranking_confidence(scores, target)
    keep = torch.ones_like(cls, dtype=torch.bool)
    if require_correct:
        keep &= scores.predicted == scores.label
    if min_confidence is not None:
        keep &= conf >= min_confidence
    chosen = {}
    for c in range(scores.num_classes):
        rows = torch.nonzero(keep & (cls == c)).flatten()
        order = sorted(rows.tolist(), key=lambda r: (-float(conf[r]), int(scores.index[r])))[:per_class]
        chosen[c] = torch.as_tensor(order, dtype=torch.long)
    return chosen


def ranking_confidence(scores: SampleScores, target: Target = "predicted") -> torch.Tensor:
    """The confidence each sample is ranked by: softmax probability of its target class."""
    return scores.confidence if target == "predicted" else scores.label_confidence


def least_confident(scores: SampleScores, per_class: int, class_names: Sequence[str],
                    ids: Sequence[str]) -> dict[str, Any]:
    """The annotate.json document: per true class, the ``per_class`` samples the model trusts least.

    Ranked by the softmax probability of the true label (lowest first): wrong and hesitant predictions
    are where a space-wise constraint (an object mask) can help most.  ``ids[row]`` names each scored sample.
    """
    per = {}
    for c, name in enumerate(class_names):
        rows = torch.nonzero(scores.label == c).flatten().tolist()
        rows.sort(key=lambda r: (float(scores.label_confidence[r]), int(scores.index[r])))
        per[name] = [{"id": ids[r], "confidence": float(scores.label_confidence[r]),
                      "label": int(scores.label[r]), "predicted": int(scores.predicted[r])} for r in rows[:per_class]]
    return {"per_class": per}
