"""Relevant kernels per class: which entries of the correlation matrix ā (Eq. 4) count as "correlated".

Eq. 5 uses 1[ā_k^{n,r} < v] with a raw threshold v; the authors' public code min-max normalises each class
row and keeps channels ≥ 0.2 (an earlier version: ≥ the class mean).  All methods take a
[num_classes, channels] matrix and return a bool mask of the same shape (True = relevant).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch

from modeldoctor.core.errors import UserError
from modeldoctor.core.stats import leading_mass

Method = Literal["minmax", "threshold", "mean", "topk", "mass"]
METHODS: tuple[str, ...] = ("minmax", "threshold", "mean", "topk", "mass")
DEFAULT_METHOD: Method = "minmax"
DEFAULT_PARAMS: dict[str, dict[str, float]] = {"minmax": {"theta": 0.2}, "threshold": {"v": 0.0}, "mean": {},
                                               "topk": {"k": 10}, "mass": {"fraction": 0.9}}


def by_threshold(correlation: torch.Tensor, v: float) -> torch.Tensor:
    """Eq. 5's raw threshold: relevant ⇔ ā_k ≥ v."""
    return correlation >= v


def by_minmax(correlation: torch.Tensor, theta: float = 0.2) -> torch.Tensor:
    """Per class, (ā_k − min ā) / (max ā − min ā) ≥ θ (the authors' code, θ = 0.2)."""
    lo = correlation.min(1, keepdim=True).values
    span = (correlation.max(1, keepdim=True).values - lo).clamp_min(torch.finfo(correlation.dtype).tiny)
    return (correlation - lo) / span >= theta


def by_mean(correlation: torch.Tensor) -> torch.Tensor:
    """Per class, ā_k ≥ mean_k ā (the authors' earlier code)."""
    return correlation >= correlation.mean(1, keepdim=True)


def by_topk(correlation: torch.Tensor, k: int) -> torch.Tensor:
    """Per class, the k largest ā_k."""
    k = max(0, min(int(k), correlation.shape[1]))
    mask = torch.zeros_like(correlation, dtype=torch.bool)
    return mask.scatter(1, correlation.topk(k, dim=1).indices, True) if k else mask


def by_mass(correlation: torch.Tensor, fraction: float = 0.9) -> torch.Tensor:
    """Per class, the smallest set of kernels whose ā holds at least ``fraction`` of the class's total ā."""
    if not 0 < fraction <= 1:
        raise UserError(f"mass fraction must be in (0, 1], got {fraction}")
    return leading_mass(correlation, fraction)


def relevant_kernels(correlation: torch.Tensor, method: str = DEFAULT_METHOD, **params: Any) -> torch.Tensor:
    """Bool mask [num_classes, channels] by ``method`` (minmax θ, threshold v, mean, topk k, mass fraction)."""
    funcs: dict[str, Callable[..., torch.Tensor]] = {"minmax": by_minmax, "threshold": by_threshold,
                                                     "mean": by_mean, "topk": by_topk, "mass": by_mass}
    if method not in funcs:
        raise UserError(f"unknown relevance method {method!r}; choose one of {', '.join(METHODS)}")
    allowed = DEFAULT_PARAMS[method]
    unknown = set(params) - set(allowed)
    if unknown:
        raise UserError(f"relevance method {method!r} takes {', '.join(allowed) or 'no parameters'}, "
                        f"not {', '.join(sorted(unknown))}")
    return funcs[method](correlation, **{**allowed, **params})
