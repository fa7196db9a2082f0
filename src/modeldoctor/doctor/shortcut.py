"""The shortcut check on the model alone: does it read the object or the background, and for which classes?

Objects and backgrounds come from *different* masked images (:func:`modeldoctor.data.swap.background_swap`):
each chosen object (its mask grown by 1 px) is pasted on ``per_object`` erased backgrounds of other classes.  The
reference is the same object on its *own* background erased and restored by the same pipeline
(:func:`~modeldoctor.data.swap.erase_object`), so the comparison isolates the background; validation accuracy
is no reference (a user's validation split may carry the shortcut too).

Per composite c (object i of class a on the background of donor class b):
``follow_c = 1[pred(c) = b]`` and ``own_c = 1[pred(restored i) = b]`` (how often the same object on its own
background is called b anyway).  The donor-follow share is ``F = mean_c follow_c``, its no-shortcut level
``O = mean_c own_c``, the excess ``D = F − O`` with a cluster-robust standard error over objects
``se = sqrt(n/(n−1) · Σ_i (Σ_{c∈i} (follow_c − own_c) − N_i D)²) / N``.  Verdict: **reads the background** when
the 95% lower bound ``D − 1.96 se`` exceeds ``margin`` (default 5 points), otherwise **not detectably** (with the
95% upper bound on D).  The probability drop per object is ``p_a(restored i) − mean_{c∈i} p_a(c)``.

Mask tightness: box masks carry background inside the box, which travels with the object into every composite,
so a box-mask verdict understates background reading (a lower bound); the fill of each mask's bounding box
(area / box area; 1 for a box) says how tight the masks are.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from modeldoctor.core.errors import UserError
from modeldoctor.core.layers import train_mode
from modeldoctor.data.bundle import ImageSplit
from modeldoctor.data.masks import expand_mask
from modeldoctor.data.swap import background_swap, erase_object
from modeldoctor.doctor.reliance import class_means, finite_mean, reliance_shares
from modeldoctor.training import predict

MARGIN = 0.05  # an excess donor-follow share below this is not called a shortcut
Z95 = 1.959964
BOX_FILL = 0.95  # a mask filling ≥ 95% of its bounding box is counted as a box


@dataclass
class SwapSet:
    """Composites and own-background references of chosen masked images, built once for any number of models."""

    split: ImageSplit  # the split the objects come from
    objects: list[int]  # split indices of the objects
    masks: torch.Tensor  # (n, H, W) bool, the objects' masks
    composites: ImageSplit  # background_swap output, labels = object class
    restored: ImageSplit  # one per object: the object on its own erased-and-restored background
    object_row: torch.Tensor  # (N,) row into ``objects`` of each composite
    donor_class: torch.Tensor  # (N,) class of each composite's background donor

    @property
    def labels(self) -> torch.Tensor:
        return self.split.labels[self.objects]


def choose_objects(split: ImageSplit, masks: Mapping[str, torch.Tensor], per_class: int, seed: int = 0) -> list[int]:
    """Up to ``per_class`` masked images per class (seeded draw), skipping empty and whole-image masks."""
    generator = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[int]] = {}
    for sid in masks:
        if sid in split.index_of:
            i = split.index_of[sid]
            by_class.setdefault(int(split.labels[i]), []).append(i)
    chosen: list[int] = []
    for c in sorted(by_class):
        rows = sorted(by_class[c])
        kept = 0
        for p in torch.randperm(len(rows), generator=generator).tolist():
            m = masks[split.ids[rows[p]]]
            if kept >= per_class:
                break
            if bool(m.any()) and not bool(expand_mask(m.bool(), 2).all()):
                chosen.append(rows[p])
                kept += 1
    if len({int(split.labels[i]) for i in chosen}) < 2:
        raise UserError("the shortcut check needs usable object masks of at least two classes; mask images of more "
                        "classes (modeldoctor annotate)")
    return sorted(chosen)


def build_swap_set(split: ImageSplit, masks: Mapping[str, torch.Tensor], per_class: int = 20, per_object: int = 3,
                   seed: int = 0) -> SwapSet:
    """The composites of :func:`choose_objects` images on each other's backgrounds, and their references."""
    objects = choose_objects(split, masks, per_class, seed)
    stacked = torch.stack([masks[split.ids[i]].bool() for i in objects])
    by_index = {i: stacked[r] for r, i in enumerate(objects)}
    composites = background_swap(split, by_index, objects, objects, per_object=per_object, seed=seed)
    restored = [torch.where(expand_mask(by_index[i], 1).unsqueeze(0), split.raw(i), erase_object(split.raw(i), by_index[i]))
                for i in objects]
    mean, std = split.mean.flatten().tolist(), split.std.flatten().tolist()
    own = ImageSplit(split.labels[objects].tolist(), [split.ids[i] for i in objects], mean, std,
                     images=torch.stack(restored))
    row_of = {split.ids[i]: r for r, i in enumerate(objects)}
    rows, donors = [], []
    for cid in composites.ids:  # "<object id>@<donor id>"; ids may hold "@" themselves, so match a known object id
        obj = next(sid for sid in _prefixes(cid) if sid in row_of)
        rows.append(row_of[obj])
        donors.append(int(split.labels[split.index_of[cid[len(obj) + 1:]]]))
    return SwapSet(split, objects, stacked, composites, own, torch.tensor(rows), torch.tensor(donors))


