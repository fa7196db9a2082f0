"""Small statistics shared by the diagnosis, the analyses and the report."""

from __future__ import annotations

import torch


def leading_mass(values: torch.Tensor, fraction: float) -> torch.Tensor:
    """Per row of non-negative ``values`` (R, K), the smallest set of largest entries whose sum reaches
    ``fraction`` of the row's sum: a bool mask (R, K).  Ties: lower index first; an all-zero row keeps one entry.

    "The kernels holding 90% of a class's ā" (Discovery 1, relevance by mass) and "the features holding a
    share of the ℓ₁ mass" (influential features) are this set.
    """
    ordered, order = values.sort(dim=1, descending=True, stable=True)
    total = ordered.sum(1, keepdim=True)
    before = ordered.cumsum(1) - ordered  # mass of the entries ranked above each one
    take = before < fraction * total
    take[:, 0] |= total.squeeze(1) <= 0
    return torch.zeros_like(take).scatter(1, order, take)
