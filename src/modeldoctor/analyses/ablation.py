"""Unit deletion and scaling interventions (Kim, Samith, Utama §3.1 and §4.1, Table 1).

Unit deletion: for every unit ``u`` (output channel) of a layer, the accuracy overall and per class with
``u``'s output set to zero, ``Δ_{u,k} = acc_k(model without u) − acc_k(model)``.  ``Δ < 0``: ``u`` helps
class ``k``; ``Δ > 0``: ``u`` hurts it.  The *worst* units are those whose removal raises overall accuracy
most, the *best* those whose removal lowers it most (ties broken by the change in mean cross-entropy).

Batched: each batch runs through the network once, then only the part after the layer is replayed for U
ablated copies at once (:mod:`modeldoctor.core.replay`; skip connections from before the layer are repeated U
times), instead of one full evaluation per unit.

Interventions (Table 1) delete, divide or multiply the outputs or the weights of the k worst / best units;
each is a context manager that restores the model exactly.  Rank on one split (validation by default) and
report interventions on another (test), so units are never chosen on the data that judges them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from modeldoctor.core.device import model_device, to_device
from modeldoctor.core.errors import UserError
from modeldoctor.core.layers import LayerRef, default_layer, replace_output, resolve_layer, sample_shape, train_mode
from modeldoctor.core.outputs import select_logits
from modeldoctor.core.replay import ForwardState, NoiseReplay
from modeldoctor.data.bundle import ImageSplit, make_loader, unpack_batch
from modeldoctor.training import evaluate, predict


@dataclass
class UnitDeletion:
    """Accuracy and loss of the model with each unit of ``layer`` removed, on one split."""

    layer: str
    units: list[int]
    baseline_accuracy: float
    baseline_per_class: torch.Tensor  # (K,)
    baseline_loss: float
    accuracy: torch.Tensor  # (U,) accuracy with unit units[i] removed
    per_class: torch.Tensor  # (U, K)
    loss: torch.Tensor  # (U,) mean cross-entropy with unit units[i] removed
    class_counts: torch.Tensor  # (K,) samples per class

    @property
    def delta(self) -> torch.Tensor:
        """Δ overall accuracy when each unit is removed (positive: the unit hurts)."""
        return self.accuracy - self.baseline_accuracy

    @property
    def delta_per_class(self) -> torch.Tensor:
        """``Δ_{u,k}``, (U, K) (positive: the unit hurts class k)."""
        return self.per_class - self.baseline_per_class

    @property
    def delta_loss(self) -> torch.Tensor:
        return self.loss - self.baseline_loss


def num_units(model: nn.Module, split: ImageSplit, layer: str) -> int:
    """Channels of ``layer``'s output for one sample of ``split``."""
    x, _, _ = unpack_batch(next(iter(make_loader(split, 1))))
    replay = NoiseReplay(model, [layer])
    with torch.no_grad(), train_mode(model, False):
        return int(replay.forward(x).features[layer].shape[1])


