"""analyses/detectors.py and PGD: scores by hand, squeezers by hand, PGD stays in its ε-ball."""

from __future__ import annotations

import torch

from modeldoctor.analyses.adversarial import pgd
from modeldoctor.analyses.detectors import noise_scores, spaced_convs, squeeze
from modeldoctor.models.zoo import build_model


def test_noise_scores_by_hand() -> None:
    clean = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.5]])  # predictions 0 and 1
    noisy = torch.tensor([[[[2.0, 1.0, 0.0], [0.0, 1.0, 3.0]],   # draw 1: image 0 keeps 0 (margin 1), image 1 flips
                           [[1.0, 2.0, 0.0], [0.0, 2.0, 1.0]]]])  # draw 2: image 0 flips (margin −1), image 1 margin 1
    scores = noise_scores(clean, noisy)
    assert scores["flip"].tolist() == [[0.5, 0.5]]
    # margins z_p − max_{c≠p} z_c: image 0 → 1 and −1, image 1 → −2 and 1; score = −mean
    assert torch.allclose(scores["margin"], torch.tensor([[0.0, 0.5]]))


def test_squeezers_by_hand() -> None:
    raw = torch.tensor([[[[0.2, 0.6], [0.9, 0.4]]]])
    assert squeeze(raw, bits=1).tolist() == [[[[0.0, 1.0], [1.0, 0.0]]]]
    assert torch.equal(squeeze(raw), raw)
    smoothed = squeeze(torch.tensor([[[[0.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]]]), median=3)
    assert float(smoothed.max()) == 0.0  # an isolated bright pixel is removed


def test_pgd_stays_in_the_ball_and_in_range() -> None:
    torch.manual_seed(0)
    model = build_model("simple-cnn", 3, 1, 12).eval()
    mean, std = torch.tensor([0.5]), torch.tensor([0.25])
    raw = torch.rand(4, 1, 12, 12)
    x = (raw - mean.view(-1, 1, 1)) / std.view(-1, 1, 1)
    adv = pgd(model, x, torch.tensor([0, 1, 2, 0]), eps=0.05, steps=3, mean=mean, std=std)
    adv_raw = adv * std.view(-1, 1, 1) + mean.view(-1, 1, 1)
    assert float((adv_raw - raw).abs().max()) <= 0.05 + 1e-6
    assert float(adv_raw.min()) >= -1e-6 and float(adv_raw.max()) <= 1 + 1e-6


def test_spaced_convs_include_the_last() -> None:
    model = build_model("resnet20", 10, 1, 28)
    picked = spaced_convs(model)
    assert len(picked) == 4 and picked[0] == "conv1" and picked[-1] == "layer3.2.conv2"
