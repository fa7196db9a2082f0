"""Report sections on background reliance: the shortcut check `diagnose --masks` stored, and the before/after
reliance of the original, control and treated models measured on the same background-swap composites.

Measures (:mod:`modeldoctor.doctor.shortcut`, :mod:`modeldoctor.doctor.reliance`), per class and overall:
accuracy on composites, the activation share outside the object at the treatment's space-wise layer, Grad-CAM's
share outside the object, and the drop in the true class's probability when only the background is swapped.
Headlines are computed from these numbers and from treat.json's test and swap accuracies on the same page.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from modeldoctor.core.errors import UserError
from modeldoctor.core.layers import sample_shape
from modeldoctor.data.masks import LazyMasks
from modeldoctor.doctor.annotation import lowest_confidence
from modeldoctor.doctor.shortcut import build_swap_set, check_model
from modeldoctor.doctor.treatment import default_layers
from modeldoctor.report.figures import RUN_COLOURS, Figure, _render
from modeldoctor.report.html import Section, table
from modeldoctor.report.images import ModelSet

logger = logging.getLogger(__name__)

CLEAR = 0.01  # a change smaller than one point is not called a change
PER_CLASS = 20  # training images per class whose objects and backgrounds are swapped
ANNOTATED = 20  # the treatment's default masks per class (api.treat, the demo), left out when treat.json has no ids
# (key, label, lower is less background reliance)
MEASURES = (("activation_share", "activation share outside the object", True),
            ("gradcam_share", "Grad-CAM share outside the object", True),
            ("probability_drop", "true-class probability drop on a swapped background", True))


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def shortcut_section(check: Mapping[str, Any]) -> Section:
    """The stored shortcut check of the diagnosed model: verdict first, then per class and the worst confusions."""
    v, overall, tight = check["verdict"], check["overall"], check["tightness"]
    section = Section("shortcut", "Shortcut check: does the model read the object or the background?",
                      f"Verdict — {v['message']}. Objects of {v['objects']} masked {check.get('split', 'train')} images "
                      f"pasted on {check['settings']['per_object']} erased backgrounds of other classes each, against "
                      "the same objects on their own erased-and-restored backgrounds (validation accuracy is no "
                      f"reference: it may carry the shortcut too). Masks: {tight['note']} (object "
                      f"{tight['object_area']:.0%} of the image, {tight['bbox_fill']:.0%} of its bounding box).")
    names = list(check["per_class"])
    rows = [[name, r["objects"], _pct(r["own_accuracy"]), _pct(r["swap_accuracy"]), _pct(r["follows_background"]),
             _pct(r["pull"]), _pct(r["probability_drop"]), _pct(r["activation_share"]), _pct(r["gradcam_share"])]
            for name, r in check["per_class"].items()]
    rows.append(["all", v["objects"], _pct(overall["own_accuracy"]), _pct(overall["swap_accuracy"]),
                 _pct(overall["follows_background"]), "", _pct(overall["probability_drop"]),
                 _pct(overall["activation_share"]), _pct(overall["gradcam_share"])])
    section.tables.append(table(
        ["class", "objects", "own background", "swapped background", "follows background", "pull as background",
         "p drop", f"activation share ({check['layer']})", "Grad-CAM share"], rows,
        "accuracy of the objects on their own vs other classes' backgrounds; follows: the prediction is the "
        "background's class; pull: composites on this class's backgrounds predicted as this class"))
    pairs = [(cell, a, b) for a, row in enumerate(check["donor_confusion"]) for b, cell in enumerate(row)
             if cell is not None and a != b]
    pairs.sort(key=lambda t: -t[0])
    section.tables.append(table(["objects of", "on backgrounds of", "predicted as the background's class"],
                                [[names[a], names[b], _pct(cell)] for cell, a, b in pairs[:8]],
                                "the strongest donor confusions"))
    return section


def reliance_checks(models: ModelSet, annotated: Iterable[str] | int | None = None, per_class: int = PER_CLASS
                    ) -> dict[str, dict[str, Any]] | None:
    """The shortcut check of original, control and treated on one set of composites of masked *training* images
    the treatment did not annotate; ``None`` without arms or without the data's own masks.

    Training images, because only there do backgrounds carry their class (a shortcut family decorrelates them in
    test, where "the background's class" means nothing); every model saw these images alike, none with a mask.
    ``annotated``: the treatment's annotated ids; a count or nothing (treat.json records only how many) leaves out
    the treatment's default pool instead, the original model's :data:`ANNOTATED` least confident masked images
    per class."""
    if models.original is None or models.bundle is None or not models.arms or not models.bundle.masks:
        return None
    train, masks = models.bundle.train, models.bundle.masks
    candidates = [sid for sid in train.ids if sid in masks]
    if isinstance(annotated, int) or annotated is None:
        pool = lowest_confidence(models.original, train, candidates, ANNOTATED, models.bundle.num_classes)
        skip = {train.ids[i] for i in pool}
    else:
        skip = set(annotated)
    usable = LazyMasks([sid for sid in candidates if sid not in skip], masks.__getitem__)
    try:
        swaps = build_swap_set(train, usable, per_class)
        layer = default_layers(models.original, sample_shape(train))[0][0]
    except UserError as exc:
        logger.warning("skipping the reliance section (%s)", exc)
        return None
    names = models.bundle.class_names
    return {name: check_model(model, swaps, names, layer)
            for name, model in [("original", models.original)] + sorted(models.arms.items())}


def _treat_numbers(treat: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    return {arm: {s: float(treat[arm][s]["accuracy"]) for s in ("test", "swap") if s in treat[arm]}
            for arm in ("original", "control", "treated") if treat.get(arm)}


def headline(checks: Mapping[str, Mapping[str, Any]], treat: Mapping[str, Any] | None) -> str:
    """One sentence that agrees with both the reliance measures and treat.json's test and swap accuracy."""
    before, after = checks["original"]["overall"], checks["treated"]["overall"]
    moves = []
    for key, label, _ in MEASURES:
        a, b = before.get(key), after.get(key)
        if a is not None and b is not None:
            moves.append((b - a, f"{label} {a:.0%} → {b:.0%}"))
    falls = [text for d, text in moves if d < -CLEAR]
    rises = [text for d, text in moves if d > CLEAR]
    acc = _treat_numbers(treat or {})
    swap_up = test_up = None
    accuracy = ""
    if "original" in acc and "treated" in acc and "swap" in acc["treated"]:
        o, t = acc["original"], acc["treated"]
        swap_up, test_up = t["swap"] - o["swap"] > CLEAR, t["test"] - o["test"] > CLEAR
        accuracy = f"test {o['test']:.1%} → {t['test']:.1%}, swap {o['swap']:.1%} → {t['swap']:.1%}"
    else:
        o_s, t_s = before["swap_accuracy"], after["swap_accuracy"]
        swap_up = t_s - o_s > CLEAR
        accuracy = f"accuracy on these composites {o_s:.0%} → {t_s:.0%}"
    if falls and swap_up and len(falls) >= len(rises):
        claim = f"Treatment moves the model off the background: {'; '.join(falls)}, as {accuracy}"
    elif falls:
        claim = f"Background reliance falls ({'; '.join(falls)}) while {accuracy}"
    elif swap_up:
        claim = (f"Swap accuracy rises ({accuracy}) but these reliance measures do not fall"
                 + (f" ({'; '.join(rises)})" if rises else ""))
    else:
        claim = f"Treatment moves neither background reliance nor swap accuracy ({accuracy})"
    if test_up is False and swap_up:
        claim += "; test accuracy does not follow"
    return claim


