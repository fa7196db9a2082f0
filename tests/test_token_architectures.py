"""Every torchvision transformer builder and one builder per timm family is accepted by capability and gets a token
layout (built on the meta device: shapes only); small real configurations of the same classes check the default
layer numerically (patch gradients non-zero there) and the diagnosis of a channels-last map against autograd."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modeldoctor.core.layers import default_layer, layer_table
from modeldoctor.doctor.diagnosis import diagnose
from modeldoctor.models.probe import fixed_input_size, require_cnn
from toys import Items, layer_gradient

pytestmark = pytest.mark.usefixtures("one_thread")


def _torchvision_transformers() -> list[str]:
    from torchvision import models as tvm

    return [n for n in tvm.list_models(module=tvm) if n.startswith(("vit_", "swin_", "maxvit_"))]


# The layout of the default layer: tokens (class-token ViTs, EfficientFormer's last stage), nhwc (Swin's final
# norm), nchw (MaxViT's attention stages keep NCHW; ConvNeXt is a CNN and keeps its last conv).
TIMM_FAMILIES = {"vit_tiny_patch16_224": "tokens", "deit_tiny_distilled_patch16_224": "tokens",
                 "swin_tiny_patch4_window7_224": "nhwc", "maxvit_tiny_tf_224": "nchw", "convnext_nano": "nchw",
                 "efficientformer_l1": "tokens"}


def _expected(name: str) -> str:
    return "tokens" if name.startswith("vit_") else "nhwc" if name.startswith("swin") else "nchw"


def _on_meta(spec: str) -> nn.Module:
    with torch.device("meta"):
        if spec.startswith("timm:"):
            timm = pytest.importorskip("timm")
            return timm.create_model(spec[5:], pretrained=False, num_classes=3)
        from torchvision import models as tvm

        return tvm.get_model(spec, weights=None, num_classes=3)


@pytest.mark.parametrize("spec", _torchvision_transformers() + [f"timm:{n}" for n in TIMM_FAMILIES])
def test_transformer_builders_are_accepted_with_a_token_layout_not_the_patch_embedding(spec: str) -> None:
    model = _on_meta(spec)
    size = fixed_input_size(model) or 224
    shape = (3, size, size)
    require_cnn(model, spec, shape)  # accepted: some layer yields a spatial map
    table = layer_table(model, shape)
    default = default_layer(model, shape)  # on meta the reach check has no numbers: the deepest spatial layer
    first_conv = next(t.name for t in table if t.kind == "Conv2d")
    chosen = next(t for t in table if t.name == default)
    expected = TIMM_FAMILIES.get(spec.removeprefix("timm:"), _expected(spec))
    assert default != first_conv and chosen.spatial, (spec, default)
    assert chosen.layout.split()[0] == expected, (spec, default, chosen.layout)
    if expected != "nchw":
        assert all(t.out_shape[1] * t.out_shape[2] > 1 for t in table if t.layout == chosen.layout)


def test_swin_v2_is_no_longer_read_as_a_cnn() -> None:
    model = _on_meta("swin_v2_t")
    assert default_layer(model, (3, 224, 224)) == "norm"  # was the patch-embedding conv features.0.0


def test_small_torchvision_vit_default_is_the_last_blocks_first_norm() -> None:
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
                              num_classes=3).eval()
    default = default_layer(model, (3, 32, 32))  # found although torchvision starts the head at zero
    assert default == "encoder.layers.encoder_layer_1.ln_1"
    nn.init.normal_(model.heads.head.weight)  # a trained head: the logits now depend on the features
    x = torch.randn(2, 3, 32, 32)
    assert layer_gradient(model, default, x)[:, 1:].abs().sum() > 0
    assert layer_gradient(model, "encoder.layers.encoder_layer_1.ln_2", x)[:, 1:].abs().sum() == 0


def _small_swin_v2() -> nn.Module:
    from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformer, SwinTransformerBlockV2

    torch.manual_seed(0)
    return SwinTransformer(patch_size=[4, 4], embed_dim=8, depths=[1, 1], num_heads=[1, 1], window_size=[2, 2],
                           num_classes=3, block=SwinTransformerBlockV2, downsample_layer=PatchMergingV2).eval()


def test_small_swin_v2_default_and_diagnosis_equal_autograd_on_channels_last_maps() -> None:
    model = _small_swin_v2()
    table = {t.name: t for t in layer_table(model, (3, 16, 16))}
    default = default_layer(model, (3, 16, 16))
    assert default == "norm" and table["norm"].layout == "nhwc" and table["norm"].out_shape == (16, 2, 2)
    g = torch.Generator().manual_seed(1)
    data = Items(torch.randn(6, 3, 16, 16, generator=g), torch.arange(6) % 3)
    d = diagnose(model, data, default, noise_draws=1, delta=0.0, target="label", require_correct=False, batch_size=4)
    reference = torch.zeros(3, 16, dtype=torch.float64)
    for i in range(len(data)):  # one sample: Σ_(h,w) |∂ŷ_label/∂x[h, w, c]| on the raw (1, H, W, C) output
        grad = layer_gradient(model, default, data.x[i:i + 1], int(data.y[i]))
        reference[int(data.y[i])] += grad[0].abs().sum((0, 1)).double()
    cosine = torch.nn.functional.cosine_similarity(d.layers[default].sums, reference, dim=1)
    assert (cosine >= 0.999).all() and torch.allclose(d.layers[default].sums, reference, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("training", [False, True])
def test_tail_reading_the_batch_size_falls_back_with_the_same_numbers(training: bool) -> None:
    """torchvision's ViT reshapes the patch-embedding conv's output with the batch size of the input image, so J
    replayed copies of that tail cannot run batched: the two-copy check (eval) or the first failing replay (train
    mode, never checked) falls back to full passes."""
    from torchvision.models import VisionTransformer

    from modeldoctor.core.replay import NoiseReplay

    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32,
                              num_classes=3)
    nn.init.normal_(model.heads.head.weight)
    model.train(training)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    replay = NoiseReplay(model, ["conv_proj"])
    with torch.no_grad():
        state = replay.forward(x)
    result = replay.gradients(state, "conv_proj", [torch.tensor([0, 1, 2])], noise_draws=2, delta=0.0)
    assert replay.fallback_reason is not None and "conv_proj" in replay.fallback_reason
    model.eval()
    for b in range(3):
        expected = layer_gradient(model, "conv_proj", x[b:b + 1], b)[0]
        assert torch.allclose(result.grads[0][0, b], expected, atol=1e-6)
        assert torch.allclose(result.grads[0][1, b], expected, atol=1e-6)
