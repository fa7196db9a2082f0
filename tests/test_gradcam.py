"""analyses/gradcam.py against Captum: our Grad-CAM is kept only because it equals LayerGradCam."""

from __future__ import annotations

import pytest
import torch

from modeldoctor.analyses.gradcam import derivative_map, grad_cam, summed_derivative_map
from modeldoctor.models.zoo import build_model

captum_attr = pytest.importorskip("captum.attr")


@pytest.mark.parametrize("layer", ["features.3", "features.11"])
def test_grad_cam_equals_captum_layer_grad_cam(layer: str) -> None:
    torch.manual_seed(0)
    model = build_model("simple-cnn", 4, 1, 16).eval()
    x = torch.randn(3, 1, 16, 16)
    target = torch.tensor([0, 1, 3])
    ours = grad_cam(model, x, layer, target, upsample=False)
    module = model.get_submodule(layer)
    theirs = captum_attr.LayerGradCam(model, module).attribute(x, target=target, relu_attributions=True)
    assert torch.allclose(ours, theirs.squeeze(1), atol=1e-6)
    upsampled = grad_cam(model, x, layer, target)
    reference = captum_attr.LayerAttribution.interpolate(theirs, (16, 16), interpolate_mode="bilinear")
    assert torch.allclose(upsampled, reference.squeeze(1), atol=1e-5)


def test_summed_derivative_map_is_the_noise_free_derivative_map() -> None:
    torch.manual_seed(0)
    model = build_model("simple-cnn", 4, 1, 16).eval()
    x = torch.randn(2, 1, 16, 16)
    small = summed_derivative_map(model, x, "features.7", upsample=False)
    assert small.shape == (2, 8, 8) and bool((small >= 0).all())
    grads = torch.randn(3, 2, 5, 4, 4)
    by_hand = grads.abs().sum(2).mean(0)  # Σ_k |g|, averaged over the J draws
    assert torch.allclose(derivative_map(grads, (4, 4)), by_hand, atol=1e-6)
