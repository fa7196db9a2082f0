"""FocusedDropout (Liu et al. 2022; Kim, Samith, Utama §3.2, Algorithm 1): keep only where the strongest channel fires.

In a participating training batch, for each sample: the channel ``k`` with the highest spatial mean
activation is chosen, ``γ ~ Uniform(low, high)`` is drawn, and the binary mask
``m(i, j) = [c_k(i, j) > γ · max c_k]`` multiplies *every* channel (``C* = C ⊙ m``). In eval mode it is
the identity.  No rescaling of the kept units: Algorithm 1 has none.

γ range: the default is ``(0.6, 0.9)``, the range in the algorithm box of both papers (Kim et al. implement
the box); the original FocusedDropout paper's text says ``[0.3, 0.6]`` — pass ``gamma_range=(0.3, 0.6)``
for that reading.  The participation rate ``par_rate`` is the fraction of training batches (forward
passes) in which the mask is applied; 0.1 in both papers.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from modeldoctor.core.errors import UserError

DEFAULT_GAMMA_RANGE = (0.6, 0.9)


def focused_mask(features: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Algorithm 1 lines 4–11: the (N, 1, H, W) mask ``[c_k > γ·max c_k]``, ``k = argmax_i mean(c_i)`` per sample.

    The peak position itself is always kept, so a channel whose maximum is ≤ 0 (where ``γ·max ≥ max``)
    still keeps its peak instead of silencing the whole sample; for a positive maximum this changes nothing.
    """
    if features.dim() != 4:
        raise UserError(f"FocusedDropout needs (N, C, H, W) feature maps, got shape {tuple(features.shape)}; "
                        "insert it after a convolutional layer or stage")
    with torch.no_grad():
        top_channel = features.mean(dim=(2, 3)).argmax(dim=1)
        chosen = features[torch.arange(features.shape[0], device=features.device), top_channel]
        peak = chosen.flatten(1).max(dim=1).values.view(-1, 1, 1)
        threshold = gamma.to(features).view(-1, 1, 1) * peak
        keep = (chosen > threshold) | (chosen == peak)
        return keep.unsqueeze(1).to(features.dtype)


def check_options(par_rate: float, gamma_range: tuple[float, float] | list[float]) -> None:
    low, high = gamma_range
    if not 0.0 <= par_rate <= 1.0:
        raise UserError(f"FocusedDropout participation rate must be in [0, 1], got {par_rate}; e.g. par=0.1")
    if not 0.0 <= low <= high < 1.0:
        raise UserError(f"FocusedDropout γ range must satisfy 0 <= low <= high < 1, got {tuple(gamma_range)}; "
                        "e.g. gamma=0.6:0.9")


class FocusedDropout(nn.Module):
    """Algorithm 1 as a layer; ``generator`` (CPU) makes the participation draws and γ reproducible for tests."""

    def __init__(self, par_rate: float = 0.1, gamma_range: tuple[float, float] = DEFAULT_GAMMA_RANGE,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        check_options(par_rate, gamma_range)
        low, high = gamma_range
        self.par_rate = float(par_rate)
        self.gamma_range = (float(low), float(high))
        self.generator = generator

    def extra_repr(self) -> str:
        return f"par_rate={self.par_rate}, gamma_range={self.gamma_range}"

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return features
        participates = torch.rand((), generator=self.generator).item() < self.par_rate
        if not participates:
            return features
        low, high = self.gamma_range
        gamma = low + (high - low) * torch.rand(features.shape[0], generator=self.generator)
        return features * focused_mask(features, gamma)


def insert_focused_dropout(model: nn.Module, after: str = "layer4", par_rate: float = 0.1,
                           gamma_range: tuple[float, float] = DEFAULT_GAMMA_RANGE,
                           generator: torch.Generator | None = None) -> FocusedDropout:
    """Replace submodule ``after`` by ``nn.Sequential(module, FocusedDropout)`` in place; return the new layer.

    The wrapped module's parameters move from ``after.*`` to ``after.0.*`` in the state dict; checkpoints
    record the insertion (``train_config["focused_dropout"]``) so loading re-inserts it first.
    """
    modules = dict(model.named_modules())
    if not after or after not in modules:
        top = ", ".join(name for name, _ in model.named_children())
        raise UserError(f"unknown layer {after!r} for FocusedDropout; name a submodule such as one of: {top} "
                        "(`modeldoctor layers` lists conv layers)")
    dropout = FocusedDropout(par_rate, gamma_range, generator)
    parent_name, _, child = after.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, nn.Sequential(modules[after], dropout))
    return dropout


def parse_focused_dropout(text: str) -> dict[str, Any]:
    """``after=LAYER,par=0.1[,gamma=LOW:HIGH]`` → keyword arguments of :func:`insert_focused_dropout`."""
    options: dict[str, Any] = {"after": None, "par_rate": 0.1, "gamma_range": list(DEFAULT_GAMMA_RANGE)}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            if key == "after":
                options["after"] = value
            elif key == "par":
                options["par_rate"] = float(value)
            elif key == "gamma":
                low, high = value.split(":")
                options["gamma_range"] = [float(low), float(high)]
            else:
                raise ValueError
        except ValueError:
            raise UserError(f"cannot read {item!r} in --focused-dropout {text!r}; "
                            "write after=LAYER,par=0.1[,gamma=0.6:0.9]") from None
    if not options["after"]:
        raise UserError(f"--focused-dropout {text!r} names no layer; write after=LAYER,par=0.1 (e.g. after=layer3)")
    check_options(options["par_rate"], options["gamma_range"])
    return options
