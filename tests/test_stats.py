"""core/stats.py: the one "smallest set holding a mass fraction" used by relevance, Discovery 1, decompose, report."""

from __future__ import annotations

import torch

from modeldoctor.core.stats import leading_mass


def test_leading_mass_by_hand() -> None:
    abar = torch.tensor([[0.0, 5.0, 0.0, 1.0], [4.0, 0.0, 0.0, 0.0], [0.0, 0.0, 3.0, 2.0]])
    mask = leading_mass(abar, 0.9)
    assert mask.tolist() == [[False, True, False, True], [True, False, False, False], [False, False, True, True]]
    assert leading_mass(abar, 0.5).sum(1).tolist() == [1, 1, 1]  # 5 of 6, 4 of 4, 3 of 5 already reach half


def test_leading_mass_ties_and_empty_rows() -> None:
    values = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    mask = leading_mass(values, 0.5)
    assert mask[0].tolist() == [True, True, False, False]  # ties: lower index first
    assert mask[1].tolist() == [True, False, False, False]  # an all-zero row keeps one entry
    assert leading_mass(values, 1.0)[0].all()
