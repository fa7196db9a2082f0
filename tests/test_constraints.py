"""Eq. 5-6 forms, the smooth backward and where their gradients reach (issue: gradients that reach every layer)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from modeldoctor.core.errors import UserError
from modeldoctor.core.receptive import receptive_field
from modeldoctor.core.replay import NoiseReplay
from modeldoctor.core.surrogate import SurrogateReLU, smooth_backward, surrogate_relus
from modeldoctor.data.masks import background_mask, receptive_background
from modeldoctor.doctor.annotation import MaskBank
from modeldoctor.doctor.constraints import (
    activation_map,
    below_threshold,
    channel_constraint,
    competitor_classes,
    first_classes,
    spatial_constraint,
)
from modeldoctor.doctor.treatment import TreatConfig, TreatmentLoss, control_config, treat_step
from modeldoctor.models.zoo import build_model
from toys import Toy, centre_masks, toy_batch


class ReluNet(nn.Module):
    """conv1 → ReLU → conv2 (the last conv) → ReLU → mean → fc, with ReLU modules the surrogate can swap."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.act2 = nn.ReLU()
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act2(self.conv2(self.act1(self.conv1(x)))).mean((2, 3)))


def batch(n: int = 8, size: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    masks[:, 2:6, 2:6] = True
    return torch.randn(n, 1, size, size, generator=g), torch.arange(n) % 3, masks


def eq6_first_conv_gradient(model: nn.Module, form: str, smooth: list[SurrogateReLU] | None = None) -> torch.Tensor:
    x, y, masks = batch()
    replay = NoiseReplay(model, ["conv2"])
    with smooth_backward(smooth or []):
        state = replay.forward(x)
        g = replay.gradients(state, "conv2", [first_classes(state.logits, y)], noise_draws=2, delta=0.1,
                             create_graph=True).grads[0]
        bg = background_mask(masks, (8, 8), expansion=0)
        term = spatial_constraint(g, bg, form=form, features=state.features["conv2"])  # type: ignore[arg-type]
    (grad,) = torch.autograd.grad(term, model.conv1.weight, allow_unused=True)
    return torch.zeros_like(model.conv1.weight) if grad is None else grad


@pytest.mark.parametrize("form", ["paper", "share"])
def test_plain_eq6_at_the_last_conv_gives_the_first_conv_exactly_zero_gradient(form):
    torch.manual_seed(0)
    model = ReluNet().eval()
    assert torch.count_nonzero(eq6_first_conv_gradient(model, form)) == 0


def test_activation_form_and_smooth_backward_reach_the_first_conv():
    torch.manual_seed(0)
    model = ReluNet().eval()
    assert eq6_first_conv_gradient(model, "activation").abs().sum() > 0
    with surrogate_relus(model, beta=5.0) as surrogates:
        assert eq6_first_conv_gradient(model, "share", surrogates).abs().sum() > 0
    assert type(model.act1) is nn.ReLU and type(model.act2) is nn.ReLU  # the model's own modules are back


def test_smooth_backward_keeps_the_logits_bit_identical_and_restores_on_error():
    torch.manual_seed(0)
    model = ReluNet().eval()
    x, _, _ = batch()
    plain = model(x)
    with surrogate_relus(model, beta=2.0) as surrogates:
        with smooth_backward(surrogates):
            assert all(s.active for s in surrogates) and torch.equal(model(x), plain)
        assert not any(s.active for s in surrogates)
    with pytest.raises(RuntimeError), surrogate_relus(model, beta=2.0):
        raise RuntimeError("boom")
    assert type(model.act1) is nn.ReLU
    with pytest.raises(UserError, match="β must be > 0"):
        SurrogateReLU(0.0)


def test_head_frozen_plain_eq6_run_equals_the_control_exactly():
    """With only layers up to r trainable, plain Eq. 6 at r adds exactly zero gradient: treated == control."""
    torch.manual_seed(0)
    start = ReluNet()
    x, y, masks = batch()
    idx = torch.arange(len(x))
    bank = MaskBank(masks, torch.ones(len(x), dtype=torch.bool), list(range(len(x))))
    cfg = TreatConfig(constraints=("space",), space_layers=["conv2"], form="share", lam_space=10.0,
                      noise_draws=2, expansion=0, mix_annotated=0)
    arms = {}
    for name, arm_cfg in (("treated", cfg), ("control", control_config(cfg))):
        model = copy.deepcopy(start)
        model.fc.requires_grad_(False)
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
        loss = TreatmentLoss(model, arm_cfg, (1, 8, 8), bank=bank)
        for _ in range(3):
            treat_step(model, opt, loss, x, y, idx)
        arms[name] = model.state_dict()
    assert all(torch.equal(arms["treated"][k], arms["control"][k]) for k in arms["control"])
    assert loss.log == {}  # the control records no constraint term


class LinearNet(nn.Module):
    """An identity 1×1 conv (layer r: m^r = x) and a linear head on 2×2 images: every derivative is a weight."""

    def __init__(self, weight: list[list[float]]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 1, 1, bias=False)
        self.fc = nn.Linear(4, 2, bias=False)
        with torch.no_grad():
            self.conv1.weight.fill_(1.0)
            self.fc.weight.copy_(torch.tensor(weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv1(x).flatten(1))


def test_auto_lambda_by_hand_on_a_linear_model():
    """λ = fraction × CE / term, with CE, the activation-share term (Eq. 6) and the input-gradient term written out."""
    weight = [[1.0, -1.0, 2.0, 0.5], [0.0, 1.0, -1.0, 1.0]]
    pixels, labels = [[0.25, 0.5, 0.75, 1.0], [1.0, 0.5, 0.5, 0.5]], [0, 1]
    objects = [[True, False, False, False], [True, True, False, False]]  # row-major 2×2 object masks
    logits = [[sum(w * p for w, p in zip(row, image)) for row in weight] for image in pixels]
    ce = sum(math.log(sum(math.exp(z) for z in zs)) - zs[y] for zs, y in zip(logits, labels)) / 2
    # Eq. 6, activation form: ∂ŷ_y/∂m = W_y at every draw, so A = J·|m ⊙ W_y| per pixel and J cancels in the share
    space = sum(sum(abs(p * w) for p, w, o in zip(image, weight[y], obj) if not o) /
                sum(abs(p * w) for p, w in zip(image, weight[y])) for image, y, obj in zip(pixels, labels, objects)) / 2
    # input gradient of Σ_k log p_k: Σ_k W_k − 2 Σ_c p_c W_c, squared on the background, summed, over 2 images
    ig = 0.0
    for zs, obj in zip(logits, objects):
        probs = [math.exp(z) / sum(math.exp(v) for v in zs) for z in zs]
        for i in range(4):
            grad = sum(row[i] for row in weight) - 2 * sum(p * row[i] for p, row in zip(probs, weight))
            ig += 0.0 if obj[i] else grad ** 2 / 2

    model = LinearNet(weight)
    x = torch.tensor(pixels).view(2, 1, 2, 2)
    masks = torch.tensor(objects).view(2, 2, 2)
    bank = MaskBank(masks, torch.ones(2, dtype=torch.bool), [0, 1])
    cfg = TreatConfig(constraints=("space", "input-gradient"), space_layers=["conv1"], form="activation",
                      lam_fraction=0.5, noise_draws=3, expansion=0)
    lambdas = TreatmentLoss(model, cfg, (1, 2, 2), bank=bank).calibrate(x, torch.tensor(labels), masks)
    assert lambdas["space"] == pytest.approx(0.5 * ce / space, rel=1e-5)
    assert lambdas["input-gradient"] == pytest.approx(0.5 * ce / ig, rel=1e-5)


def test_activation_map_is_the_absolute_channel_sum_of_features_times_gradients():
    g = torch.randn(3, 2, 4, 5, 5)
    m = torch.randn(2, 4, 5, 5)
    by_hand = sum((g[j] * m).sum(1).abs() for j in range(3))
    assert torch.allclose(activation_map(g, m), by_hand)
    with pytest.raises(UserError):
        activation_map(g, m[:, :3])


def test_receptive_field_by_probing_matches_the_arithmetic():
    model = build_model("simple-cnn-s2", 10, 1, 48)
    # stride-2 stem 3x3 → 3; +3x3 at stride 2 → 7; 2x2 max-pool at stride 2 and 3x3 at stride 4 → 17; → 37
    fields = [receptive_field(model, n, (1, 48, 48)) for n in ("features.0", "features.3", "features.7", "features.11")]
    assert fields == [3, 7, 17, 37]


def test_receptive_background_counts_cells_by_what_their_field_sees():
    mask = torch.zeros(1, 16, 16, dtype=torch.bool)
    mask[0, 4:12, 4:12] = True  # a quarter of the image is object
    footprint = background_mask(mask, (4, 4), expansion=0)
    assert footprint[0, 0].sum() == 12  # 4 object cells of 16
    whole = receptive_background(mask, (4, 4), expansion=0, field=31)
    assert torch.equal(whole, torch.ones(1, 1, 4, 4))  # every field is 75% background
    local = receptive_background(mask, (16, 16), expansion=0, field=1)
    assert torch.equal(local[0, 0].bool(), ~mask[0])


def constraint_value(replay: NoiseReplay, x: torch.Tensor, y: torch.Tensor, which: str) -> torch.Tensor:
    state = replay.forward(x)
    first = first_classes(state.logits, y, "label")
    second, weight = competitor_classes(state.logits, y, first, "runner_up")
    g = replay.gradients(state, "conv1", [first, second], noise_draws=3, delta=0.1, create_graph=True)
    if which == "channel":
        abar = torch.tensor([[1.0, 0, 0, 1], [0, 1, 0, 0], [0, 0, 1, 0]])
        return channel_constraint(g.grads[0], g.grads[1], below_threshold(abar[first], 0.5), weight)
    bg = background_mask(centre_masks(len(x)), (8, 8), expansion=0)
    return spatial_constraint(g.grads[0], bg)


@pytest.mark.parametrize("which", ["channel", "space"])
def test_constraint_has_parameter_gradients_and_falls(which):
    torch.manual_seed(0)
    model = Toy().train()
    x, y, _ = toy_batch()
    replay = NoiseReplay(model, ["conv1"])
    value = constraint_value(replay, x, y, which)
    tail = [model.bn.weight, model.conv2.weight, model.fc.weight]
    grads = torch.autograd.grad(value, [model.conv1.weight, *tail])
    assert all(g.abs().sum() > 0 for g in grads[1:])  # double backprop reaches the parameters after layer r
    # ∂ŷ/∂m^r is piecewise constant in m^r for a ReLU tail: nothing before r can change it.
    assert grads[0].abs().sum() == 0
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    start = float(value.detach())
    for _ in range(10):
        opt.zero_grad()
        constraint_value(replay, x, y, which).backward()
        opt.step()
    assert float(constraint_value(replay, x, y, which).detach()) < 0.7 * start


def test_spatial_constraint_zero_when_all_foreground_and_for_unannotated():
    g = torch.randn(2, 3, 4, 5, 5)
    everything = torch.ones(3, 10, 10, dtype=torch.bool)
    bg = background_mask(everything, (5, 5), expansion=2)
    assert spatial_constraint(g, bg).item() == 0.0
    bg = background_mask(torch.zeros(3, 10, 10, dtype=torch.bool), (5, 5), expansion=0)
    none = torch.zeros(3, dtype=torch.bool)
    assert spatial_constraint(g, bg, none).item() == 0.0
    only_first = torch.tensor([True, False, False])
    expected = g[:, 0].abs().sum()
    assert torch.allclose(spatial_constraint(g, bg, only_first), expected)  # averaged over annotated images
    assert torch.allclose(spatial_constraint(g, bg, only_first, normalise="batch"), expected / 3)
    assert torch.allclose(spatial_constraint(g, bg, form="share"), torch.ones(()))


def test_channel_constraint_matches_eq5_by_hand():
    g1 = torch.randn(2, 1, 3, 2, 2)
    g2 = torch.randn(2, 1, 3, 2, 2)
    irrelevant = torch.tensor([[True, False, True]])
    by_hand = sum(g1[:, 0, k].abs().sum() for k in (0, 2)) + g2.abs().sum()
    assert torch.allclose(channel_constraint(g1, g2, irrelevant), by_hand)
    only_k1 = torch.tensor([[False, True, False]])
    assert torch.allclose(channel_constraint(g1, g2, irrelevant, competitor_kernels=only_k1),
                          by_hand - g2[:, 0, 0].abs().sum() - g2[:, 0, 2].abs().sum())
    assert torch.allclose(channel_constraint(g1, g2, irrelevant, competitor_weight=torch.zeros(1)),
                          by_hand - g2.abs().sum())
    scaled = channel_constraint(5 * g1, 5 * g2, irrelevant, form="share")
    assert torch.allclose(scaled, channel_constraint(g1, g2, irrelevant, form="share"))  # scale-free


def test_activation_form_of_eq6_by_hand():
    """One image, K = 2 kernels on a 1×2 map, J = 2 draws; the object is the left cell."""
    m = torch.tensor([[[[1.0, 2.0]], [[3.0, -1.0]]]])  # (B, K, H, W)
    g = torch.tensor([[[[[2.0, 1.0]], [[1.0, 4.0]]]],  # draw 1
                      [[[[-1.0, 0.0]], [[2.0, 1.0]]]]])  # draw 2
    # A = Σ_j |Σ_k m_k g_k|: left |1·2 + 3·1| + |1·(−1) + 3·2| = 5 + 5; right |2·1 − 1·4| + |2·0 − 1·1| = 2 + 1
    background = torch.tensor([[[[0.0, 1.0]]]])
    assert spatial_constraint(g, background, form="activation", features=m).item() == pytest.approx(3 / 13)
    assert activation_map(g, m).tolist() == [[[10.0, 3.0]]]
    with pytest.raises(UserError, match="needs the layer's features"):
        spatial_constraint(g, background, form="activation")


def naive_activation_share(g: torch.Tensor, m: torch.Tensor, background: torch.Tensor, annotated: list[bool]) -> float:
    shares = []
    for b in range(g.shape[1]):
        if not annotated[b]:
            continue
        total = outside = 0.0
        for h in range(g.shape[3]):
            for w in range(g.shape[4]):
                cell = sum(abs(sum(float(m[b, k, h, w] * g[j, b, k, h, w]) for k in range(g.shape[2])))
                           for j in range(g.shape[0]))
                total += cell
                outside += cell * float(background[b, 0, h, w])
        shares.append(outside / total)
    return sum(shares) / len(shares)


def test_activation_form_of_eq6_equals_a_naive_loop_over_annotated_images():
    gen = torch.Generator().manual_seed(3)
    g, m = torch.randn(3, 4, 2, 3, 3, generator=gen), torch.randn(4, 2, 3, 3, generator=gen)
    background = (torch.rand(4, 1, 3, 3, generator=gen) > 0.5).float()
    annotated = [True, False, True, True]
    value = spatial_constraint(g, background, torch.tensor(annotated), form="activation", features=m)
    assert value.item() == pytest.approx(naive_activation_share(g, m, background, annotated), rel=1e-5)


def test_share_form_of_eq5_by_hand():
    """One image, K = 3 kernels on a 1×1 map, J = 1; kernels 0 and 2 are irrelevant to its class."""
    first = torch.tensor([1.0, -2.0, 3.0]).view(1, 1, 3, 1, 1)  # |g| = 1, 2, 3: mass 6
    competitor = torch.tensor([0.5, -0.5, 1.0]).view(1, 1, 3, 1, 1)  # mass 2
    irrelevant = torch.tensor([[True, False, True]])
    # first term (1 + 3) / 6; second term: the competitor's mass over both classes' mass, 2 / (6 + 2)
    assert channel_constraint(first, competitor, irrelevant, form="share").item() == pytest.approx(4 / 6 + 2 / 8)
    only_kernel_1 = torch.tensor([[False, True, False]])
    assert channel_constraint(first, competitor, irrelevant, competitor_kernels=only_kernel_1,
                              form="share").item() == pytest.approx(4 / 6 + 0.5 / 8)
    assert channel_constraint(first, competitor, irrelevant, competitor_weight=torch.zeros(1),
                              form="share").item() == pytest.approx(4 / 6)


def test_share_form_of_eq5_equals_a_naive_loop():
    gen = torch.Generator().manual_seed(4)
    g1, g2 = torch.randn(2, 3, 4, 2, 2, generator=gen), torch.randn(2, 3, 4, 2, 2, generator=gen)
    irrelevant = torch.rand(3, 4, generator=gen) > 0.5
    weight = torch.tensor([1.0, 0.0, 1.0])
    expected = 0.0
    for b in range(3):
        mass1 = [float(g1[:, b, k].abs().sum()) for k in range(4)]
        mass2 = [float(g2[:, b, k].abs().sum()) for k in range(4)]
        expected += sum(v for v, off in zip(mass1, irrelevant[b].tolist()) if off) / sum(mass1)
        expected += float(weight[b]) * sum(mass2) / (sum(mass1) + sum(mass2))
    value = channel_constraint(g1, g2, irrelevant, competitor_weight=weight, form="share")
    assert value.item() == pytest.approx(expected / 3, rel=1e-5)


def test_competitor_choices():
    logits = torch.tensor([[3.0, 2.0, 1.0], [0.0, 5.0, 1.0]])
    y = torch.tensor([0, 2])
    first = first_classes(logits, y, "label")
    s, w = competitor_classes(logits, y, first, "runner_up")
    assert s.tolist() == [1, 1] and w.tolist() == [1, 1]
    s, w = competitor_classes(logits, y, first, "wrong_top1")
    assert s.tolist() == [0, 1] and w.tolist() == [0, 1]
    assert first_classes(logits, y, "pred").tolist() == [0, 1]


class SkipNet(nn.Module):
    """stem → residual block (conv, BN, ReLU, conv, BN, ``act``, + identity, ReLU) → mean → fc: a ResNet in
    miniature whose tail after ``conv2`` holds ``act``."""

    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.conv1, self.bn1, self.act = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), act
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        out = self.act(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(h))))))
        return self.fc(torch.relu(out + h).mean((2, 3)))


