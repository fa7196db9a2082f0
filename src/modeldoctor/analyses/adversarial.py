"""FGSM (Goodfellow et al. 2015): ``x_adv = clip_[0,1](x_raw + ε · sign(∇_{x_raw} H(y, f(x))))``.

ε is measured in raw pixel space [0, 1], not in the normalised space the model sees: the model input
is ``x = (x_raw − mean) / std`` (the bundle's statistics), so the attack un-normalises
(``x_raw = x·std + mean``), steps, clamps to [0, 1] and normalises again.  Because std > 0,
``sign(∇_{x_raw} H) = sign(∇_x H)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from modeldoctor.analyses.input_gradients import cross_entropy_input_gradient
from modeldoctor.core.device import model_device, to_device
from modeldoctor.core.errors import UserError
from modeldoctor.core.layers import train_mode
from modeldoctor.core.outputs import select_logits
from modeldoctor.data.bundle import ImageSplit, make_loader, unpack_batch


def fgsm_step(x: torch.Tensor, grad: torch.Tensor, eps: float,
              mean: torch.Tensor | Sequence[float] | None = None,
              std: torch.Tensor | Sequence[float] | None = None) -> torch.Tensor:
    """``normalise(clip_[0,1](x_raw + ε · sign(grad)))`` for the normalised batch ``x`` and its loss gradient.

    ``mean``/``std`` are per-channel normalisation statistics; ``None`` means ``x`` is already raw in [0, 1].
    """
    if not 0.0 <= eps <= 1.0:
        raise UserError(f"FGSM ε must be in [0, 1] (raw pixel units), got {eps}; e.g. --fgsm 0.05,0.1")
    shape = (x.shape[1], 1, 1)
    mean_t = torch.as_tensor(0.0 if mean is None else mean, dtype=x.dtype, device=x.device).reshape(-1, 1, 1)
    std_t = torch.as_tensor(1.0 if std is None else std, dtype=x.dtype, device=x.device).reshape(-1, 1, 1)
    mean_t, std_t = mean_t.expand(shape), std_t.expand(shape)
    raw = x.detach() * std_t + mean_t
    return ((raw + eps * grad.sign()).clamp(0.0, 1.0) - mean_t) / std_t


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
         mean: torch.Tensor | Sequence[float] | None = None,
         std: torch.Tensor | Sequence[float] | None = None) -> torch.Tensor:
    """The FGSM image for the normalised batch ``x`` (returned normalised the same way), in the model's current mode."""
    grad, _ = cross_entropy_input_gradient(model, x, y, create_graph=False)
    return fgsm_step(x, grad, eps, mean, std)


def fgsm_accuracy(model: nn.Module, split: ImageSplit, eps_values: Sequence[float],
                  batch_size: int = 256) -> dict[str, float]:
    """Accuracy on ``split`` under FGSM at each ε, keyed ``f"{ε:g}"``; eval mode during, mode restored after."""
    correct = {eps: 0 for eps in eps_values}
    total = 0
    with train_mode(model, False):
        for batch in make_loader(split, batch_size):
            x, y, _ = to_device(model_device(model), *unpack_batch(batch))
            total += len(y)
            grad, _ = cross_entropy_input_gradient(model, x, y, create_graph=False)
            for eps in eps_values:
                adv = fgsm_step(x, grad, eps, split.mean, split.std)
                with torch.no_grad():
                    correct[eps] += int((select_logits(model(adv)).argmax(1) == y).sum())
    return {f"{eps:g}": correct[eps] / max(total, 1) for eps in eps_values}


def parse_eps(text: str) -> list[float]:
    """``"0.05,0.1"`` → ``[0.05, 0.1]``, each checked to lie in [0, 1]."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"cannot read --fgsm {text!r}; give comma-separated ε in raw pixel units, e.g. 0.05,0.1") from None
    if not values or not all(0.0 <= v <= 1.0 for v in values):
        raise UserError(f"--fgsm {text!r} needs ε values in [0, 1] (raw pixel units), e.g. 0.05,0.1")
    return values


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int = 10,
        step_size: float | None = None, mean: torch.Tensor | Sequence[float] | None = None,
        std: torch.Tensor | Sequence[float] | None = None, seed: int = 0) -> torch.Tensor:
    """L∞ projected gradient descent (Madry et al. 2018) in raw pixel units: a random start in the ε-ball, then
    ``steps`` FGSM steps of ``step_size`` (default 2.5·ε/steps), each projected back into the ε-ball and [0, 1]."""
    if steps < 1:
        raise UserError(f"PGD needs at least one step, got {steps}; e.g. --pgd-steps 10")
    shape = (x.shape[1], 1, 1)
    mean_t = torch.as_tensor(0.0 if mean is None else mean, dtype=x.dtype).reshape(-1, 1, 1).expand(shape)
    std_t = torch.as_tensor(1.0 if std is None else std, dtype=x.dtype).reshape(-1, 1, 1).expand(shape)
    raw = x.detach() * std_t + mean_t
    generator = torch.Generator().manual_seed(seed)
    start = (torch.rand(x.shape, generator=generator, dtype=x.dtype) * 2 - 1).to(x.device) * eps
    current = ((raw + start).clamp(0.0, 1.0) - mean_t) / std_t
    alpha = 2.5 * eps / steps if step_size is None else step_size
    for _ in range(steps):
        grad, _ = cross_entropy_input_gradient(model, current, y, create_graph=False)
        stepped = current.detach() * std_t + mean_t + alpha * grad.sign()
        projected = torch.max(torch.min(stepped, raw + eps), raw - eps).clamp(0.0, 1.0)
        current = (projected - mean_t) / std_t
    return current.detach()
