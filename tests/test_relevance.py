"""doctor/relevance.py: which entries of ā count as relevant, every method by hand, and its one-line errors."""

from __future__ import annotations

import pytest
import torch

from modeldoctor.core.errors import UserError
from modeldoctor.doctor.relevance import METHODS, by_mass, by_mean, by_minmax, by_threshold, by_topk, relevant_kernels

CORR = torch.tensor([[0.0, 1.0, 2.0, 7.0], [4.0, 4.0, 1.0, 1.0]])


def test_every_method_by_hand() -> None:
    # row 0 min-max normalised: 0, 1/7, 2/7, 1; row 1: 1, 1, 0, 0
    assert by_minmax(CORR, 0.2).tolist() == [[False, False, True, True], [True, True, False, False]]
    assert by_minmax(CORR, 0.1).tolist() == [[False, True, True, True], [True, True, False, False]]
    assert by_mean(CORR).tolist() == [[False, False, False, True], [True, True, False, False]]  # means 2.5, 2.5
    assert by_threshold(CORR, 2.0).tolist() == [[False, False, True, True], [True, True, False, False]]
    top1 = by_topk(CORR, 1)
    assert top1[0].tolist() == [False, False, False, True] and top1[1, :2].sum() == 1 and not top1[1, 2:].any()  # a tie
    # row 0 total 10: 7 < 7 (0.7), 7 + 2 ≥ 9 (0.9); row 1 total 10: 4 + 4 ≥ 7, 4 + 4 + 1 ≥ 9
    assert by_mass(CORR, 0.7).tolist() == [[False, False, False, True], [True, True, False, False]]
    assert by_mass(CORR, 0.9).tolist() == [[False, False, True, True], [True, True, True, False]]


def test_edge_cases() -> None:
    flat = torch.full((1, 3), 5.0)
    assert by_minmax(flat, 0.2).tolist() == [[False, False, False]]  # no spread: (ā − min)/span = 0 everywhere
    assert by_topk(CORR, 0).sum().item() == 0 and by_topk(CORR, 99).all()  # k clamped to [0, channels]
    assert by_mass(CORR, 1.0).tolist() == [[False, True, True, True], [True, True, True, True]]  # zeros add nothing
    with pytest.raises(UserError, match="mass fraction must be in"):
        by_mass(CORR, 0.0)


def test_relevant_kernels_dispatches_with_defaults_and_refuses_unknowns() -> None:
    assert set(METHODS) == {"minmax", "threshold", "mean", "topk", "mass"}
    assert torch.equal(relevant_kernels(CORR), by_minmax(CORR, 0.2))  # the authors' default
    assert torch.equal(relevant_kernels(CORR, "threshold", v=2.0), by_threshold(CORR, 2.0))
    assert torch.equal(relevant_kernels(CORR, "mass"), by_mass(CORR, 0.9))
    assert torch.equal(relevant_kernels(CORR, "topk", k=2), by_topk(CORR, 2))
    with pytest.raises(UserError, match="unknown relevance method 'nope'"):
        relevant_kernels(CORR, "nope")
    with pytest.raises(UserError, match="takes k, not theta"):
        relevant_kernels(CORR, "topk", theta=0.3)
    with pytest.raises(UserError, match="takes no parameters, not k"):
        relevant_kernels(CORR, "mean", k=2)
