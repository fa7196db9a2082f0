"""FocusedDropout, input-gradient regularisers, FGSM, and the train/evaluate flags that use them."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modeldoctor.analyses.adversarial import fgsm, fgsm_accuracy, parse_eps
from modeldoctor.analyses.input_gradients import double_backprop_loss, input_gradient_penalty
from modeldoctor.cli.app import main
from modeldoctor.core.errors import UserError
from modeldoctor.models.checkpoint import load_checkpoint
from modeldoctor.models.focused_dropout import (
    FocusedDropout,
    focused_mask,
    insert_focused_dropout,
    parse_focused_dropout,
)
from modeldoctor.models.zoo import build_model


def positive_features(seed: int = 0, shape: tuple[int, ...] = (4, 6, 5, 5)) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) + 0.01


def expected_mask(x: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Algorithm 1 written out with loops, per sample."""
    mask = torch.zeros(x.shape[0], 1, *x.shape[2:])
    for n in range(x.shape[0]):
        k = max(range(x.shape[1]), key=lambda c: x[n, c].mean().item())
        peak = x[n, k].max()
        for i in range(x.shape[2]):
            for j in range(x.shape[3]):
                mask[n, 0, i, j] = float(x[n, k, i, j] > gamma[n] * peak)
    return mask


def test_focused_dropout_mask_is_shared_and_exact():
    x = positive_features()
    x[2, 3] += 0.5  # sample 2: channel 3 clearly has the highest mean
    layer = FocusedDropout(par_rate=1.0, generator=torch.Generator().manual_seed(7)).train()
    out = layer(x)
    replay = torch.Generator().manual_seed(7)
    assert torch.rand((), generator=replay).item() < 1.0  # the participation draw
    gamma = 0.6 + 0.3 * torch.rand(x.shape[0], generator=replay)
    mask = expected_mask(x, gamma)
    assert 0 < mask.sum() < mask.numel()  # some positions kept, some dropped
    assert torch.equal(out, x * mask)
    assert torch.equal(focused_mask(x, gamma), mask)
    zero = out == 0
    assert torch.equal(zero, zero[:, :1].expand_as(zero))  # one spatial mask for all channels
    assert torch.equal(mask[2, 0], (x[2, 3] > gamma[2] * x[2, 3].max()).float())


def test_nonpositive_top_channel_keeps_only_its_peak():
    x = -positive_features(5, (1, 2, 3, 3))
    x[0, 1] += 0.3  # channel 1 has the highest mean but may still be all negative
    mask = focused_mask(x, torch.tensor([0.7]))
    chosen = x[0, 1]
    expected = (chosen > 0.7 * chosen.max()) | (chosen == chosen.max())
    assert mask.sum() >= 1 and torch.equal(mask[0, 0].bool(), expected)


def test_focused_dropout_is_identity_in_eval():
    x = positive_features(1)
    layer = FocusedDropout(par_rate=1.0).eval()
    assert layer(x) is x


def test_participation_rate_matches_fraction_of_active_batches():
    x = positive_features(2, (2, 3, 4, 4))
    x[:, :, 0, 0] = 0.0  # always below γ·max: an active batch always changes the output
    layer = FocusedDropout(par_rate=0.1, generator=torch.Generator().manual_seed(3)).train()
    active = sum(not torch.equal(layer(x), x) for _ in range(3000))
    assert abs(active / 3000 - 0.1) < 0.02


def test_gradients_flow_through_kept_units_only():
    x = positive_features(4).requires_grad_(True)
    layer = FocusedDropout(par_rate=1.0, gamma_range=(0.5, 0.5)).train()
    layer(x).sum().backward()
    mask = focused_mask(x.detach(), torch.full((x.shape[0],), 0.5))
    assert torch.equal(x.grad, mask.expand_as(x))
    assert 0 < mask.sum() < mask.numel()


def test_insert_focused_dropout_wraps_named_layer_and_rejects_unknown():
    model = build_model("resnet20", 10, 1)
    original = model.layer3
    inserted = insert_focused_dropout(model, after="layer3", par_rate=0.2)
    assert isinstance(model.layer3, nn.Sequential) and model.layer3[0] is original and model.layer3[1] is inserted
    nested = insert_focused_dropout(model, after="layer2.1", par_rate=0.3)
    assert model.layer2[1][1] is nested
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(UserError, match="layer4"):
        insert_focused_dropout(model, after="layer4")


def test_parse_focused_dropout_options():
    assert parse_focused_dropout("after=layer3,par=0.2,gamma=0.3:0.6") == {
        "after": "layer3", "par_rate": 0.2, "gamma_range": [0.3, 0.6]}
    for bad in ("par=0.1", "after=layer3,par=x", "after=layer3,rate=0.1", "after=layer3,par=1.5",
                "after=layer3,gamma=0.9:0.6"):
        with pytest.raises(UserError):
            parse_focused_dropout(bad)


def linear_model(d: int = 6, k: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, k))


def test_double_backprop_loss_matches_closed_form_for_linear_model():
    model = linear_model()
    x, y = torch.randn(5, 1, 2, 3), torch.tensor([0, 1, 2, 3, 1])
    loss, logits = double_backprop_loss(0.1)(model, x, y, None)
    weight = model[1].weight
    p = logits.softmax(1)
    grad = (p - F.one_hot(y, 4)) @ weight  # ∂H_n/∂x_n = Wᵀ(p_n − y_n)
    expected = F.cross_entropy(logits, y) + 0.1 * grad.pow(2).sum() / 5
    assert torch.allclose(loss, expected, atol=1e-6)


