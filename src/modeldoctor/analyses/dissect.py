"""Network Dissection scoring against concept masks (Kim, Samith, Utama §2; Bau et al. 2017).

For unit ``u`` of a layer, ``a_u(x, p)`` is its activation map bilinearly upsampled to the input size and
``t_u`` its top-quantile level over the dataset (``P_{x,p}[a_u(x, p) > t_u] ≥ q``, q = 1 %, taken over the
un-upsampled maps as Network Dissection does).  Against each concept ``c`` with masks ``L_c(x, p)``:

    IoU_{u,c} = Σ_x |{a_u > t_u} ∩ L_c| / Σ_x |{a_u > t_u} ∪ L_c|        (§2, the IoU equation)

Each unit is labelled with its best concept; units whose best IoU reaches ``min_iou`` (0.04, as in
Network Dissection) are counted per concept.  Broden cannot be had offline, so the concepts are masks the
user supplies (sample id → {concept: bool H×W}); ``--masks DIR`` gives one PNG per sample (read by
:func:`modeldoctor.data.masks.load_masks`; non-zero = "object", its complement "background").  Without masks,
:func:`stroke_concepts` is a stand-in for digit data such as mnist5k: "stroke" = raw pixels > 0.5,
"background" = the rest.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset

from modeldoctor.core.device import model_device, to_device
from modeldoctor.core.errors import UserError
from modeldoctor.core.layers import FeatureCapture, LayerRef, resolve_layers, sample_shape, train_mode
from modeldoctor.data.bundle import ImageSplit, make_loader, unpack_batch
from modeldoctor.data.masks import resize_mask

ConceptMasks = Mapping[str, Mapping[str, "torch.Tensor | np.ndarray"]]
DEFAULT_QUANTILE = 0.01
DEFAULT_MIN_IOU = 0.04


@dataclass
class LayerDissection:
    """Pixel counts of ``{a_u > t_u} ∩ L_c`` and ``∪`` summed over the dataset, for one layer."""

    layer: str
    concepts: list[str]
    thresholds: torch.Tensor  # (U,) t_u
    intersection: torch.Tensor  # (U, K)
    union: torch.Tensor  # (U, K)
    num_samples: int

    @property
    def iou(self) -> torch.Tensor:
        return concept_iou(self.intersection, self.union)

    def labels(self) -> list[dict[str, Any]]:
        """Each unit's best concept and its IoU."""
        best, which = self.iou.max(1)
        return [{"unit": u, "concept": self.concepts[int(which[u])], "iou": float(best[u])} for u in range(len(best))]

    def counts(self, min_iou: float = DEFAULT_MIN_IOU) -> dict[str, int]:
        """Units per best concept, counting only units whose best IoU is at least ``min_iou``."""
        out = {c: 0 for c in self.concepts}
        for lab in self.labels():
            if lab["iou"] >= min_iou:
                out[lab["concept"]] += 1
        return out


def activation_threshold(top_values: torch.Tensor) -> torch.Tensor:
    """``t_u``: the (k+1)-th largest activation of each unit, where ``top_values`` (U, k+1) are its k+1 largest.

    With ``k = ⌈q·N·H·W⌉``, exactly k positions lie above ``t_u`` (without ties): ``P[a_u > t_u] ≥ q`` at the
    highest level the data allows.
    """
    return top_values.min(dim=1).values


def concept_iou(intersection: torch.Tensor, union: torch.Tensor) -> torch.Tensor:
    """``IoU_{u,c} = |M_u ∩ L_c| / |M_u ∪ L_c|`` from dataset-wide pixel counts (0 where the union is empty)."""
    return intersection / union.clamp_min(1)


def dissect(model: nn.Module, split: ImageSplit, concept_masks: ConceptMasks,
            layers: LayerRef | Sequence[LayerRef] | None = None, quantile: float = DEFAULT_QUANTILE,
            batch_size: int = 64) -> dict[str, LayerDissection]:
    """Score every unit of each layer (default: the last Conv2d) against each concept, on the samples of
    ``split`` that have masks.  Two passes: the thresholds ``t_u``, then the IoU counts."""
    if not 0 < quantile < 1:
        raise UserError(f"quantile must be in (0, 1), got {quantile}; the paper uses 0.01 (top 1%)")
    names = resolve_layers(model, layers, sample_shape(split))
    subset, concepts = _samples_with_masks(split, concept_masks)
    size = tuple(subset.dataset[0][0].shape[-2:])
    loader = make_loader(subset, batch_size)
    with train_mode(model, False), FeatureCapture(model, names) as cap, torch.no_grad():
        tops = _top_activations(model, cap, loader, len(subset), quantile)
        thresholds = {n: activation_threshold(t) for n, t in tops.items()}
        counts = {n: (torch.zeros(len(t), len(concepts)), torch.zeros(len(t))) for n, t in thresholds.items()}
        concept_area = torch.zeros(len(concepts))
        for batch in loader:
            x, _, index = to_device(model_device(model), *unpack_batch(batch))
            assert index is not None  # ImageSplit items carry their index
            cap.reset()
            model(x)
            masks = _mask_batch(split, index, concept_masks, concepts, size)
            concept_area += masks.sum((0, 2))
            for n in names:
                inter, area = _unit_counts(cap.captured[n], thresholds[n], masks, size)
                counts[n][0].add_(inter)
                counts[n][1].add_(area)
    return {n: LayerDissection(n, concepts, thresholds[n], counts[n][0],
                               counts[n][1][:, None] + concept_area[None, :] - counts[n][0], len(subset))
            for n in names}


