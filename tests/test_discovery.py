"""doctor/discovery.py: Discovery 1 statistics by hand (Gini, mass, Jaccard, depth trend, profile cosine)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modeldoctor.doctor.discovery import depth_trend, gini, kernels_for_mass, mean_pairwise_jaccard, profile_cosine


def test_discovery_statistics():
    uniform, onehot = torch.ones(1, 8), torch.tensor([[0.0] * 7 + [1.0]])
    assert gini(uniform).item() == pytest.approx(0.0, abs=1e-6)
    assert gini(onehot).item() == pytest.approx(7 / 8)
    assert kernels_for_mass(torch.cat([uniform, onehot]), 0.9).tolist() == [8, 1]
    masks = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    assert mean_pairwise_jaccard(masks) == pytest.approx((1 / 3 + 1 + 1 / 3) / 3)
    trend = depth_trend([0, 1, 2, 3], [10.0, 8.0, 8.0, 1.0])  # ranks 4, 2.5, 2.5, 1: hand-computed values
    assert trend["spearman"] == pytest.approx(-0.9486833, abs=1e-6)
    assert trend["kendall"] == pytest.approx(-5 / 30 ** 0.5, abs=1e-6)  # τ-b: S = -5, n0 = 6, one tie in y
    assert depth_trend([0, 1, 2], [6.0, 4.0, 2.0])["first_to_last_ratio"] == pytest.approx(3.0)
    assert np.isnan(depth_trend([0, 1], [2.0, 2.0])["spearman"])
    profiles = torch.tensor([[[1.0, 0.0], [float("nan")] * 2], [[1.0, 1.0], [0.0, 1.0]]])
    cos = profile_cosine(profiles, torch.tensor([[2.0, 0.0], [0.0, 3.0]]))
    assert cos[0, 0].tolist() == pytest.approx([1.0, 0.0]) and cos[0, 1].isnan().all()
    assert cos[1, 0].tolist() == pytest.approx([2 ** -0.5, 2 ** -0.5]) and cos[1, 1, 1] == pytest.approx(1.0)