def test_masked_penalty_matches_closed_form_for_linear_model():
    model = linear_model()
    x = torch.randn(3, 1, 2, 3)
    mask = (torch.rand(3, 1, 2, 3, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    p = model(x).softmax(1)
    grad = (1 - 4 * p) @ model[1].weight  # ∂/∂x Σ_k log p_k = Wᵀ(1 − K p)
    masked = grad * mask.flatten(1)
    assert torch.allclose(input_gradient_penalty(model, x, mask), masked.pow(2).sum() / 3, atol=1e-6)
    assert torch.allclose(input_gradient_penalty(model, x, mask, reduction="sum"), masked.pow(2).sum(), atol=1e-6)
    assert torch.allclose(input_gradient_penalty(model, x), grad.pow(2).sum() / 3, atol=1e-6)


def test_penalty_gives_nonzero_parameter_gradients_and_leaves_grads_alone():
    model = build_model("simple-cnn-narrow", 10, 1).train()
    x = torch.randn(4, 1, 12, 12)
    mask = torch.zeros(4, 1, 12, 12)
    mask[..., :6] = 1.0
    penalty = input_gradient_penalty(model, x, mask)
    assert all(p.grad is None for p in model.parameters())  # autograd.grad, not .backward()
    grads = torch.autograd.grad(penalty, list(model.parameters()), allow_unused=True)
    first_conv = grads[0]
    assert penalty.item() > 0 and first_conv is not None and first_conv.abs().sum() > 0
    y = torch.randint(0, 10, (4,))
    loss, _ = double_backprop_loss(0.1)(model, x, y, None)
    plain = F.cross_entropy(model(x), y)
    g_reg = torch.autograd.grad(loss, model.features[0].weight)[0]
    g_plain = torch.autograd.grad(plain, model.features[0].weight)[0]
    assert not torch.allclose(g_reg, g_plain)


def test_fgsm_increases_loss_and_respects_eps_in_raw_space(mnist5k):
    split = mnist5k.test
    x = torch.stack([split[i][0] for i in range(32)])
    y = split.labels[:32]
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))
    nn.init.normal_(model[1].weight, std=0.05)
    adv = fgsm(model, x, y, 0.1, split.mean, split.std)
    raw, raw_adv = x * split.std + split.mean, adv * split.std + split.mean
    assert raw_adv.min() >= 0 and raw_adv.max() <= 1 + 1e-6
    assert (raw_adv - raw).abs().max() <= 0.1 + 1e-5
    assert (raw_adv - raw).abs().max() > 0.09
    # CE of a linear model is convex in x and the step is sign-aligned with the gradient: the loss must grow.
    clean_loss = F.cross_entropy(model(x), y, reduction="none")
    assert F.cross_entropy(model(adv), y, reduction="none").ge(clean_loss - 1e-5).all()
    assert F.cross_entropy(model(adv), y) > F.cross_entropy(model(x), y) + 0.1


def test_fgsm_accuracy_eps_zero_is_clean_accuracy_and_mode_is_restored(mnist5k):
    model = build_model("simple-cnn-narrow", 10, 1).train()
    result = fgsm_accuracy(model, mnist5k.val, [0.0, 0.2], batch_size=500)
    assert model.training and set(result) == {"0", "0.2"}
    model.eval()
    with torch.no_grad():
        clean = sum(int((model(torch.stack([mnist5k.val[i][0] for i in range(b, b + 250)])).argmax(1)
                         == mnist5k.val.labels[b:b + 250]).sum()) for b in range(0, 500, 250)) / 500
    assert result["0"] == pytest.approx(clean, abs=0.005)  # un-/re-normalising may flip a borderline sample
    with pytest.raises(UserError):
        parse_eps("0.1,2")


@pytest.mark.slow
def test_cli_train_and_evaluate_with_regularisers(tmp_path, capsys):
    fd_dir, igr_dir = tmp_path / "fd", tmp_path / "igr"
    common = ["--model", "simple-cnn-narrow", "--data", "mnist5k", "--epochs", "1", "--input-size", "12",
              "--optimizer", "adam", "--lr", "0.01", "--json"]  # 12 px: double backprop at 28 px is minutes
    assert main(["train", *common, "--out", str(fd_dir), "--focused-dropout", "after=features,par=0.1"]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert main(["evaluate", "--checkpoint", str(fd_dir / "model.pt"), "--fgsm", "0.05,0.1", "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    test = evaluated["metrics"]["test"]
    assert test["accuracy"] == pytest.approx(trained["metrics"]["test"]["accuracy"])
    assert set(test["fgsm"]) == {"0.05", "0.1"} and test["fgsm"]["0.1"] < test["accuracy"]
    model, meta = load_checkpoint(fd_dir / "model.pt")
    assert meta.train_config["focused_dropout"]["after"] == "features"
    assert isinstance(model.features[1], FocusedDropout)
    assert main(["train", *common, "--out", str(igr_dir), "--input-grad-reg", "0.1"]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"]["test"]["accuracy"] > 0.3  # chance is 0.1
    assert load_checkpoint(igr_dir / "model.pt")[1].train_config["input_grad_reg"] == 0.1
    assert main(["train", *common, "--out", str(tmp_path / "bad"), "--focused-dropout", "after=nope"]) == 2
