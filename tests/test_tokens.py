"""Token sequences as feature maps (core/tokens.py): layouts found from shapes, the default layer of a class-token ViT
(patch gradients non-zero there, zero after the last attention), and the diagnosis of a small ViT against a
one-sample autograd loop over the patch tokens (fx replay and hook fallback, with and without noise)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modeldoctor.core.errors import UserError
from modeldoctor.core.layers import FeatureCapture, default_layer, layer_table, replace_output
from modeldoctor.core.replay import NoiseReplay, draw_noise
from modeldoctor.core.tokens import TokenLayout, detect_layout, parse_layout, set_token_layout
from modeldoctor.doctor.diagnosis import diagnose, sample_seeds
from modeldoctor.models.probe import require_cnn
from modeldoctor.models.zoo import build_model
from toys import Items, layer_gradient

pytestmark = pytest.mark.usefixtures("one_thread")


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _tiny_vit() -> nn.Module:
    torch.manual_seed(0)
    return build_model("tiny-vit", 3, 1, 28).eval()


def _timm_vit(**kw) -> nn.Module:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                             num_classes=3, in_chans=1, **kw).eval()


@pytest.mark.parametrize(("shape", "hw", "expected"), [
    ((2, 197, 768), (224, 224), "tokens 1+14x14"),     # ViT-B/16: class token
    ((2, 198, 192), (224, 224), "tokens 2+14x14"),     # DeiT distilled: class + distillation
    ((2, 201, 384), (224, 224), "tokens 5+14x14"),     # class + 4 registers
    ((2, 49, 768), (224, 224), "tokens 0+7x7"),        # no class token (Swin-like sequence)
    ((2, 7, 7, 768), (224, 224), "nhwc"),              # Swin / ConvNeXt channels-last
    ((2, 768, 7, 7), (224, 224), "nchw"),              # conv
    ((2, 96, 56, 56), (224, 224), "nchw"),
    ((2, 1 + 4 * 6, 128), (64, 96), "tokens 1+4x6"),  # non-square input: one stride for both sides
])
def test_layouts_are_found_from_shapes(shape, hw, expected) -> None:
    assert str(detect_layout(shape, hw, 2)) == expected


def test_windows_and_pooled_outputs_are_no_feature_maps() -> None:
    assert detect_layout((8, 49, 96), (56, 56), 2) is None  # window-partitioned attention: batch × windows
    assert detect_layout((2, 768), (224, 224), 2) is None
    assert detect_layout((2, 300, 64), (16, 16), 2) is None  # more tokens than pixels + 16 special tokens
    assert str(detect_layout((2, 7, 7, 7), (224, 224), 2, nn.LayerNorm(7))) == "nhwc"  # ambiguous: the module says
    assert str(detect_layout((2, 7, 7, 7), (224, 224), 2, nn.Conv2d(7, 7, 1))) == "nchw"


def test_overrides_parse_and_round_trip() -> None:
    assert parse_layout("tokens:1:14x14").grid == (14, 14) and parse_layout("auto").kind is None
    with pytest.raises(UserError, match="unknown token layout 'tokens:x'; use auto, nchw"):
        parse_layout("tokens:x")
    rule = parse_layout("tokens:3")
    assert str(detect_layout((2, 3 + 6, 5), (20, 30), 2, rule=rule)) == "tokens 3+2x3"
    x = torch.randn(2, 1 + 12, 5)
    layout = TokenLayout("tokens", (3, 4), 1)
    m = layout.to_map(x)
    assert m.shape == (2, 5, 3, 4) and torch.equal(m[1, :, 2, 1], x[1, 1 + 2 * 4 + 1])  # position (i, j) = token i·W+j
    assert torch.equal(layout.from_map(m, x), x)
    nhwc = TokenLayout("nhwc", (3, 4))
    y = torch.randn(2, 3, 4, 5)
    assert torch.equal(nhwc.from_map(nhwc.to_map(y), y), y)


def test_class_token_vit_default_is_before_the_last_attention_and_its_patches_reach_the_logits() -> None:
    model = _tiny_vit()
    table = {t.name: t for t in layer_table(model, (1, 28, 28))}
    assert table["blocks.1"].layout == "tokens 1+7x7" and table["blocks.1"].out_shape == (32, 7, 7)
    assert table["patch_embed"].layout == "nchw"
    default = default_layer(model, (1, 28, 28))
    assert default == "blocks.1.norm1"
    x = torch.randn(2, 1, 28, 28)
    assert layer_gradient(model, default, x)[:, 1:].abs().sum() > 0
    for later in ("blocks.1.norm2", "blocks.1", "norm"):  # after the last attention only the class token counts
        assert layer_gradient(model, later, x)[:, 1:].abs().sum() == 0
    assert _hooks(model) == 0 and not model.training


def test_timm_vit_with_registers_default_and_layouts() -> None:
    model = _timm_vit(reg_tokens=2)
    table = {t.name: t for t in layer_table(model, (1, 32, 32))}
    assert table["blocks.1"].layout == "tokens 3+4x4"
    default = default_layer(model, (1, 32, 32))
    assert default == "blocks.1.norm1"
    assert layer_gradient(model, default, torch.randn(2, 1, 32, 32))[:, 3:].abs().sum() > 0


def _reference_sums(model: nn.Module, data: Items, layer: str, prefix: int, J: int, delta: float, seed: int,
                    scale: float, classes: int = 3) -> torch.Tensor:
    """Σ over samples of (1/J) Σ_j Σ_positions |∂ŷ_label/∂(m + σ^j)|, one sample and one draw at a time, with the
    patch tokens of ``layer``'s output replaced by m + σ^j (tokens (N, D) ↔ map (D, H, W) written out here);
    sample ``i`` draws its noise with the seed of dataset index ``data.index[i]`` (default ``i``)."""
    sums = torch.zeros(classes, model.get_submodule(layer).normalized_shape[0], dtype=torch.float64)
    index = getattr(data, "index", list(range(len(data))))
    for i in range(len(data)):
        x = data.x[i:i + 1]
        out: dict[str, torch.Tensor] = {}
        handle = model.get_submodule(layer).register_forward_hook(lambda m, a, o, out=out: out.setdefault("o", o.detach()))
        with torch.no_grad():
            model(x)
        handle.remove()
        tokens = out["o"]
        D = tokens.shape[2]
        side = int((tokens.shape[1] - prefix) ** 0.5)
        as_map = tokens[:, prefix:].transpose(1, 2).reshape(1, D, side, side)
        noise = draw_noise(as_map, J, delta * scale, sample_seeds=sample_seeds(torch.tensor([index[i]]), seed, layer))
        total = torch.zeros(D, dtype=torch.float64)
        for j in range(J):
            z = (tokens[:, prefix:] + noise[j].reshape(1, D, side * side).transpose(1, 2)).requires_grad_(True)

            def hook(module, inputs, output, z=z):
                return torch.cat([output[:, :prefix], z], 1)

            handle = model.get_submodule(layer).register_forward_hook(hook)
            try:
                logits = model(x)
            finally:
                handle.remove()
            (grad,) = torch.autograd.grad(logits[0, int(data.y[i])], z)
            total += grad[0].abs().sum(0).double()  # Σ over positions, per embedding dim
        sums[int(data.y[i])] += total / J
    return sums


@pytest.mark.parametrize("fallback", [False, True])
@pytest.mark.parametrize(("J", "delta"), [(1, 0.0), (3, 0.2)])
@pytest.mark.parametrize("which", ["tiny-vit", "timm"])
def test_vit_diagnosis_equals_one_sample_autograd_reference(which: str, J: int, delta: float, fallback: bool) -> None:
    model = _tiny_vit() if which == "tiny-vit" else _timm_vit()
    size, prefix = (28, 1) if which == "tiny-vit" else (32, 1)
    g = torch.Generator().manual_seed(3)
    data = Items(torch.randn(9, 1, size, size, generator=g), torch.arange(9) % 3)
    layer = default_layer(model, (1, size, size))
    d = diagnose(model, data, layer, noise_draws=J, delta=delta, target="label", require_correct=False,
                 batch_size=4, seed=5, force_fallback=fallback)
    info = d.layers[layer]
    feats = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, a, o: feats.append(o.detach()[:, prefix:]))
    with torch.no_grad():
        model(data.x)
    handle.remove()
    assert info.scale == pytest.approx(float(feats[0].double().square().mean().sqrt()), rel=1e-5)
    assert info.shape[0] == feats[0].shape[2] and info.shape[1] * info.shape[2] == feats[0].shape[1]
    reference = _reference_sums(model, data, layer, prefix, J, delta, 5, info.scale)
    cosine = torch.nn.functional.cosine_similarity(info.sums, reference, dim=1)
    assert (cosine >= 0.999).all(), cosine
    assert torch.allclose(info.sums, reference, rtol=1e-4, atol=1e-6)
    assert (d.fallback_reason is not None) == fallback
    assert _hooks(model) == 0 and not model.training


def test_capture_and_replace_output_see_the_map_and_keep_the_class_token() -> None:
    model = _tiny_vit()
    x = torch.randn(2, 1, 28, 28)
    with FeatureCapture(model, ["blocks.0"]) as cap, torch.no_grad():
        model(x)
    assert cap.captured["blocks.0"].shape == (2, 32, 7, 7)
    seen = []
    with replace_output(model, "blocks.1", lambda m: seen.append(m.shape) or torch.zeros_like(m)), torch.no_grad():
        zeroed = model(x)
    with torch.no_grad():  # only the class token of blocks.1 reaches the head: zeroing patches changes nothing
        assert seen == [(2, 32, 7, 7)] and torch.allclose(zeroed, model(x), atol=1e-6)
    assert _hooks(model) == 0


def test_override_is_used_and_a_wrong_one_is_refused_in_one_line() -> None:
    model = _tiny_vit()
    x = torch.randn(1, 1, 28, 28)
    try:
        set_token_layout(model, "tokens:1:1x49")  # 1 + 49 tokens read as one row of patches
        assert NoiseReplay(model, ["blocks.0"]).forward(x).features["blocks.0"].shape == (1, 32, 1, 49)
        set_token_layout(model, "tokens:0:5x5")  # 25 tokens, but the layer has 50
        with pytest.raises(UserError, match=r"no patch grid of a \(28, 28\) input; pass --token-layout"):
            NoiseReplay(model, ["blocks.0"]).forward(x)
    finally:
        set_token_layout(model, None)
    assert NoiseReplay(model, ["blocks.0"]).forward(x).features["blocks.0"].shape == (1, 32, 7, 7)


def test_refusal_by_capability() -> None:
    require_cnn(_tiny_vit(), "tiny-vit", (1, 28, 28))
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    with pytest.raises(UserError, match="mlp has no Conv2d, norm or block layer"):
        require_cnn(mlp, "mlp")
    # A CNN is accepted at any size it runs at (a 1-px ResNet trains; Eq. 3-4 work on 1x1 maps), a model with only
    # norm / block layers must give a spatial map.
    require_cnn(nn.Sequential(nn.Conv2d(1, 2, 4), nn.Flatten(), nn.Linear(2, 2)), "pooled", (1, 4, 4))
    flat = nn.Sequential(nn.Flatten(), nn.Linear(16, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    with pytest.raises(UserError, match="no layer whose output is a spatial feature map for 4x4 inputs"):
        require_cnn(flat, "flat", (1, 4, 4))


def test_grad_cam_summed_map_and_explain_read_the_patch_grid() -> None:
    from modeldoctor.analyses.gradcam import grad_cam, summed_derivative_map
    from modeldoctor.doctor.explain import explain_image

    model = _tiny_vit()
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    layer = "blocks.1.norm1"
    target = torch.tensor([0, 2])
    feats = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, a, o: feats.append(o.detach()))
    with torch.no_grad():
        model(x)
    handle.remove()
    for b in range(2):  # Grad-CAM by hand on the patch tokens (N, D): α_d = mean_n ∂ŷ/∂t_nd, relu(Σ_d α_d t_nd)
        grad = layer_gradient(model, layer, x[b:b + 1], int(target[b]))[0, 1:]
        tokens = feats[0][b, 1:]
        cam = torch.relu((grad.mean(0) * tokens).sum(1)).reshape(7, 7)
        assert torch.allclose(grad_cam(model, x, layer, target, upsample=False)[b], cam, atol=1e-6)
        summed = grad.abs().sum(1).reshape(7, 7)
        assert torch.allclose(summed_derivative_map(model, x, layer, target, upsample=False)[b], summed, atol=1e-6)
    data = Items(torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(5)), torch.arange(6) % 3)
    d = diagnose(model, data, layer, noise_draws=2, target="label", require_correct=False)
    mask = torch.zeros(28, 28, dtype=torch.bool)
    mask[8:20, 8:20] = True
    explained = explain_image(model, x[0], d, label=0, object_mask=mask)
    assert explained.derivative_map.shape == (28, 28) and 0 < explained.background_share < 1
    assert _hooks(model) == 0


def test_all_layers_of_a_vit_are_its_token_layers_in_depth_order() -> None:
    from modeldoctor.core.layers import all_layers
    from modeldoctor.doctor.discovery import discovery_statistics

    model = _tiny_vit()
    names = all_layers(model, (1, 28, 28))
    assert names == ["patch_embed", "blocks.0.norm1", "blocks.0.norm2", "blocks.1.norm1"]  # later: class token only
    data = Items(torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(6)), torch.arange(6) % 3)
    d = diagnose(model, data, "all", noise_draws=1, target="label", require_correct=False)
    depths = [d.layers[n].depth for n in names]
    assert depths == sorted(depths) and min(depths) >= 0
    stats = discovery_statistics(d)
    assert [s["name"] for s in stats["layers"]] == names and all(s["channels"] == 32 for s in stats["layers"])
    assert -1 <= stats["trend_kernels_for_90pct"]["spearman"] <= 1


def test_a_layer_inside_another_chosen_layer_is_refused_in_one_line() -> None:
    with pytest.raises(UserError, match="layer 'blocks.1.norm1' lies inside layer 'blocks.1'; choose one"):
        NoiseReplay(_tiny_vit(), ["blocks.1", "blocks.1.norm1"])


@pytest.mark.slow
def test_tiny_vit_trained_on_mnist5k_diagnosis_equals_the_autograd_reference(mnist5k) -> None:
    from modeldoctor.training import TrainConfig, evaluate, fit

    torch.manual_seed(0)
    model = build_model("tiny-vit", 10, 1, 28)
    fit(model, mnist5k.train, mnist5k.val, 10, TrainConfig(epochs=8, batch_size=32, optimizer="adam", lr=2e-3))
    assert evaluate(model, mnist5k.val, 10)["accuracy"] > 0.6  # chance is 0.1
    model.eval()
    layer = default_layer(model, (1, 28, 28))
    d = diagnose(model, mnist5k.train, layer, noise_draws=3, samples_per_class=2, profiles_per_class=2, seed=1)
    chosen = [int(i) for i in d.profile_index.flatten() if i >= 0]
    items = [mnist5k.train[i] for i in chosen]
    assert all(item[2] == i for item, i in zip(items, chosen))
    data = Items(torch.stack([item[0] for item in items]), torch.tensor([item[1] for item in items]))
    data.index = chosen  # type: ignore[attr-defined]
    info = d.layers[layer]
    reference = _reference_sums(model, data, layer, 1, 3, 0.1, 1, info.scale, classes=10)
    cosine = torch.nn.functional.cosine_similarity(info.sums, reference, dim=1)
    assert (cosine >= 0.999).all(), cosine