def naive_share_eq6(model: nn.Module, layer: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    masks: torch.Tensor) -> torch.Tensor:
    """Eq. 6's share form with the whole graph kept, image by image: Σ_bg |∂ŷ_y/∂m| / Σ |∂ŷ_y/∂m| (J = 1, δ = 0)."""
    shares = []
    for i in range(len(x)):
        seen: list[torch.Tensor] = []
        handle = layer.register_forward_hook(lambda module, inputs, output, seen=seen: seen.append(output))
        try:
            logit = model(x[i:i + 1])[0, y[i]]
        finally:
            handle.remove()
        (g,) = torch.autograd.grad(logit, seen[0], create_graph=True)
        mass = g.abs().sum(1)[0]
        shares.append((mass * ~masks[i]).sum() / mass.sum())
    return torch.stack(shares).mean()


@pytest.mark.parametrize(("act", "trunk_free"), [(nn.ReLU(), True), (nn.GELU(), False)])
def test_space_term_without_the_trunk_graph_only_where_exact(act, trunk_free):
    """The masked pass drops the trunk's graph only for a piecewise-linear tail; parameter gradients equal the
    full-graph reference either way (with GELU in the tail the trunk's own gradients are non-zero)."""
    torch.manual_seed(0)
    model = SkipNet(act)
    model.train()(torch.randn(16, 1, 8, 8))  # BatchNorm running statistics that are not the identity
    model.eval()
    x, y, masks = batch()
    cfg = TreatConfig(constraints=("space",), space_layers=["conv2"], form="share", lam_space=1.0, noise_draws=1,
                      delta=0.0, expansion=0)
    loss = TreatmentLoss(model, cfg, (1, 8, 8), None, MaskBank(masks, torch.ones(len(x), dtype=torch.bool),
                                                                 list(range(len(x)))))
    assert loss.trunk_free is trunk_free
    params = list(model.parameters())
    got = torch.autograd.grad(loss.space_term(x, y, masks), params, allow_unused=True)
    want = torch.autograd.grad(naive_share_eq6(model, model.conv2, x, y, masks), params, allow_unused=True)
    for g, w in zip(got, want, strict=True):
        g = torch.zeros(()) if g is None else g
        w = torch.zeros(()) if w is None else w
        assert torch.allclose(g, w, atol=1e-6), (g, w)
    stem = want[0]
    assert (stem is None or bool(stem.abs().sum() == 0)) is trunk_free
    loss.close()


class Divided(nn.Module):
    def __init__(self, reciprocal: bool) -> None:
        super().__init__()
        self.conv, self.fc, self.reciprocal = nn.Conv2d(1, 4, 3, padding=1), nn.Linear(4, 3), reciprocal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))
        h = 2 / (h + 1) if self.reciprocal else h / 2
        return self.fc(h.mean((2, 3)))


@pytest.mark.parametrize(("reciprocal", "linear"), [(False, True), (True, False)])
def test_a_tail_divided_by_a_constant_is_piecewise_linear_and_its_reciprocal_is_not(reciprocal, linear):
    assert NoiseReplay(Divided(reciprocal).eval(), ["conv"]).piecewise_linear_tail("conv") is linear
