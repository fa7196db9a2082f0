"""Receptive field of a layer's output cells, found by probing the model itself.

The probe runs a copy of the model with ReLUs as identities and max-pools as average pools of the same
geometry (same receptive field, but every input pixel of the field gets a non-zero gradient), and measures the
bounding box of ∂(centre cell of m^r)/∂x.  No architecture table is needed.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from modeldoctor.core.layers import FeatureCapture


def _linearised(model: nn.Module) -> nn.Module:
    probe = copy.deepcopy(model).eval()
    for parent in list(probe.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU, nn.GELU, nn.Hardswish)):
                setattr(parent, name, nn.Identity())
            elif isinstance(child, nn.MaxPool2d):
                setattr(parent, name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding,
                                                   ceil_mode=child.ceil_mode))
    return probe


def receptive_fields(model: nn.Module, layers: Sequence[str], input_shape: tuple[int, int, int],
                     stop_above: float | None = None) -> dict[str, int]:
    """Side (input pixels) of the receptive field of each layer's centre output cell, clipped to the input.

    One forward pass of the probe serves every layer.  ``stop_above``: layers are taken in order and the scan
    ends after two consecutive ones whose field exceeds it (fields only grow along the main path), so a
    deep network is not probed layer by layer to the end when only the shallow layers matter.
    """
    probe = _linearised(model)
    device = next(model.parameters()).device
    x = torch.randn(1, *input_shape, device=device, requires_grad=True)
    with FeatureCapture(probe, list(layers), detach=False) as cap:
        probe(x)
    fields: dict[str, int] = {}
    above = 0
    for name in layers:
        feature = cap.captured[name]
        h, w = feature.shape[-2] // 2, feature.shape[-1] // 2
        (grad,) = torch.autograd.grad(feature[0, :, h, w].abs().sum(), x, retain_graph=True)
        rows, cols = torch.nonzero(grad[0].abs().sum(0) > 0, as_tuple=True)
        fields[name] = (int(max(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1)) if len(rows)
                        else int(max(input_shape[1:])))
        above = above + 1 if stop_above is not None and fields[name] > stop_above else 0
        if above == 2:
            break
    return fields


def receptive_field(model: nn.Module, layer: str, input_shape: tuple[int, int, int]) -> int:
    """:func:`receptive_fields` of one layer."""
    return receptive_fields(model, [layer], input_shape)[layer]