def unit_deletion(model: nn.Module, split: ImageSplit, num_classes: int, layer: LayerRef | None = None,
                  units: Sequence[int] | None = None, batch_size: int = 128,
                  max_elements: int = 1 << 24) -> UnitDeletion:
    """Batched unit deletion (§3.1): one pass per batch, then tail replays of up to ``max_elements`` values.

    ``units`` defaults to every channel of the layer (default: the last Conv2d); the model runs in eval
    mode and is left in the mode it had.
    """
    name = resolve_layer(model, layer)[0] if layer is not None else default_layer(model, sample_shape(split))
    replay = NoiseReplay(model, [name])
    totals = _Totals(num_classes)
    with torch.no_grad(), train_mode(model, False):
        for batch in make_loader(split, batch_size):
            x, y, _ = to_device(model_device(model), *unpack_batch(batch))
            state = replay.forward(x)
            feature = state.features[name]
            chosen = _check_units(units, feature.shape[1], name)
            totals.start(len(chosen), y, state.logits)
            per_copy = max(1, max_elements // max(1, feature.numel()))
            for start in range(0, len(chosen), per_copy):
                part = chosen[start:start + per_copy]
                logits = _tail_logits(replay, state, name, _ablated_copies(feature, part), len(part))
                totals.add(start, logits.view(len(part), len(y), -1), y)
    if totals.seen == 0:
        raise UserError("the split is empty; unit deletion needs at least one sample")
    return totals.result(name, chosen)


def unit_deletion_one_at_a_time(model: nn.Module, split: ImageSplit, num_classes: int, layer: LayerRef | None = None,
                                units: Sequence[int] | None = None, batch_size: int = 128) -> UnitDeletion:
    """Reference: one full evaluation per unit under :func:`ablate_units` (the cost the batched version avoids)."""
    name = resolve_layer(model, layer)[0] if layer is not None else default_layer(model, sample_shape(split))
    chosen = _check_units(units, num_units(model, split, name), name)
    logits, labels = predict(model, split, batch_size)
    totals = _Totals(num_classes)
    totals.start(len(chosen), labels, logits)
    for i, unit in enumerate(chosen):
        with ablate_units(model, name, [unit]):
            ablated, _ = predict(model, split, batch_size)
        totals.add(i, ablated.unsqueeze(0), labels)
    return totals.result(name, chosen)


def rank_units(result: UnitDeletion, class_names: Sequence[str], top: int = 5) -> dict[str, Any]:
    """Worst / best units overall, and per class the units that help (Δ < 0) and hurt (Δ > 0) it most."""
    order = worst_units(result)
    units = torch.tensor(result.units)
    per_class = {}
    for k, cname in enumerate(class_names):
        d = result.delta_per_class[:, k]
        helping = [i for i in torch.argsort(d, stable=True).tolist() if d[i] < 0][:top]
        hurting = [i for i in torch.argsort(-d, stable=True).tolist() if d[i] > 0][:top]
        per_class[cname] = {"helping": [{"unit": int(units[i]), "delta": float(d[i])} for i in helping],
                            "hurting": [{"unit": int(units[i]), "delta": float(d[i])} for i in hurting]}

    def entry(i: int) -> dict[str, Any]:
        return {"unit": int(units[i]), "delta": float(result.delta[i]), "delta_loss": float(result.delta_loss[i])}

    return {"worst": [entry(i) for i in order[:top]], "best": [entry(i) for i in reversed(order[-top:])],
            "per_class": per_class}


def worst_units(result: UnitDeletion) -> list[int]:
    """Indices into ``result.units``, worst first: largest Δ accuracy, then largest drop in loss."""
    return sorted(range(len(result.units)), key=lambda i: (-float(result.delta[i]), float(result.delta_loss[i]), i))


@contextlib.contextmanager
def ablate_units(model: nn.Module, layer: LayerRef, units: Sequence[int]) -> Iterator[None]:
    """Temporarily set the outputs of ``units`` (channels) of ``layer`` to zero."""
    with scale_unit_outputs(model, layer, units, 0.0):
        yield


@contextlib.contextmanager
def scale_unit_outputs(model: nn.Module, layer: LayerRef, units: Sequence[int], factor: float) -> Iterator[None]:
    """Temporarily multiply the outputs of ``units`` of ``layer`` by ``factor`` (a forward hook, removed on exit)."""
    index = list(units)

    def scaled(output: torch.Tensor) -> torch.Tensor:
        out = output.clone()
        out[:, index] = 0.0 if factor == 0 else out[:, index] * factor  # 0 * inf would be NaN, not removal
        return out

    with replace_output(model, layer, scaled):
        yield


@contextlib.contextmanager
def scale_unit_weights(model: nn.Module, layer: LayerRef, units: Sequence[int], factor: float) -> Iterator[None]:
    """Temporarily multiply the weight rows of ``units`` (e.g. conv filters ``W[u]``; bias untouched) by ``factor``.

    The original rows are copied back on exit, so the weights are restored bit for bit.
    """
    name, module = resolve_layer(model, layer)
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() == 0:
        raise UserError(f"layer {name!r} ({type(module).__name__}) has no weight to scale; choose a conv layer")
    index = torch.as_tensor(list(units), dtype=torch.long)
    if len(index) and (index.min() < 0 or index.max() >= weight.shape[0]):
        raise UserError(f"unit index out of range for {name!r} with {weight.shape[0]} output channels")
    original = weight.detach()[index].clone()
    with torch.no_grad():
        weight[index] = original * factor
    try:
        yield
    finally:
        with torch.no_grad():
            weight[index] = original


@contextlib.contextmanager
def intervention(model: nn.Module, layer: LayerRef, kind: str, units: Sequence[int], factor: float) -> Iterator[None]:
    """One row of Table 1: ``kind`` is ``none``, ``delete``, ``outputs`` or ``weights`` (scaled by ``factor``)."""
    if kind == "none" or not units:
        yield
    elif kind == "delete":
        with ablate_units(model, layer, units):
            yield
    elif kind == "outputs":
        with scale_unit_outputs(model, layer, units, factor):
            yield
    elif kind == "weights":
        with scale_unit_weights(model, layer, units, factor):
            yield
    else:
        raise UserError(f"unknown intervention {kind!r}; choose none, delete, outputs or weights")


def intervention_table(model: nn.Module, splits: dict[str, ImageSplit], num_classes: int, layer: LayerRef,
                       ranking: UnitDeletion, k: int = 5, constants: Sequence[float] = (2.0, 3.0)
                       ) -> list[dict[str, Any]]:
    """Table 1: accuracy on each split under each intervention on the ``k`` worst / best units of ``ranking``.

    Rows: none; delete worst-k; delete best-k; then for each constant c, the outputs and the weights (when the
    layer has weights) of the worst and of the best units divided and multiplied by c.
    """
    if k < 1 or any(c <= 0 for c in constants):
        raise UserError(f"need k >= 1 and positive constants, got k={k}, c={list(constants)}; e.g. --k 5 --c 2,3")
    order = worst_units(ranking)
    groups = {"worst": [ranking.units[i] for i in order[:k]],
              "best": [ranking.units[i] for i in reversed(order[-k:])]}
    rows = [("none", "-", 1.0, "none"), ("delete", "worst", 0.0, "delete worst-k"),
            ("delete", "best", 0.0, "delete best-k")]
    has_weight = isinstance(getattr(resolve_layer(model, layer)[1], "weight", None), torch.Tensor)
    for c in constants:
        for target in ("worst", "best"):
            for kind in ("outputs", "weights") if has_weight else ("outputs",):
                rows += [(kind, target, 1.0 / c, f"{target} {kind} / {c:g}"), (kind, target, c, f"{target} {kind} x {c:g}")]
    table: list[dict[str, Any]] = []
    for kind, target, factor, label in rows:
        units = groups.get(target, [])
        with intervention(model, layer, kind, units, factor):
            acc = {s: evaluate(model, data, num_classes)["accuracy"] for s, data in splits.items()}
        table.append({"intervention": label, "kind": kind, "target": target, "units": units, "factor": factor,
                      "accuracy": acc})
    for row in table:
        row["delta"] = {s: row["accuracy"][s] - table[0]["accuracy"][s] for s in splits}
    return table


def _tail_logits(replay: NoiseReplay, state: ForwardState, layer: str, flat: torch.Tensor, copies: int) -> torch.Tensor:
    # replay.py's tail replay (skip connections repeated ``copies`` times, or a full batched pass as fallback).
    return replay.replay_tail(state, layer, flat, copies)


def _ablated_copies(feature: torch.Tensor, units: Sequence[int]) -> torch.Tensor:
    """(len(units)·B, C, ...) copies of ``feature``; copy i has channel ``units[i]`` zeroed."""
    n = len(units)
    copies = feature.unsqueeze(0).repeat(n, *([1] * feature.dim()))
    copies[torch.arange(n), :, torch.as_tensor(list(units))] = 0
    return copies.reshape(n * feature.shape[0], *feature.shape[1:])


def _check_units(units: Sequence[int] | None, channels: int, layer: str) -> list[int]:
    chosen = list(range(channels)) if units is None else [int(u) for u in units]
    bad = [u for u in chosen if not 0 <= u < channels]
    if bad or not chosen:
        raise UserError(f"units {bad[:5] or '[]'} do not exist in {layer!r} with {channels} channels; "
                        f"choose indices in 0..{channels - 1}")
    return chosen


class _Totals:
    """Per-unit correct counts per class and summed loss, accumulated over batches."""

    def __init__(self, num_classes: int) -> None:
        self.K = num_classes
        self.correct = torch.zeros(0, num_classes)  # (units, K), sized by the first start()
        self.loss = torch.zeros(0)
        self.base_correct = torch.zeros(num_classes)
        self.base_loss = 0.0
        self.counts = torch.zeros(num_classes)
        self.seen = 0

    def start(self, n_units: int, y: torch.Tensor, logits: torch.Tensor) -> None:
        """Begin a batch: add the unablated model's results for it (totals are kept on the CPU)."""
        y, logits = y.cpu(), select_logits(logits).cpu()
        if not len(self.correct):
            self.correct, self.loss = torch.zeros(n_units, self.K), torch.zeros(n_units)
        onehot = F.one_hot(y, self.K).float()
        logits = select_logits(logits).float()
        self.base_correct += (logits.argmax(1) == y).float() @ onehot
        self.base_loss += F.cross_entropy(logits, y, reduction="sum").item()
        self.counts += onehot.sum(0)
        self.seen += len(y)

    def add(self, offset: int, logits: torch.Tensor, y: torch.Tensor) -> None:
        """``logits`` (n, B, K) for units ``offset .. offset+n`` of the current batch."""
        logits, y = logits.cpu(), y.cpu()
        n = logits.shape[0]
        onehot = F.one_hot(y, self.K).float()
        self.correct[offset:offset + n] += (logits.argmax(2) == y).float() @ onehot
        ce = F.cross_entropy(logits.float().reshape(-1, self.K), y.repeat(n), reduction="none")
        self.loss[offset:offset + n] += ce.view(n, -1).sum(1)

    def result(self, layer: str, units: list[int]) -> UnitDeletion:
        counts = self.counts.clamp_min(1)
        return UnitDeletion(layer, units, float(self.base_correct.sum() / self.seen), self.base_correct / counts,
                            self.base_loss / self.seen, self.correct.sum(1) / self.seen, self.correct / counts,
                            self.loss / self.seen, self.counts)

