"""Last-layer re-fit on counterfactual composites, in the spirit of DFR (Kirichenko et al. 2022).

DFR re-trains only the classifier head on a small group-balanced set.  Here the balanced set is made from the
user's masks: every annotated object on ``per_object`` backgrounds of other classes
(:meth:`modeldoctor.doctor.counterfactual.Composer.dataset`), so the background carries no information about
the label.  The features are the head's inputs (one eval-mode forward, no gradient), and the head is fit by
L-BFGS on ``CE(W φ + b, y) + α ‖W − W₀‖²`` starting from, and pulled towards, the trained head W₀ — cheap, and
every layer before the head is left exactly as it was.  ``treat`` re-fits the head of the original model and of
its matched control's fine-tune (DFR's "ERM features") and keeps the better on held-out swaps.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from modeldoctor.core.errors import UserError
from modeldoctor.core.layers import train_mode
from modeldoctor.doctor.counterfactual import Composer


def classifier_head(model: nn.Module, num_classes: int) -> str:
    """Name of the last ``nn.Linear`` with ``num_classes`` outputs (the head a last-layer re-fit changes)."""
    heads = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
    if not heads:
        raise UserError("the last-layer re-fit needs a final nn.Linear with one output per class; this model has none")
    return heads[-1]


@torch.no_grad()
def head_inputs(model: nn.Module, head: str, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The (N, D) inputs of ``head`` for images ``x``, in eval mode."""
    module = model.get_submodule(head)
    assert isinstance(module, nn.Linear)
    device = module.weight.device
    captured: list[torch.Tensor] = []

    def keep(_: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        captured.append(args[0].detach().flatten(1).float().cpu())

    handle = module.register_forward_pre_hook(keep)
    try:
        with train_mode(model, False):
            for start in range(0, len(x), batch_size):
                model(x[start:start + batch_size].to(device))
    finally:
        handle.remove()
    return torch.cat(captured)


def refit_head(model: nn.Module, composer: Composer, num_classes: int, per_object: int = 10, alpha: float = 1e-3,
               steps: int = 100, seed: int = 0) -> nn.Module:
    """A copy of ``model`` whose head is re-fit on counterfactual composites; ``model`` is left unchanged."""
    head = classifier_head(model, num_classes)
    x, y = composer.dataset(per_object, seed)
    features = head_inputs(model, head, x)
    module = model.get_submodule(head)
    assert isinstance(module, nn.Linear)
    w0, b0 = module.weight.detach().float().cpu(), (
        module.bias.detach().float().cpu() if module.bias is not None else torch.zeros(num_classes))
    w, b = w0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(features @ w.T + b, y) + alpha * (w - w0).pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    refit = copy.deepcopy(model)
    target = refit.get_submodule(head)
    assert isinstance(target, nn.Linear)
    with torch.no_grad():
        target.weight.copy_(w.detach().to(target.weight))
        if target.bias is not None:
            target.bias.copy_(b.detach().to(target.bias))
    return refit


__all__ = ["classifier_head", "head_inputs", "refit_head"]
