"""``diagnose_model`` (the diagnosis and the images worth annotating, from one scoring pass), ``annotation_list``
and ``explain`` (one image against a diagnosis)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from modeldoctor.core.layers import LayerRef, all_layers, conv_layer_names, resolve_layers, sample_shape, train_mode
from modeldoctor.core.replay import NoiseReplay
from modeldoctor.data.bundle import DataBundle
from modeldoctor.doctor.diagnosis import Diagnosis, DiagnosisOptions, diagnose
from modeldoctor.doctor.discovery import discovery_statistics
from modeldoctor.doctor.explain import Explanation, explain_image
from modeldoctor.doctor.selection import SampleScores, least_confident, sample_ids, score_samples
from modeldoctor.doctor.shortcut import prioritise
from modeldoctor.doctor.shortcut import shortcut_check as check_shortcut
from modeldoctor.doctor.treatment import default_layers

logger = logging.getLogger(__name__)

# The per-layer Discovery-1 statistics `modeldoctor diagnose` prints (diagnosis.json holds them all).
PRINTED_STATISTICS = ("name", "depth", "channels", "samples", "kernels_for_90pct_mass", "mean_kernels_for_90pct_mass",
                      "gini", "mean_pairwise_jaccard", "mean_sample_vs_class_cosine",
                      "mean_sample_vs_other_classes_cosine")


@dataclass
class DiagnoseResult:
    """A diagnosis, the ``annotate.json`` document when asked for, the shortcut check when masks were given,
    and the seconds the whole command took (``shortcut_seconds``: the check's part)."""

    diagnosis: Diagnosis
    annotation: dict[str, Any] | None
    seconds: float
    shortcut: dict[str, Any] | None = None
    shortcut_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """What ``modeldoctor diagnose --json`` prints besides the file paths: time, fallback, Discovery-1 summary,
        and with masks the shortcut check (``"shortcut"``: verdict, overall, per_class, donor_confusion, ...)."""
        stats = discovery_statistics(self.diagnosis)
        out = {"seconds": self.seconds, "fallback": self.diagnosis.fallback_reason,
               "layers": [{k: s[k] for k in PRINTED_STATISTICS} for s in stats["layers"]],
               "trend_kernels_for_90pct": stats["trend_kernels_for_90pct"]}
        if self.shortcut is not None:
            out["shortcut"] = self.shortcut
            out["shortcut_seconds"] = self.shortcut_seconds
        return out


def diagnose_model(model: nn.Module, data: DataBundle, layers: str | Sequence[LayerRef] | None = None,
                   options: DiagnosisOptions | None = None, split: str = "train", lowest: int = 0,
                   batch_size: int = 128, class_names: Sequence[str] | None = None, model_spec: str | None = None,
                   progress: bool = False, masks: Mapping[str, torch.Tensor] | None = None,
                   shortcut_per_class: int = 20) -> DiagnoseResult:
    """Eq. 3–4 on ``split`` of ``data`` (``layers``: names, ``"all"`` = every Conv2d and, in transformers, every
    token norm whose patches reach the logits; default :func:`~modeldoctor.core.layers.default_layer`) and,
    with ``lowest`` = K > 0, the K lowest-confidence images per class, both from one scoring pass over the split.
    ``class_names`` (default: the data's) and ``model_spec`` are recorded in the diagnosis.  With object
    ``masks`` (by sample id of ``split``) also the shortcut check (:func:`shortcut_check`) on up to
    ``shortcut_per_class`` masked images per class, whose worst classes then lead ``annotate.json``."""
    dataset = data.split(split)
    started = time.perf_counter()
    with train_mode(model, False):
        shape = sample_shape(dataset)
        names = all_layers(model, shape) if layers == "all" else resolve_layers(model, layers, shape)
        replay = NoiseReplay(model, names)
        logger.info("scoring %d %s samples", len(dataset), split)
        scores = score_samples(replay, dataset, batch_size)
    diagnosis = diagnose(model, dataset, replay.layers, batch_size=batch_size, class_names=class_names or data.class_names,
                         scores=scores, model_spec=model_spec, progress=progress, options=options or DiagnosisOptions())
    annotation = annotation_list(model, data, lowest, split, scores=scores) if lowest > 0 else None
    check, check_seconds = None, 0.0
    if masks is not None:
        check_started = time.perf_counter()
        check = shortcut_check(model, data, masks, split, shortcut_per_class, class_names=class_names, seed=options.seed
                               if options is not None else 0)
        check_seconds = time.perf_counter() - check_started
        if annotation is not None:
            annotation = prioritise(annotation, check)
    return DiagnoseResult(diagnosis, annotation, time.perf_counter() - started, check, check_seconds)


def reliance_layer(model: nn.Module, input_shape: tuple[int, int, int]) -> str:
    """The layer of the activation share: the treatment's default space-wise layer (the deepest conv whose
    receptive field is at most a quarter of the input), so the measure is the quantity the treatment penalises."""
    return default_layers(model, input_shape)[0][0]


def shortcut_check(model: nn.Module, data: DataBundle, masks: Mapping[str, torch.Tensor], split: str = "train",
                   per_class: int = 20, per_object: int = 3, seed: int = 0, layer: str | None = None,
                   class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """The shortcut check of :mod:`modeldoctor.doctor.shortcut` on the masked images of ``split``: per class and
    overall swap vs own-background accuracy, donor-follow share, donor confusion, probability drop, activation
    and Grad-CAM shares outside the object, mask tightness, and the one-line verdict."""
    dataset = data.split(split)
    chosen = layer or reliance_layer(model, sample_shape(dataset))
    result = check_shortcut(model, dataset, masks, class_names or data.class_names, chosen, per_class, per_object, seed)
    result["split"] = split
    return result


def annotation_list(model: nn.Module, data: DataBundle, per_class: int = 20, split: str = "train",
                    scores: SampleScores | None = None) -> dict[str, Any]:
    """The ``annotate.json`` document: per class, the ``per_class`` images whose true class the model trusts least.

    ``scores``: the split's scoring pass if the caller already ran it (:func:`diagnose_model` does)."""
    dataset = data.split(split)
    if scores is None:
        with train_mode(model, False):
            scores = score_samples(NoiseReplay(model, conv_layer_names(model)[-1:]), dataset)
    return least_confident(scores, per_class, data.class_names, sample_ids(dataset, scores.position.tolist()))


@dataclass
class ExplainResult:
    """One image explained against a diagnosis, with the class names to report it in."""

    sample: str
    explanation: Explanation
    class_names: list[str]

    def title(self) -> str:
        """``name: predicted P (confidence)[, true T]`` — the overlay's title."""
        ex, names = self.explanation, self.class_names
        true = f", true {names[ex.label]}" if ex.label is not None else ""
        return f"{self.sample}: predicted {names[ex.prediction]} ({ex.confidence:.2f}){true}"

    def to_dict(self) -> dict[str, Any]:
        """What ``modeldoctor explain --json`` prints (less ``"overlay"``), classes by name."""
        ex, names = self.explanation, self.class_names
        return {"sample": self.sample, "layer": ex.layer, "prediction": names[ex.prediction],
                "confidence": ex.confidence, "runner_up": names[ex.runner_up],
                "runner_up_confidence": ex.runner_up_confidence,
                "label": names[ex.label] if ex.label is not None else None,
                "kernels_vs_predicted": ex.kernels_vs_predicted, "kernels_vs_true": ex.kernels_vs_true,
                "background_share": ex.background_share, "object_area": ex.object_area}


def explain(model: nn.Module, diagnosis: Diagnosis, image: torch.Tensor, sample: str = "image",
            layer: str | None = None, label: int | None = None, object_mask: torch.Tensor | np.ndarray | None = None,
            top: int = 5, seed_index: int = 0) -> ExplainResult:
    """:func:`~modeldoctor.doctor.explain.explain_image` of one normalised image (C, H, W) named ``sample``:
    prediction, the ``top`` kernels deviating from the class profiles, the summed derivative map and, with an
    object mask, the map's share on the background.  ``seed_index`` fixes the noise draws (a split index)."""
    ex = explain_image(model, image, diagnosis, layer, label, object_mask, top, seed_index)
    return ExplainResult(sample, ex, list(diagnosis.class_names))
