"""Where computation runs: ``--device auto|cpu|cuda|cuda:N|mps`` and ``--amp bf16``.

The library computes on the model's own device (``model_device``); the command line picks it once per command
(:func:`using`) and every model it loads or builds is moved there.  Checkpoints stay on the CPU on disk.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from modeldoctor.core.errors import UserError

AMP_CHOICES = ("off", "bf16")
_device: contextvars.ContextVar[torch.device | None] = contextvars.ContextVar("modeldoctor_device", default=None)
_amp: contextvars.ContextVar[str] = contextvars.ContextVar("modeldoctor_amp", default="off")


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; an unavailable one is a
    :class:`UserError` naming what is available."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    text = (spec or "auto").strip().lower()
    if text == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise UserError(f"--device mps is not available here; use {available()}")
        return torch.device("mps")
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    if not match:
        raise UserError(f"unknown device {spec!r}; choose auto, cpu, cuda, cuda:N or mps")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(match.group(1)) if match.group(1) is not None else None
    if count == 0 or (index is not None and index >= count):
        raise UserError(f"--device {text} is not available here; use {available()}")
    return torch.device(text)


def available() -> str:
    """The devices this machine offers, for error messages."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if hasattr(torch.backends, "mps") and torch.backends.mps.is_available():
        found.append("mps")
    return ", ".join(found)


def resolve_amp(spec: str | None) -> str:
    """``off`` (default) or ``bf16``."""
    text = (spec or "off").lower()
    if text not in AMP_CHOICES:
        raise UserError(f"unknown --amp {spec!r}; choose {' or '.join(AMP_CHOICES)}")
    return text


@contextlib.contextmanager
def using(device: torch.device | str | None, amp: str | None = "off") -> Iterator[torch.device]:
    """Within the block, :func:`current_device` is ``device`` and :func:`autocast` uses ``amp``."""
    resolved = resolve_device(device)
    tokens = (_device.set(resolved), _amp.set(resolve_amp(amp)))
    try:
        yield resolved
    finally:
        _amp.reset(tokens[1])
        _device.reset(tokens[0])


def current_device() -> torch.device:
    """The device chosen by the enclosing :func:`using` block; the CPU outside one."""
    return _device.get() or torch.device("cpu")


def place(model: nn.Module) -> nn.Module:
    """Move ``model`` (in place) to :func:`current_device` and return it."""
    return model.to(current_device())


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); the CPU for a model with neither."""
    for tensor in [*model.parameters(), *model.buffers()]:
        return tensor.device
    return torch.device("cpu")


def to_device(device: torch.device, *tensors: Any) -> tuple[Any, ...]:
    """Each tensor moved to ``device`` (non-blocking from pinned memory); anything else passed through."""
    return tuple(t.to(device, non_blocking=True) if isinstance(t, torch.Tensor) else t for t in tensors)


def autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on ``device`` when ``--amp bf16`` is in effect, else nothing.  Used for training, evaluation
    and the diagnosis's scoring forward only; attribution gradients and the treatment's double backward stay fp32."""
    if _amp.get() == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
