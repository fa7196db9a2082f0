"""Discovery 1 as numbers: is each class correlated with few, specific kernels, more so in deeper layers?

Per layer and class: kernels holding 90% of the class's ā mass, a Gini sparsity index, the overlap of
relevant sets between classes (mean pairwise Jaccard), the cosine between single confident samples and the
class profile (supp. Fig. 7); across layers, the trend of kernels-for-90% with depth (supp. Fig. 8).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from scipy import stats

from modeldoctor.doctor.relevance import DEFAULT_METHOD, DEFAULT_PARAMS, by_mass, relevant_kernels

if TYPE_CHECKING:
    from modeldoctor.doctor.diagnosis import Diagnosis


def kernels_for_mass(correlation: torch.Tensor, fraction: float = 0.9) -> torch.Tensor:
    """Per class, the fewest kernels whose ā sums to ≥ ``fraction`` of the class total → int64 [num_classes]."""
    return by_mass(correlation, fraction).sum(1)


def gini(correlation: torch.Tensor) -> torch.Tensor:
    """Gini index per class row: 0 = all kernels equal, → 1 = one kernel holds everything.

    G = Σ_i (2i − K − 1) x_(i) / (K Σ x) with x sorted ascending and i = 1..K.
    """
    x = correlation.double().sort(1).values
    K = x.shape[1]
    i = torch.arange(1, K + 1, dtype=torch.float64)
    total = x.sum(1)
    g = ((2 * i - K - 1) * x).sum(1) / (K * total.clamp_min(torch.finfo(torch.float64).tiny))
    return torch.where(total > 0, g, torch.zeros_like(g)).float()


def mean_pairwise_jaccard(masks: torch.Tensor) -> float:
    """Mean over class pairs of |R_a ∩ R_b| / |R_a ∪ R_b| for bool masks [num_classes, channels]."""
    m = masks.float()
    inter = m @ m.T
    union = m.sum(1, keepdim=True) + m.sum(1) - inter
    a, b = torch.triu_indices(len(m), len(m), offset=1)
    if not len(a):
        return float("nan")
    return float((inter[a, b] / union[a, b].clamp_min(1)).mean())


def profile_cosine(profiles: torch.Tensor, correlation: torch.Tensor) -> torch.Tensor:
    """Cosine between each kept single-sample profile [N, P, K] and every class's ā [N, K] → [N, P, N].

    Entry [n, p, m] compares sample p of class n with class m; [n, p, n] is supp. Fig. 7's comparison, and
    the off-diagonal entries are its baseline (non-negative profiles have high cosines with anything).
    Missing profiles (NaN) give NaN.
    """
    unit = torch.nn.functional.normalize(profiles.float(), dim=2, eps=1e-12)
    rows = torch.nn.functional.normalize(correlation.float(), dim=1, eps=1e-12)
    return torch.einsum("npk,mk->npm", unit, rows)


def _correlation(test: Any, x: Sequence[float], y: Sequence[float]) -> float:
    """A SciPy rank correlation; NaN for fewer than two points or a constant series (SciPy warns and gives NaN)."""
    if len(x) < 2 or len(set(x)) < 2 or len(set(y)) < 2:
        return float("nan")
    return float(test(x, y).statistic)


def depth_trend(depths: Sequence[int], values: Sequence[float]) -> dict[str, float]:
    """How ``values`` (e.g. mean kernels-for-90%, or its fraction of the layer's channels) move with depth."""
    first, last = values[0] if values else float("nan"), values[-1] if values else float("nan")
    return {"spearman": _correlation(stats.spearmanr, depths, values),
            "kendall": _correlation(stats.kendalltau, depths, values),  # τ-b, tie-corrected
            "first": first, "last": last, "first_to_last_ratio": first / last if last else float("nan")}


def layer_statistics(diagnosis: Diagnosis, layer: str, fraction: float = 0.9) -> dict[str, Any]:
    """Discovery-1 numbers for one layer, JSON-ready."""
    info = diagnosis.layer(layer)
    corr = info.correlation
    present = info.counts > 0
    k90 = kernels_for_mass(corr, fraction)
    masks = relevant_kernels(corr, DEFAULT_METHOD, **DEFAULT_PARAMS[DEFAULT_METHOD])
    cos = profile_cosine(info.profiles, corr)
    own = torch.diagonal(cos, dim1=0, dim2=2).T  # [N, P]
    others = (cos.nansum(2) - own) / max(len(corr) - 1, 1)
    valid, valid_others = own[~own.isnan()], others[~own.isnan()]
    return {
        "name": layer, "depth": info.depth, "channels": info.channels, "shape": list(info.shape),
        "scale": info.scale, "delta": info.delta, "samples": info.counts.tolist(),
        "kernels_for_90pct_mass": k90.tolist(),
        "mean_kernels_for_90pct_mass": float(k90[present].float().mean()) if present.any() else float("nan"),
        "fraction_kernels_for_90pct_mass":
            float(k90[present].float().mean() / info.channels) if present.any() else float("nan"),
        "gini": gini(corr).tolist(),
        "relevant_per_class": masks.sum(1).tolist(),
        "mean_pairwise_jaccard": mean_pairwise_jaccard(masks[present]),
        "sample_vs_class_cosine": own.tolist(),
        "mean_sample_vs_class_cosine": float(valid.mean()) if len(valid) else float("nan"),
        "mean_sample_vs_other_classes_cosine": float(valid_others.mean()) if len(valid) else float("nan"),
    }


def discovery_statistics(diagnosis: Diagnosis, fraction: float = 0.9) -> dict[str, Any]:
    """Per-layer statistics plus the depth trend of kernels-for-90% (count and fraction of channels)."""
    per_layer = [layer_statistics(diagnosis, name, fraction) for name in diagnosis.layers]
    ordered = sorted(per_layer, key=lambda s: s["depth"])
    depths = [s["depth"] for s in ordered]
    return {"layers": per_layer,
            "trend_kernels_for_90pct": depth_trend(depths, [s["mean_kernels_for_90pct_mass"] for s in ordered]),
            "trend_fraction_for_90pct": depth_trend(depths, [s["fraction_kernels_for_90pct_mass"] for s in ordered])}