def reliance_section(checks: Mapping[str, Mapping[str, Any]], treat: Mapping[str, Any] | None) -> Section:
    """Per class, for original / control / treated: composite accuracy and the three reliance measures."""
    names = list(checks["original"]["per_class"])
    first = checks["original"]
    claim = headline(checks, treat)
    section = Section("reliance", "Background reliance before and after treatment",
                      f"{claim}. Measured on {first['verdict']['composites']} composites of "
                      f"{first['verdict']['objects']} masked training images the treatment did not annotate (each "
                      "object on other classes' erased backgrounds), the same for every model; the control and treated "
                      f"models are the seed-0 checkpoints. Activation share at {first['layer']} (the quantity the "
                      "treatment's space-wise constraint penalises); Grad-CAM on the last rectified maps; lower is "
                      "less reliance on the background for every measure.")
    models = list(checks)
    rows = []
    for key, label in [("swap_accuracy", "accuracy on composites")] + [(k, lab) for k, lab, _ in MEASURES]:
        rows.append([label, "all"] + [_pct(checks[m]["overall"][key]) for m in models])
    section.tables.append(table(["measure", "class"] + models, rows,
                                "verdicts: " + "; ".join(f"{m} {checks[m]['verdict']['label']}" for m in models)))
    per_class = [[name] + [f"{_pct(checks[m]['per_class'][name]['swap_accuracy'])} / "
                           f"{_pct(checks[m]['per_class'][name]['gradcam_share'])} / "
                           f"{_pct(checks[m]['per_class'][name]['activation_share'])} / "
                           f"{_pct(checks[m]['per_class'][name]['probability_drop'])}" for m in models]
                 for name in names]
    section.tables.append(table(["class"] + models, per_class,
                                "per class: composite accuracy / Grad-CAM share / activation share / probability drop"))
    section.figures.append(reliance_by_class(names, checks, claim))
    return section


def reliance_by_class(class_names: Sequence[str], checks: Mapping[str, Mapping[str, Any]], title: str) -> Figure:
    """One panel per measure (composite accuracy and the three reliance measures), bars per class and model."""
    keys = [("swap_accuracy", "accuracy on composites")] + [(k, lab) for k, lab, _ in MEASURES]
    fig, axes = plt.subplots(len(keys), 1, figsize=(max(7, 0.7 * len(class_names) + 2), 2.1 * len(keys)), sharex=True)
    x = np.arange(len(class_names))
    width = 0.8 / len(checks)
    for ax, (key, label) in zip(axes, keys):
        for i, (model, check) in enumerate(checks.items()):
            values = [check["per_class"][c][key] for c in class_names]
            heights = np.array([np.nan if v is None else 100 * v for v in values], dtype=float)
            ax.bar(x + (i - (len(checks) - 1) / 2) * width, heights, width, label=model, color=RUN_COLOURS.get(model))
        ax.set(ylabel=f"{label}\n(%)")
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=8, ncol=len(checks))
    axes[-1].set_xticks(x, class_names)
    axes[-1].set(xlabel="class (of the object)")
    caption = ("Per class of the object: accuracy with a swapped background, and three background-reliance measures "
               "(lower = less reliance). The same composites for every model.")
    return _render(fig, "reliance_by_class", title, caption)