def _prefixes(cid: str) -> list[str]:
    cuts = [k for k, ch in enumerate(cid) if ch == "@"]
    return [cid[:k] for k in cuts]


def mask_tightness(masks: torch.Tensor) -> dict[str, Any]:
    """Mean object area (share of the image), mean fill of the bounding box, share of box-shaped masks, and a note."""
    area = masks.flatten(1).float().mean(1)
    fill = []
    for m in masks:
        rows, cols = m.any(1).nonzero(), m.any(0).nonzero()
        box = (int(rows.max()) - int(rows.min()) + 1) * (int(cols.max()) - int(cols.min()) + 1)
        fill.append(float(m.sum()) / box)
    fills = torch.tensor(fill)
    boxes = float((fills >= BOX_FILL).float().mean())
    note = ("box-shaped masks: the background inside each box travels with the object, so the composites understate "
            "background reading (the verdict is a lower bound)" if boxes >= 0.5 else
            "tight masks (they follow the object's outline), so little of the object's own background travels with it")
    return {"masks": len(masks), "object_area": float(area.mean()), "bbox_fill": float(fills.mean()),
            "box_like": boxes, "note": note}


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion."""
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def check_model(model: nn.Module, swaps: SwapSet, class_names: Sequence[str], layer: str,
                margin: float = MARGIN, expansion: int | None = None) -> dict[str, Any]:
    """The shortcut check of ``model`` on ``swaps`` (see the module docstring); the model is left as found."""
    k = len(class_names)
    with train_mode(model, False):
        comp_logits, comp_labels = predict(model, swaps.composites)
        own_logits, own_labels = predict(model, swaps.restored)
        x = torch.stack([swaps.split[i][0] for i in swaps.objects])
        shares = reliance_shares(model, x, swaps.labels, swaps.masks, layer, expansion)
    comp_pred, own_pred = comp_logits.argmax(1), own_logits.argmax(1)
    p_comp = comp_logits.softmax(1).gather(1, comp_labels.view(-1, 1)).squeeze(1).double()
    p_own = own_logits.softmax(1).gather(1, own_labels.view(-1, 1)).squeeze(1).double()
    rows, donor = swaps.object_row, swaps.donor_class
    follow, own, excess, (lo, hi) = donor_excess(comp_pred, own_pred, swaps)
    n, n_obj = len(follow), len(swaps.objects)
    count = torch.zeros(n_obj, dtype=torch.float64).index_add_(0, rows, torch.ones(n, dtype=torch.float64))
    p_comp_mean = torch.zeros(n_obj, dtype=torch.float64).index_add_(0, rows, p_comp) / count.clamp_min(1)
    drop = p_own - p_comp_mean
    reads = lo > margin
    labels = swaps.labels
    correct = (comp_pred == comp_labels).double()
    confusion: list[list[float | None]] = [[None] * k for _ in range(k)]
    for a in range(k):
        for b in range(k):
            sel = (comp_labels == a) & (donor == b)
            if bool(sel.any()):
                confusion[a][b] = float((comp_pred[sel] == b).double().mean())
    act, cam = (class_means(shares[m], labels, k) for m in ("activation", "gradcam"))
    per_class = {}
    for c, name in enumerate(class_names):
        mine, as_donor = comp_labels == c, donor == c
        per_class[name] = {
            "objects": int((labels == c).sum()), "composites": int(mine.sum()),
            "swap_accuracy": _mean(correct[mine]), "own_accuracy": _mean((own_pred == own_labels).double()[labels == c]),
            "follows_background": _mean(follow[mine]), "pull": _mean(follow[as_donor]),
            "probability_drop": _mean(drop[labels == c]),
            "activation_share": act[c], "gradcam_share": cam[c]}
    worst = sorted((name for name in class_names if per_class[name]["pull"] is not None),
                   key=lambda name: -(per_class[name]["pull"] or 0.0))
    f_lo, f_hi = wilson(float(follow.sum()), n)
    verdict = {"reads_background": reads, "label": "reads the background" if reads else "not detectably",
               "follow": float(follow.mean()), "follow_ci": [f_lo, f_hi], "own": float(own.mean()),
               "excess": excess, "excess_ci": [lo, hi], "margin": margin, "composites": n, "objects": n_obj,
               "worst_classes": worst[:3]}
    verdict["message"] = _message(verdict)
    overall = {"swap_accuracy": float(correct.mean()), "own_accuracy": float((own_pred == own_labels).double().mean()),
               "follows_background": float(follow.mean()), "probability_drop": float(drop.mean()),
               "activation_share": finite_mean(shares["activation"]), "gradcam_share": finite_mean(shares["gradcam"])}
    return {"verdict": verdict, "overall": overall, "per_class": per_class, "donor_confusion": confusion,
            "layer": layer, "tightness": mask_tightness(swaps.masks), "split_size": len(swaps.split)}


def donor_excess(comp_pred: torch.Tensor, own_pred: torch.Tensor,
                 swaps: SwapSet) -> tuple[torch.Tensor, torch.Tensor, float, tuple[float, float]]:
    """Per composite, whether the prediction follows the background donor's class (``follow``) and whether the
    object on its own background already predicted it (``own``); the mean excess ``follow − own`` and its 95%
    interval, the standard error clustered by object."""
    rows, donor = swaps.object_row, swaps.donor_class
    follow = (comp_pred == donor).double()
    own = (own_pred[rows] == donor).double()
    n, n_obj = len(follow), len(swaps.objects)
    per_object = torch.zeros(n_obj, dtype=torch.float64).index_add_(0, rows, follow - own)
    count = torch.zeros(n_obj, dtype=torch.float64).index_add_(0, rows, torch.ones(n, dtype=torch.float64))
    excess = float((follow - own).mean())
    resid = per_object - count * excess
    se = math.sqrt(n_obj / max(n_obj - 1, 1) * float(resid.pow(2).sum())) / n
    return follow, own, excess, (excess - Z95 * se, excess + Z95 * se)


def reads_background(model: nn.Module, split: ImageSplit, masks: Mapping[str, torch.Tensor], per_class: int = 20,
                     per_object: int = 3, seed: int = 0, margin: float = MARGIN) -> bool:
    """The shortcut check's verdict alone (predictions only, no attribution): does ``model`` follow the background
    donor's class more often than the same objects on their own backgrounds, by more than ``margin`` at 95%?"""
    swaps = build_swap_set(split, masks, per_class, per_object, seed)
    with train_mode(model, False):
        comp_pred = predict(model, swaps.composites)[0].argmax(1)
        own_pred = predict(model, swaps.restored)[0].argmax(1)
    return donor_excess(comp_pred, own_pred, swaps)[3][0] > margin


