"""Background reliance of a classifier on masked images: how much of its evidence for the true class lies outside
the object.  Two attribution shares per image, each 0 for a model that reads only the object and 1 for one that
reads only the background (the third measure, the probability drop under a background swap, needs composites
and lives in :mod:`modeldoctor.doctor.shortcut`):

* activation share at layer r (the quantity the treatment's default ``form="activation"`` penalises, Eq. 6):
  ``A = |Σ_k m_k ⊙ ∂ŷ_n/∂m_k|`` (no noise, J = 1) and ``share = Σ_hw I_bg A / Σ_hw A`` with
  ``I_bg = background_mask(mask, (h, w), E)``: a feature cell is background when its whole footprint lies
  outside the object grown by ``E`` input pixels (supp. Table 4 by size).
* Grad-CAM share (Selvaraju et al. Eq. 1–2, on the last rectified maps): ``L = ReLU(Σ_k α_k A^k)`` upsampled to
  the input, ``share = Σ_{outside} L / Σ L`` with outside = not in the object grown by ``E`` pixels.

Unlike the paper's summed derivative map Σ_k |∂ŷ/∂m_k|, both depend on the activations m themselves and hence
on every weight before the layer, so they move when the features that carry the background change.  An image
whose map is zero everywhere has no share (NaN, left out of class means).  ŷ_n is the true class's logit.
"""

from __future__ import annotations

import torch
from torch import nn

from modeldoctor.analyses.gradcam import grad_cam, layer_gradient
from modeldoctor.core.device import model_device
from modeldoctor.core.errors import UserError
from modeldoctor.core.layers import LayerRef
from modeldoctor.data.masks import background_mask, default_expansion, expand_mask
from modeldoctor.doctor.constraints import activation_map

EPS = 1e-12


def outside_share(maps: torch.Tensor, outside: torch.Tensor) -> torch.Tensor:
    """``Σ outside ⊙ map / Σ map`` per image: (B, H, W) non-negative maps and (B, H, W) 0/1 → (B,); NaN where Σ map = 0."""
    maps = maps.double()
    total = maps.sum((1, 2))
    share = (maps * outside.reshape(maps.shape).to(maps)).sum((1, 2)) / total.clamp_min(EPS)
    return torch.where(total > EPS, share, torch.full_like(share, float("nan")))


def activation_share(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor, layer: LayerRef,
                     expansion: int | None = None) -> torch.Tensor:
    """(B,) background share of the activation-weighted map at ``layer`` for the true class (module docstring)."""
    features, grad, _ = layer_gradient(model, x, layer, labels)
    if features.dim() != 4:
        raise UserError(f"layer {layer} gives {features.dim()}-D outputs; the activation share needs a conv layer")
    amap = activation_map(grad.unsqueeze(0), features)
    e = default_expansion(x.shape[-1]) if expansion is None else expansion
    bg = background_mask(masks.bool(), (amap.shape[-2], amap.shape[-1]), e)
    return outside_share(amap, bg)


def gradcam_share(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor,
                  layer: LayerRef | None = None, expansion: int | None = None) -> torch.Tensor:
    """(B,) Grad-CAM's share outside the object grown by ``expansion`` pixels (``layer=None``: the maps entering
    the global pooling; a model without one uses ``layer``)."""
    e = default_expansion(x.shape[-1]) if expansion is None else expansion
    try:
        cam = grad_cam(model, x, None, labels)
    except UserError:
        if layer is None:
            raise
        cam = grad_cam(model, x, layer, labels)
    return outside_share(cam, ~expand_mask(masks.bool(), e))


def reliance_shares(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor, layer: LayerRef,
                    expansion: int | None = None, batch_size: int = 128) -> dict[str, torch.Tensor]:
    """``{"activation": (B,), "gradcam": (B,)}`` shares (on the CPU) for normalised images ``x`` (B, C, H, W) with
    true ``labels`` and bool object ``masks`` (B, H, W), in batches on the model's device; the model is left as found."""
    if masks.shape[0] != x.shape[0] or masks.shape[-2:] != x.shape[-2:]:
        raise UserError(f"masks {tuple(masks.shape)} do not match images {tuple(x.shape)}; give one mask per image")
    device = model_device(model)
    act, cam = [], []
    for xb, yb, mb in zip(x.split(batch_size), labels.split(batch_size), masks.split(batch_size)):
        xb, yb, mb = xb.to(device), yb.to(device), mb.to(device)
        act.append(activation_share(model, xb, yb, mb, layer, expansion).cpu())
        cam.append(gradcam_share(model, xb, yb, mb, layer, expansion).cpu())
    return {"activation": torch.cat(act), "gradcam": torch.cat(cam)}


def class_means(values: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float | None]:
    """Per class the mean of the finite ``values`` of its images (None where it has none)."""
    out: list[float | None] = []
    for c in range(num_classes):
        v = values[(labels == c) & values.isfinite()]
        out.append(float(v.mean()) if len(v) else None)
    return out


def finite_mean(values: torch.Tensor) -> float | None:
    v = values[values.isfinite()]
    return float(v.mean()) if len(v) else None
