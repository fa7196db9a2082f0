"""Smooth backward for ReLU networks: forward exactly ReLU, backward through a softplus_β surrogate.

For a piecewise-linear network (ReLU, max-pool, eval BatchNorm) the gradient ∂ŷ/∂m^r at a layer r does not
depend on any weight before r: the derivative of a ReLU's on/off pattern is zero.  A constraint on ∂ŷ/∂m^r
(Eq. 5-6) can then only train the layers after r.  Inside :func:`smooth_backward`, every swapped ReLU
computes

    y = relu(x).detach() + (s(x) - s(x).detach()),   s(x) = softplus_β(x) = log(1 + exp(β x)) / β

whose value is bit-identical to ``relu(x)`` (the bracket is exactly 0.0) while its derivative is
σ(β x), smooth in x; so gradients of gradients reach every earlier layer.  β → ∞ recovers ReLU's derivative.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from modeldoctor.core.errors import UserError


class SurrogateReLU(nn.Module):
    """ReLU whose backward follows softplus_β while :attr:`active` (see the module docstring)."""

    def __init__(self, beta: float) -> None:
        super().__init__()
        if not beta > 0:
            raise UserError(f"the smooth-backward β must be > 0, got {beta}; e.g. --smooth-beta 10")
        self.beta = beta
        self.active = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return F.relu(x)
        s = F.softplus(x, beta=self.beta)
        return F.relu(x).detach() + (s - s.detach())

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


class ClampHardsigmoid(nn.Module):
    """hardsigmoid(x) = clamp(x + 3, 0, 6) / 6 from ops with a double backward (PyTorch's fused kernel has none)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + 3).clamp(0, 6) / 6


class ClampHardswish(nn.Module):
    """hardswish(x) = x · clamp(x + 3, 0, 6) / 6, twice differentiable like :class:`ClampHardsigmoid`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (x + 3).clamp(0, 6) / 6


@contextlib.contextmanager
def swapped_modules(model: nn.Module, kind: type[nn.Module], make: Callable[[], nn.Module]) -> Iterator[list[nn.Module]]:
    """Replace every submodule of exactly type ``kind`` by ``make()`` until exit (originals back even after an
    exception); yields the replacements.  Build anything that records the model's modules (e.g. a
    :class:`~modeldoctor.core.replay.NoiseReplay`) inside the block."""
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    replacements: list[nn.Module] = []
    try:
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is kind:
                    replacement = make()
                    setattr(parent, name, replacement)
                    swapped.append((parent, name, child))
                    replacements.append(replacement)
        yield replacements
    finally:
        for parent, name, child in reversed(swapped):
            setattr(parent, name, child)


@contextlib.contextmanager
def surrogate_relus(model: nn.Module, beta: float) -> Iterator[list[SurrogateReLU]]:
    """Swap every ``nn.ReLU`` submodule of ``model`` for a :class:`SurrogateReLU` (inactive) until exit."""
    with swapped_modules(model, nn.ReLU, lambda: SurrogateReLU(beta)) as surrogates:
        yield surrogates  # type: ignore[misc]


@contextlib.contextmanager
def twice_differentiable(model: nn.Module) -> Iterator[None]:
    """Swap ``nn.Hardsigmoid`` / ``nn.Hardswish`` (MobileNet-V3, EfficientNet-style SE blocks) for the same formula
    in clamp ops until exit, and run scaled dot-product attention (ViT, Swin) with its math kernel, whose ops all have
    a double backward (the fused flash / memory-efficient kernels have none), so Eq. 5–6's gradient-of-gradient can
    pass through them."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with swapped_modules(model, nn.Hardsigmoid, ClampHardsigmoid), swapped_modules(model, nn.Hardswish, ClampHardswish), \
            sdpa_kernel(SDPBackend.MATH):
        yield


@contextlib.contextmanager
def smooth_backward(surrogates: list[SurrogateReLU]) -> Iterator[None]:
    """Activate the surrogates' smooth backward for the passes recorded inside the block."""
    try:
        for s in surrogates:
            s.active = True
        yield
    finally:
        for s in surrogates:
            s.active = False