def dissection_summary(results: Mapping[str, LayerDissection], min_iou: float = DEFAULT_MIN_IOU) -> dict[str, Any]:
    """JSON-ready: per layer, each unit's label, all IoUs, and unit counts per concept."""
    return {"min_iou": min_iou, "layers": {
        n: {"concepts": r.concepts, "num_samples": r.num_samples, "counts": r.counts(min_iou),
            "units": [{**lab, "threshold": float(r.thresholds[lab["unit"]]),
                       "ious": {c: float(v) for c, v in zip(r.concepts, r.iou[lab["unit"]])}} for lab in r.labels()]}
        for n, r in results.items()}}


def stroke_concepts(split: ImageSplit, threshold: float = 0.5) -> dict[str, dict[str, torch.Tensor]]:
    """Stand-in concepts for digit images (mnist5k): "stroke" = raw pixel > ``threshold``, "background" = the rest."""
    out = {}
    for i, sid in enumerate(split.ids):
        stroke = split.raw(i).mean(0) > threshold
        out[sid] = {"stroke": stroke, "background": ~stroke}
    return out


def object_background(object_masks: Mapping[str, torch.Tensor | np.ndarray]) -> dict[str, dict[str, torch.Tensor]]:
    """Concepts "object" (non-zero) and "background" (its complement) from one mask per sample."""
    out = {}
    for sid, m in object_masks.items():
        obj = torch.as_tensor(np.asarray(m)) != 0
        out[sid] = {"object": obj, "background": ~obj}
    return out


def _samples_with_masks(split: ImageSplit, concept_masks: ConceptMasks) -> tuple[Subset, list[str]]:
    keep = [i for i, sid in enumerate(split.ids) if sid in concept_masks]
    if not keep:
        raise UserError(f"no sample of the split has concept masks (ids like {split.ids[0]!r}); "
                        "key the masks by sample id")
    concepts = sorted({c for i in keep for c in concept_masks[split.ids[i]]})
    if not concepts:
        raise UserError("the concept masks name no concept; give e.g. {'object': mask, 'background': ~mask}")
    return Subset(split, keep), concepts


def _top_activations(model: nn.Module, cap: FeatureCapture, loader, n: int, quantile: float) -> dict[str, torch.Tensor]:
    """Each unit's k+1 largest activations over all samples and positions, k = ⌈q·n·h·w⌉ (streamed)."""
    tops: dict[str, torch.Tensor] = {}
    for batch in loader:
        x, _, _ = to_device(model_device(model), *unpack_batch(batch))
        cap.reset()
        model(x)
        for name, feat in cap.captured.items():
            if feat.dim() != 4:
                raise UserError(f"layer {name!r} gives {feat.dim()}-d outputs; dissection needs (N, C, H, W) maps")
            values = feat.transpose(0, 1).reshape(feat.shape[1], -1).float()
            keep = math.ceil(quantile * n * feat.shape[2] * feat.shape[3]) + 1
            merged = values if name not in tops else torch.cat([tops[name], values], 1)
            tops[name] = merged.topk(min(keep, merged.shape[1]), dim=1).values
    return tops


def _mask_batch(split: ImageSplit, index: torch.Tensor, concept_masks: ConceptMasks, concepts: list[str],
                size: tuple[int, int]) -> torch.Tensor:
    """(B, K, H·W) float masks at the input size (nearest resampling); an absent concept is all zero."""
    rows = []
    for i in index.tolist():
        per = concept_masks[split.ids[i]]
        rows.append(torch.stack([resize_mask(per[c], size) if c in per else torch.zeros(size, dtype=torch.bool)
                                 for c in concepts]))
    return torch.stack(rows).flatten(2).float()


def _unit_counts(feat: torch.Tensor, thresholds: torch.Tensor, masks: torch.Tensor, size: tuple[int, int],
                 max_elements: int = 1 << 24) -> tuple[torch.Tensor, torch.Tensor]:
    """``Σ |M_u ∩ L_c|`` (U, K) and ``Σ |M_u|`` (U,) for one batch, ``M_u = upsample(a_u) > t_u``.

    Samples are taken a few at a time so the upsampled maps stay under ``max_elements`` values.
    """
    step = max(1, max_elements // (feat.shape[1] * size[0] * size[1]))
    inter = torch.zeros(feat.shape[1], masks.shape[1], device=feat.device)
    area = torch.zeros(feat.shape[1], device=feat.device)
    masks, thresholds = masks.to(feat.device), thresholds.to(feat.device)
    for j in range(0, feat.shape[0], step):
        up = F.interpolate(feat[j:j + step].float(), size=size, mode="bilinear", align_corners=False)
        active = (up > thresholds.view(1, -1, 1, 1)).flatten(2).float()
        inter += torch.einsum("bup,bkp->uk", active, masks[j:j + step])
        area += active.sum((0, 2))
    return inter.cpu(), area.cpu()
