"""The side analyses as commands: ``ablate`` (unit deletion + Table 1 interventions), ``decompose`` (influential
final-layer features), ``dissect`` (Network Dissection) and ``stability`` (Discovery 2)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from modeldoctor.analyses.ablation import UnitDeletion, intervention_table, rank_units, unit_deletion
from modeldoctor.analyses.decompose import Count, compare_with_diagnosis
from modeldoctor.analyses.decompose_protocol import Decomposition, RetrainProtocol, decompose_model
from modeldoctor.analyses.detectors import RELATIVE_DELTAS, compare_detectors
from modeldoctor.analyses.dissect import (
    DEFAULT_MIN_IOU,
    DEFAULT_QUANTILE,
    LayerDissection,
    dissection_summary,
    object_background,
    stroke_concepts,
)
from modeldoctor.analyses.dissect import dissect as dissect_units
from modeldoctor.analyses.stability import DEFAULT_DELTAS, discovery2
from modeldoctor.core.errors import UserError
from modeldoctor.core.layers import LayerRef, default_layer, resolve_layer
from modeldoctor.data.bundle import DataBundle, ImageSplit
from modeldoctor.doctor.diagnosis import Diagnosis
from modeldoctor.report.figures import stability_curves

logger = logging.getLogger(__name__)


def evenly_spaced(n: int, limit: int | None) -> list[int]:
    """At most ``limit`` indices spread over ``range(n)`` (splits are sorted by id, often by class)."""
    if limit is None or limit >= n:
        return list(range(n))
    if limit < 1:
        raise UserError(f"--max-samples must be at least 1, got {limit}")
    return [int(i * n / limit) for i in range(limit)]


@dataclass
class AblationReport:
    """Unit deletion on the ranking split, the units ranked, and the interventions on the k worst / best units."""

    deletion: UnitDeletion
    rank_split: str
    eval_split: str
    num_samples: dict[str, int]
    ranking: dict[str, Any]
    k: int
    constants: list[float]
    interventions: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        """The ``ablate.json`` layout (less ``"checkpoint"`` and ``"weights_sha256"``)."""
        r = self.deletion
        return {"layer": r.layer, "rank_split": self.rank_split, "eval_split": self.eval_split,
                "num_samples": self.num_samples, "num_units": len(r.units),
                "baseline": {"accuracy": r.baseline_accuracy, "per_class": r.baseline_per_class.tolist(),
                             "loss": r.baseline_loss},
                "units": [{"unit": u, "delta": float(r.delta[i]), "delta_loss": float(r.delta_loss[i]),
                           "delta_per_class": r.delta_per_class[i].tolist()} for i, u in enumerate(r.units)],
                "ranking": self.ranking, "k": self.k, "c": self.constants, "interventions": self.interventions}


def ablate(model: nn.Module, data: DataBundle, layer: LayerRef | None = None, rank_split: str = "val",
           eval_split: str = "test", k: int = 5, constants: Sequence[float] = (2.0, 3.0), top: int = 5,
           batch_size: int = 128, max_samples: int | None = None,
           dissection: Mapping[str, Any] | None = None) -> AblationReport:
    """Remove each unit of ``layer`` (default: the last Conv2d) in turn on ``rank_split``; rank the units; report
    the interventions on the ``k`` worst / best units on ``rank_split`` and ``eval_split``, so no unit is chosen on
    the data that judges it.  ``dissection`` (a ``dissect.json`` document of the same layer) adds each ranked
    unit's best concept.  ``max_samples``: at most that many evenly spaced samples per split."""
    name = resolve_layer(model, layer)[0] if layer is not None else default_layer(model, data.input_shape)
    splits: dict[str, ImageSplit] = {}
    for s in dict.fromkeys([rank_split, eval_split]):
        split = data.split(s)
        splits[s] = split if max_samples is None else split.subset(evenly_spaced(len(split), max_samples))
    logger.info("removing each unit of %s on %s", name, rank_split)
    deletion = unit_deletion(model, splits[rank_split], data.num_classes, name, batch_size=batch_size)
    ranking = rank_units(deletion, data.class_names, top=top)
    if dissection is not None:
        _add_concepts(ranking, dissection, name)
    logger.info("interventions")
    k = min(k, len(deletion.units))
    table = intervention_table(model, splits, data.num_classes, name, deletion, k=k, constants=constants)
    return AblationReport(deletion, rank_split, eval_split, {s: len(d) for s, d in splits.items()}, ranking, k,
                          list(constants), table)


