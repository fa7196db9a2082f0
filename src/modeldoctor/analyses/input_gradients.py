"""Input-gradient regularisers: double backpropagation (Kim et al. §3.3) and the masked "Right for the Right
Reasons" penalty.

* Double backpropagation (Drucker & LeCun; Ross & Doshi-Velez 2018), Kim et al. §3.3:
  ``θ* = argmin Σ_n H(y_n, ŷ_n) + λ Σ_n Σ_d (∂H(y_n, ŷ_n)/∂x_nd)²``.
* RRR (Ross, Hughes, Doshi-Velez 2017, Eq. 1, right-reasons term):
  ``λ Σ_i Σ_d (A_id · ∂/∂x_id Σ_k log p̂_ik)²`` with ``A = 1`` where gradients are penalised (background).

Normalisation: both penalties are **averaged over the batch** (``Σ_i`` → ``(1/N) Σ_i``), like the
cross-entropy mean that ``fit`` minimises, so the objective is the paper's sum divided by N and λ keeps
its paper meaning independent of the batch size.  ``reduction="sum"`` gives the literal sums.

Gradients are taken with respect to the model input (the normalised image), with ``create_graph=True``
so that the penalty itself can be differentiated with respect to the parameters.  Per-sample gradients
come from differentiating the batch sum; with BatchNorm in training mode samples interact slightly
through the batch statistics, as in every public double-backprop implementation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from modeldoctor.core.errors import UserError
from modeldoctor.core.outputs import select_logits

Objective = Callable[[torch.Tensor], torch.Tensor]


def input_gradient(model: nn.Module, x: torch.Tensor, objective: Objective,
                   create_graph: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``(∂ objective(logits) / ∂x, logits)``; ``objective`` maps the logits to a scalar (summed over the batch).

    Uses ``torch.autograd.grad`` on a detached copy of ``x``: no parameter's ``.grad`` is touched and the
    caller's tensor keeps its ``requires_grad``.
    """
    x = x.detach().requires_grad_(True)
    logits = select_logits(model(x))
    (grad,) = torch.autograd.grad(objective(logits), x, create_graph=create_graph)
    return grad, logits


def squared_gradient_norm(grad: torch.Tensor, mask: torch.Tensor | None = None,
                          reduction: str = "mean") -> torch.Tensor:
    """``Σ_i Σ_d (A_id · g_id)²`` (``reduction="sum"``) or that divided by the batch size N (``"mean"``).

    ``mask`` (``A``) broadcasts against ``grad``: e.g. (N, 1, H, W) for one mask shared by all channels.
    """
    if mask is not None:
        try:
            grad = grad * mask.to(grad)
        except RuntimeError:
            raise UserError(f"mask of shape {tuple(mask.shape)} does not broadcast to inputs of shape "
                            f"{tuple(grad.shape)}; give (N, 1, H, W) or (N, C, H, W)") from None
    total = grad.pow(2).sum()
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / grad.shape[0]
    raise UserError(f"unknown reduction {reduction!r}; choose mean or sum")


def cross_entropy_input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                                 create_graph: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``(∇ₓ Σ_n H(y_n, ŷ_n), logits)``: row n is sample n's loss gradient (Kim et al. §3.3)."""
    return input_gradient(model, x, lambda logits: F.cross_entropy(logits, y, reduction="sum"), create_graph)


def log_prob_input_gradient(model: nn.Module, x: torch.Tensor,
                            create_graph: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``(∂/∂x Σ_i Σ_k log p̂_ik, logits)``: the gradient inside the RRR penalty (no labels needed)."""
    return input_gradient(model, x, lambda logits: F.log_softmax(logits, dim=1).sum(), create_graph)


def input_gradient_penalty(model: nn.Module, x: torch.Tensor, mask: torch.Tensor | None = None,
                           create_graph: bool = True, reduction: str = "mean") -> torch.Tensor:
    """RRR right-reasons term without λ: ``(1/N) Σ_i Σ_d (A_id ∂/∂x_id Σ_k log p̂_ik)²``; ``mask=None`` means A = 1.

    To reuse the forward pass for the cross-entropy, call :func:`log_prob_input_gradient` and
    :func:`squared_gradient_norm` directly.
    """
    grad, _ = log_prob_input_gradient(model, x, create_graph)
    return squared_gradient_norm(grad, mask, reduction)


def double_backprop_loss(lam: float) -> Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor | None],
                                                  tuple[torch.Tensor, torch.Tensor]]:
    """A ``training.fit`` loss: ``mean_n H(y_n, ŷ_n) + λ · (1/N) Σ_n ‖∇ₓ H(y_n, ŷ_n)‖²`` (Kim et al. §3.3)."""
    if not lam >= 0:
        raise UserError(f"input-gradient regularisation strength must be >= 0, got {lam}; e.g. --input-grad-reg 0.1")

    def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None):
        grad, logits = cross_entropy_input_gradient(model, x, y, create_graph=True)
        return F.cross_entropy(logits, y) + lam * squared_gradient_norm(grad), logits

    return loss_fn