def _mean(values: torch.Tensor) -> float | None:
    return float(values.mean()) if len(values) else None


def _pc(value: float) -> str:
    """A share as a percentage: one decimal below 10% (so a small share never reads as a flat 0%)."""
    return f"{value:.1%}" if abs(value) < 0.1 else f"{value:.0%}"


def _message(v: dict[str, Any]) -> str:
    """The one-line verdict with its uncertainty."""
    counts = f"{v['composites']} composites of {v['objects']} objects"
    if v["reads_background"]:
        return (f"reads the background: {_pc(v['follow'])} of {counts} take the background's class (95% CI "
                f"{_pc(v['follow_ci'][0])}–{_pc(v['follow_ci'][1])}) against {_pc(v['own'])} for the same objects on "
                f"their own backgrounds; worst backgrounds: {', '.join(v['worst_classes'])}")
    return (f"not detectably: {_pc(v['follow'])} of {counts} take the background's class against {_pc(v['own'])} on "
            f"their own backgrounds (excess at most {_pc(max(v['excess_ci'][1], 0.0))} at 95%, threshold "
            f"{_pc(v['margin'])}): the background is not the cause; if the model still fails on new data, look "
            f"for a cue on the object itself (colour, texture), which masks cannot separate and a background "
            f"treatment will not fix")


def shortcut_check(model: nn.Module, split: ImageSplit, masks: Mapping[str, torch.Tensor], class_names: Sequence[str],
                   layer: str, per_class: int = 20, per_object: int = 3, seed: int = 0,
                   margin: float = MARGIN) -> dict[str, Any]:
    """:func:`build_swap_set` then :func:`check_model`, with the settings recorded under ``"settings"``."""
    swaps = build_swap_set(split, masks, per_class, per_object, seed)
    result = check_model(model, swaps, class_names, layer, margin)
    result["settings"] = {"per_class": per_class, "per_object": per_object, "seed": seed, "margin": margin}
    return result


def prioritise(annotation: dict[str, Any], check: dict[str, Any]) -> dict[str, Any]:
    """``annotate.json`` with its classes ordered by the check's pull (the share of composites on a class's
    backgrounds that take that class: the backgrounds the model reads most), worst first, and the order recorded
    under ``"priority"``; the lists themselves (lowest confidence first) are unchanged."""
    per_class = annotation["per_class"]
    pull = {name: (row.get("pull") if row.get("pull") is not None else -1.0)
            for name, row in check["per_class"].items()}
    order = sorted(per_class, key=lambda name: -pull.get(name, -1.0))
    return {**annotation, "per_class": {name: per_class[name] for name in order},
            "priority": {"order": order, "by": "pull: share of composites on the class's backgrounds predicted as it",
                         "pull": {name: pull.get(name) for name in order}, "verdict": check["verdict"]["label"]}}
