"""analyses/detectors.py and PGD: scores by hand, the combiner's fit, squeezers by hand, PGD stays in its ε-ball."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from modeldoctor.analyses.adversarial import fgsm, pgd
from modeldoctor.analyses.detectors import (
    INSTABILITY,
    fit_combiner,
    instability_matrix,
    noise_scores,
    spaced_convs,
    squeeze,
)
from modeldoctor.analyses.stability import auroc, noisy_logits
from modeldoctor.core.errors import UserError
from modeldoctor.models.zoo import build_model


def test_noise_scores_by_hand() -> None:
    clean = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.5]])  # predictions 0 and 1
    noisy = torch.tensor([[[[2.0, 1.0, 0.0], [0.0, 1.0, 3.0]],   # draw 1: image 0 keeps 0 (margin 1), image 1 flips
                           [[1.0, 2.0, 0.0], [0.0, 2.0, 1.0]]]])  # draw 2: image 0 flips (margin −1), image 1 margin 1
    scores = noise_scores(clean, noisy)
    assert scores["flip"].tolist() == [[0.5, 0.5]]
    # margins z_p − max_{c≠p} z_c: image 0 → 1 and −1, image 1 → −2 and 1; score = −mean
    assert torch.allclose(scores["margin"], torch.tensor([[0.0, 0.5]]))
    # clean margins 2 and 0.5; drop = clean − mean noisy margin
    assert torch.allclose(scores["margin_drop"], torch.tensor([[2.0, 1.0]]))
    assert torch.allclose(scores["logit_std"], torch.tensor([[0.5, 0.5]]))  # z_p: 2, 1 and 1, 2
    p = clean.softmax(1)
    kl0 = sum(float((p[0] * (p[0].log() - q.log_softmax(0))).sum()) for q in noisy[0, :, 0]) / 2
    assert scores["kl"][0, 0].item() == pytest.approx(kl0, rel=1e-5)


def test_instability_vanishes_without_noise() -> None:
    torch.manual_seed(0)
    clean = torch.randn(5, 4)
    scores = noise_scores(clean, clean.expand(1, 3, 5, 4))
    assert all(float(scores[k].abs().max()) < 1e-5 for k in INSTABILITY)
    per_layer = {"a": noise_scores(clean, torch.randn(2, 3, 5, 4)), "b": noise_scores(clean, torch.randn(2, 3, 5, 4))}
    phi = instability_matrix(per_layer, [0.0, 1.0])  # δ = 0 columns left out
    assert phi.shape == (5, 2 * len(INSTABILITY))
    with pytest.raises(UserError):
        instability_matrix(per_layer, [0.0, 0.0])


def test_combiner_fit_uses_only_its_rows_and_is_calibrated() -> None:
    rng = np.random.default_rng(0)
    normal, adversarial = rng.normal(0, 1, (60, 3)), rng.normal(1.5, 1, (30, 3))
    source = rng.integers(0, 60, 30)
    combiner = fit_combiner(normal, adversarial, source)
    refit = fit_combiner(normal, adversarial, source)
    held_out = rng.normal(0, 1, (50, 3)), rng.normal(1.5, 1, (50, 3))
    scores = [combiner.score(x) for x in held_out]
    assert all(((s >= 0) & (s <= 1)).all() for s in scores)
    assert np.allclose(combiner.score(held_out[0]), refit.score(held_out[0]))  # deterministic
    assert auroc(scores[1], scores[0]) > 0.8
    # calibrated: mean predicted probability on its own rows ≈ the adversarial share
    own = combiner.score(np.concatenate([normal, adversarial]))
    assert own.mean() == pytest.approx(30 / 90, abs=0.05)
    lone = fit_combiner(normal, adversarial[:1], source[:1])  # one adversarial: nothing to cross-validate
    assert lone.C == 1.0 and np.isnan(lone.auroc_cv) and ((lone.score(normal) >= 0) & (lone.score(normal) <= 1)).all()


def test_seeded_toy_boundary_images_are_unstable() -> None:
    """Logits (h₁ − h₂, 0) with noise on h = x: images with x₁ ≈ x₂ sit on the boundary, the others far from it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Identity(), nn.Linear(2, 2)).eval()
    with torch.no_grad():
        model[2].weight.copy_(torch.tensor([[1.0, -1.0], [0.0, 0.0]]))
        model[2].bias.zero_()
    gen = torch.Generator().manual_seed(0)
    far = torch.rand(40, 2, generator=gen) * torch.tensor([1.0, 0.2]) + torch.tensor([2.0, 0.0])  # margin ≥ 1.8
    near = far.clone()
    near[:, 1] = near[:, 0] - 0.05 * torch.rand(40, generator=gen)  # margin ≤ 0.05
    out = {}
    for name, x in (("far", far), ("near", near)):
        clean, noisy = noisy_logits(model, x.view(40, 1, 1, 2), ["1"], [0.0, 0.5], draws=20, seed=1)
        out[name] = {"1": noise_scores(clean, noisy["1"])}
    for kind in ("flip", "kl"):  # the tail is linear, so the margin drop and logit spread do not depend on x
        assert auroc(out["near"]["1"][kind][1], out["far"]["1"][kind][1]) > 0.9, kind
    phi = {name: instability_matrix(scores, [0.0, 0.5]) for name, scores in out.items()}
    combiner = fit_combiner(phi["far"][:20], phi["near"][:20], np.arange(20))  # fit on the first half only
    held_out = [combiner.score(phi[name][20:]) for name in ("near", "far")]
    assert auroc(*held_out) > 0.9


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


def _trained_xor_model() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """An MLP trained on 8×8 noise images, class = (left half bright) XOR (top half bright): a curved boundary."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1024, 1, 8, 8, generator=g)
    y = ((x[..., :4].mean((1, 2, 3)) > 0.5) ^ (x[..., :4, :].mean((1, 2, 3)) > 0.5)).long()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(400):
        i = torch.randint(0, len(x), (128,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[i]), y[i]).backward()
        opt.step()
    return model.eval(), x[:256], y[:256]


def test_pgd_beats_fgsm_at_the_same_eps_on_a_trained_model(one_thread) -> None:
    model, x, y = _trained_xor_model()

    def accuracy(images: torch.Tensor) -> float:
        with torch.no_grad():
            return float((model(images).argmax(1) == y).float().mean())

    eps = 0.03
    clean, one_step, iterated = accuracy(x), accuracy(fgsm(model, x, y, eps)), accuracy(pgd(model, x, y, eps))
    assert clean > 0.95 and one_step < clean - 0.2  # the model is trained and FGSM already hurts it
    assert iterated < one_step - 0.02, (one_step, iterated)  # 10 projected steps find what one step misses


def test_spaced_convs_include_the_last() -> None:
    model = build_model("resnet20", 10, 1, 28)
    picked = spaced_convs(model)
    assert len(picked) == 4 and picked[0] == "conv1" and picked[-1] == "layer3.2.conv2"
