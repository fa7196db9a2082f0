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
from collections.abc import Iterator

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


@contextlib.contextmanager
def surrogate_relus(model: nn.Module, beta: float) -> Iterator[list[SurrogateReLU]]:
    """Swap every ``nn.ReLU`` submodule of ``model`` for a :class:`SurrogateReLU` (inactive) until exit.

    Build anything that records the model's modules (e.g. a :class:`~modeldoctor.core.replay.NoiseReplay`)
    inside the block.  The original modules are put back on exit, even after an exception.
    """
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    surrogates: list[SurrogateReLU] = []
    try:
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is nn.ReLU:
                    surrogate = SurrogateReLU(beta)
                    setattr(parent, name, surrogate)
                    swapped.append((parent, name, child))
                    surrogates.append(surrogate)
        yield surrogates
    finally:
        for parent, name, child in reversed(swapped):
            setattr(parent, name, child)


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
