"""Per-image maps for the report: Grad-CAM and Model Doctor's summed derivative map.

Summed derivative map (paper, Discovery 1 / Fig. 2b): ``Σ_k |∂ŷ_n/∂m_k^r|`` at layer r, upsampled to the image.

Grad-CAM (Selvaraju et al. 2017, Eq. 1–2), the baseline the paper's Fig. 5 compares against:

    α_k^c = (1/Z) Σ_ij ∂y^c/∂A^k_ij          (Eq. 1: global-average-pooled gradients)
    L^c   = ReLU(Σ_k α_k^c A^k)               (Eq. 2)

Our own few lines rather than pytorch-grad-cam: that library (which installs cleanly here) calls
``.backward()`` and zeroes the model's ``.grad``, pulls in OpenCV, and the report must leave the user's model
untouched.  They equal Captum's ``LayerGradCam`` (``relu_attributions=True``) on the same layer, before
and after bilinear upsampling (tests/test_gradcam.py).  For a network ending in global average pooling and one
linear layer, ``α_k^c = w_ck / Z`` and Grad-CAM equals ReLU of the CAM (Zhou et al. 2016) ``Σ_k w_ck A^k``
divided by ``Z`` (tested).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from modeldoctor.core.errors import UserError
from modeldoctor.core.layers import LayerRef, replace_output, train_mode
from modeldoctor.core.outputs import select_logits


def layer_gradient(model: nn.Module, x: torch.Tensor, layer: LayerRef, target: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(m, ∂ŷ/∂m, logits)`` at ``layer`` for class ``target`` (default: the prediction), in eval mode.

    Mode, ``requires_grad`` and ``.grad`` of the model are left as they were (``torch.autograd.grad``).
    """
    held: list[torch.Tensor] = []

    def keep(output: torch.Tensor) -> torch.Tensor:
        if not output.requires_grad:  # a frozen model: start the graph at the layer
            output = output.detach().requires_grad_(True)
        held.append(output)
        return output

    with train_mode(model, False), torch.enable_grad(), replace_output(model, layer, keep):
        logits = select_logits(model(x))
        cls = logits.argmax(1) if target is None else target
        score = logits.gather(1, cls.view(-1, 1)).sum()
        (grad,) = torch.autograd.grad(score, held[0])
    return held[0].detach(), grad, logits.detach()


def grad_cam(model: nn.Module, x: torch.Tensor, layer: LayerRef | None = None, target: torch.Tensor | None = None,
             upsample: bool = True) -> torch.Tensor:
    """Grad-CAM maps (N, H, W) of class ``target`` (default: the prediction) at ``layer``, ≥ 0, unnormalised.

    ``layer=None`` takes the feature map entering the global pooling, i.e. the last *rectified* maps, as
    Selvaraju et al. do; a raw conv output (before BatchNorm and ReLU) can make Σ_k α_k A^k negative everywhere.
    """
    if layer is None:
        feature, grad, _ = _pool_input_gradient(model, x, target)
    else:
        feature, grad, _ = layer_gradient(model, x, layer, target)
    cam = F.relu((grad.mean(dim=(2, 3), keepdim=True) * feature).sum(1))
    return _to_input(cam, x) if upsample else cam


def _pool_input_gradient(model: nn.Module, x: torch.Tensor, target: torch.Tensor | None
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    pools = [m for m in model.modules() if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d))]
    if not pools:
        raise UserError("Grad-CAM needs a global pooling layer to find the last feature maps; pass layer=NAME")
    held: list[torch.Tensor] = []

    def keep(module: nn.Module, inputs: tuple) -> tuple:
        feature = inputs[0] if inputs[0].requires_grad else inputs[0].detach().requires_grad_(True)
        held.append(feature)
        return (feature, *inputs[1:])

    handle = pools[-1].register_forward_pre_hook(keep)
    try:
        with train_mode(model, False), torch.enable_grad():
            logits = select_logits(model(x))
            cls = logits.argmax(1) if target is None else target
            (grad,) = torch.autograd.grad(logits.gather(1, cls.view(-1, 1)).sum(), held[-1])
    finally:
        handle.remove()
    return held[-1].detach(), grad, logits.detach()


def derivative_map(grads: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Fig. 2(b), the summed derivative map: ``Σ_k |∂ŷ/∂m_k|`` per position, averaged over the J noise draws,
    bilinearly upsampled to the input ``size``: (J, N, K, h, w) → (N, H, W)."""
    per_position = grads.abs().sum(2).mean(0)
    return F.interpolate(per_position.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)


def summed_derivative_map(model: nn.Module, x: torch.Tensor, layer: LayerRef, target: torch.Tensor | None = None,
                          upsample: bool = True) -> torch.Tensor:
    """:func:`derivative_map` without noise (J = 1) for a batch: (N, H, W) at ``layer`` for class ``target``
    (default: the prediction); ``upsample=False`` keeps the layer's (N, h, w)."""
    _, grad, _ = layer_gradient(model, x, layer, target)
    if not upsample:
        return grad.abs().sum(1)
    return derivative_map(grad.unsqueeze(0), (x.shape[-2], x.shape[-1]))


def _to_input(maps: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(maps.unsqueeze(1), size=x.shape[-2:], mode="bilinear", align_corners=False).squeeze(1)