def _add_concepts(ranking: dict[str, Any], dissection: Mapping[str, Any], layer: str) -> None:
    """Attach the best concept (and IoU) from a dissect.json to every unit listed in the ranking."""
    layers = dissection.get("layers", {})
    if layer not in layers:
        raise UserError(f"the --dissect file has no results for layer {layer!r} (it has {', '.join(layers) or 'none'}); "
                        f"run `modeldoctor dissect --layer {layer}` first")
    labels = {u["unit"]: u for u in layers[layer]["units"]}
    entries = ranking["worst"] + ranking["best"] + [e for per in ranking["per_class"].values()
                                                    for e in per["helping"] + per["hurting"]]
    for e in entries:
        if e["unit"] in labels:
            e["concept"], e["iou"] = labels[e["unit"]]["concept"], labels[e["unit"]]["iou"]


@dataclass
class DecompositionReport:
    """Algorithm 1's result and, with a diagnosis, its overlap with the relevant kernels."""

    decomposition: Decomposition
    class_names: list[str]
    diagnosis_overlap: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The ``decompose.json`` layout (less ``"checkpoint"`` and ``"outputs"``)."""
        summary = dict(self.decomposition.summary)
        if self.diagnosis_overlap is not None:
            summary["diagnosis_overlap"] = self.diagnosis_overlap
        return summary

    def influential(self) -> dict[str, Any]:
        """The ``influential.json`` layout: per-class feature indices and the (classes, features) histogram."""
        s = self.decomposition.summary
        return {"layer": s["layer"], "k1": s["k1"], "k2": s["k2"], "classes": self.class_names,
                "influential": s["influential"], "histogram": self.decomposition.histogram.tolist()}


def decompose(model: nn.Module, data: DataBundle, k1: Count | None = None, k2: Count | None = None,
              retrain_epochs: int = 1, lr: float = 0.01, retrain: str = "all", control: bool = False,
              min_r_a: float = 0.95, seed: int = 0, noise_repeats: int = 5,
              diagnosis: Diagnosis | None = None) -> DecompositionReport:
    """:func:`~modeldoctor.analyses.decompose_protocol.decompose_model` (k₁ / k₂ not given are chosen on val; the
    decomposed network retrained by :class:`RetrainProtocol` with ``retrain`` = ``"all"`` or ``"layer"``; with
    ``control`` the full network retrained the same way), plus with ``diagnosis`` the overlap of each class's
    influential features with its relevant kernels of the last conv layer (whose channels are the features)."""
    protocol = RetrainProtocol(parameters=retrain, epochs=retrain_epochs, lr=lr)
    result = decompose_model(model, data, k1, k2, protocol, control=control, min_r_a=min_r_a, seed=seed,
                             noise_repeats=noise_repeats)
    overlap = (compare_with_diagnosis(result.mask, diagnosis, default_layer(model, data.input_shape))
               if diagnosis is not None else None)
    s = result.summary
    logger.info("k1 %s k2 %s (%s): A_f %.4f  A_d %.4f  r_A %.4f  retrained %s  control %s", s["k1"], s["k2"],
                s["selection"]["rule"], s["accuracy_full"], s["accuracy_decomposed"], s["r_A"],
                s["accuracy_retrained"], s["accuracy_control"])
    return DecompositionReport(result, list(data.class_names), overlap)


@dataclass
class DissectionReport:
    """Network Dissection of one or more layers, and where the concepts came from."""

    layers: dict[str, LayerDissection]
    split: str
    concept_source: str  # "builtin" / "masks" (object vs background) or "builtin-stroke" (the digit stand-in)
    quantile: float
    min_iou: float

    def to_dict(self) -> dict[str, Any]:
        """The ``dissect.json`` layout (less ``"checkpoint"`` and ``"weights_sha256"``)."""
        return {"split": self.split, "concept_source": self.concept_source, "quantile": self.quantile,
                **dissection_summary(self.layers, self.min_iou)}


def dissect(model: nn.Module, data: DataBundle, split: str = "val",
            object_masks: Mapping[str, torch.Tensor] | None = None, concept_source: str = "masks",
            layers: LayerRef | Sequence[LayerRef] | None = None, quantile: float = DEFAULT_QUANTILE,
            min_iou: float = DEFAULT_MIN_IOU, batch_size: int = 64, max_samples: int | None = None) -> DissectionReport:
    """Label each unit of ``layers`` (default: the last Conv2d) with the concept its strongest activations match.

    Concepts: ``object`` / ``background`` from ``object_masks`` (by sample id; ``concept_source`` says where they
    came from), else the stand-in ``stroke`` (raw pixel > 0.5) / ``background`` for digit data.
    ``max_samples``: at most that many evenly spaced samples of the split.
    """
    images = data.split(split)
    chosen = [images.ids[i] for i in evenly_spaced(len(images), max_samples)]
    if object_masks is not None:
        concepts = object_background({sid: object_masks[sid] for sid in chosen if sid in object_masks})
    else:
        logger.info("no object masks given; using the stand-in concepts stroke / background")
        keep = set(chosen)
        concepts, concept_source = {k: v for k, v in stroke_concepts(images).items() if k in keep}, "builtin-stroke"
    results = dissect_units(model, images, concepts, layers, quantile=quantile, batch_size=batch_size)
    return DissectionReport(results, split, concept_source, quantile, min_iou)


def stability(model: nn.Module, split: ImageSplit, eps: float = 0.1, layers: str | Sequence[str] | None = None,
              deltas: Sequence[float] | None = None, draws: int = 10, relative: bool = True,
              max_samples: int | None = None, seed: int = 0, calibration: ImageSplit | None = None,
              attack: str = "fgsm") -> dict[str, Any]:
    """Discovery 2 (:func:`~modeldoctor.analyses.stability.discovery2`): Fig. 3's curves and the noise-flip
    detector's held-out AUROC, δ in units of each layer's activation std (``relative=False``: the paper's absolute
    δ; default grids :data:`RELATIVE_DELTAS` / :data:`DEFAULT_DELTAS`).  With a ``calibration`` split also
    ``"detectors"``: the feature-noise detector against feature squeezing on ``attack`` adversarials, settings
    chosen on ``calibration`` and AUROC measured on ``split``.  The ``stability.json`` layout (less
    ``"checkpoint"`` and ``"outputs"``)."""
    grid = list(deltas) if deltas is not None else list(RELATIVE_DELTAS if relative else DEFAULT_DELTAS)
    result = discovery2(model, split, eps=eps, layers=layers, deltas=grid, draws=draws, relative=relative,
                        max_samples=max_samples, seed=seed)
    logger.info("FGSM ε=%g success %.3f; held-out AUROC %.3f at δ=%g (%s); adversarials keeping the false label %.3f",
                eps, result["fgsm"]["success_rate"], result["auroc"], result["delta"], result["layer"],
                result["keep_false_at_best"])
    if calibration is not None:
        found = compare_detectors(model, calibration, split, eps=eps, attack=attack, draws=draws,
                                  max_samples=max_samples, seed=seed)
        logger.info("%s detectors (fit or chosen on calibration adversarials): noise AUROC combined %.3f, single %.3f "
                    "(%s at %s), feature squeezing %.3f", attack, found["auroc_noise_combined"], found["auroc_noise"],
                    found["noise_choice"]["score"], found["noise_choice"]["layer"], found["auroc_feature_squeezing"])
        result["detectors"] = found
    return result


def stability_figure(result: Mapping[str, Any]) -> bytes:
    """Fig. 3 of a :func:`stability` result as PNG bytes (``stability.png``)."""
    return stability_curves(dict(result)).png
