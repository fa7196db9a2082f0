"""A second device on a CPU-only machine, for catching device mismatches without a GPU.

:class:`FakeDevice` is a ``TorchFunctionMode`` that tags tensors as living on the pretend device ``cpu:0``
(``FAKE``): the parameters and buffers of a :meth:`FakeDevice.place`-d model, whatever is moved there
(``.to(FAKE)``, ``device=FAKE``, ``.to(tagged)``), and every result of an operation on tagged tensors; ``.device``
of a tagged tensor reads ``FAKE``, so ``model_device(model)`` does too.  Mixing a tagged tensor with an untagged
tensor of one or more dimensions in one operation, or calling ``.numpy()`` on a tagged tensor, raises
:class:`DeviceMismatch` — what CUDA would do.  Untagged 0-dim tensors (CPU scalars) and CPU index tensors into a
tagged tensor are allowed, as on CUDA.  What this cannot see: kernels that exist on the CPU only, and copies
PyTorch makes implicitly in C++.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

FAKE = torch.device("cpu", 0)
_TAG = "_modeldoctor_fake_device"
_MOVES = {torch.Tensor.to, torch.Tensor.cpu, torch.Tensor.cuda}


class DeviceMismatch(RuntimeError):
    pass


def tagged(t: object) -> bool:
    return isinstance(t, torch.Tensor) and getattr(t, _TAG, False)


def _tag(t: Any, on: bool) -> Any:
    if isinstance(t, torch.Tensor):
        setattr(t, _TAG, on)
    return t


def _is_device(d: object) -> bool:
    return isinstance(d, torch.device) or isinstance(d, str) and d.split(":")[0] in ("cpu", "cuda", "mps")


def _target(func: Any, args: tuple, kwargs: dict) -> bool | None:
    """Whether ``func`` puts its result on FAKE (True), on the real CPU (False), or keeps its inputs' place (None)."""
    if func is torch.Tensor.cpu:
        return False
    if func is torch.Tensor.cuda:
        raise DeviceMismatch("`.cuda()` called: use the model's device")
    device = kwargs.get("device")
    if func is torch.Tensor.to:
        for a in args[1:]:
            if isinstance(a, torch.Tensor):
                return tagged(a)
            if _is_device(a):
                device = a
    if device is None:
        return None
    return torch.device(device) == FAKE


class FakeDevice(TorchFunctionMode):
    def __enter__(self) -> FakeDevice:
        # nn.Parameter(t) makes its tensor outside any torch function: carry the tag over, as CUDA keeps the device.
        self._parameter_new = nn.Parameter.__new__
        original = self._parameter_new

        def new(cls: type, data: torch.Tensor | None = None, requires_grad: bool = True) -> nn.Parameter:
            parameter = original(cls, data, requires_grad)
            return _tag(parameter, True) if tagged(data) else parameter

        nn.Parameter.__new__ = staticmethod(new)  # type: ignore[assignment]
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        nn.Parameter.__new__ = self._parameter_new  # type: ignore[method-assign]
        super().__exit__(*exc)

    def place(self, model: nn.Module) -> nn.Module:
        for t in [*model.parameters(), *model.buffers()]:
            _tag(t, True)
        return model

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        if name == "__get__":  # a property; ``.device`` of a tagged tensor is FAKE
            is_device = getattr(func, "__self__", None) is torch.Tensor.device
            return FAKE if is_device and tagged(args[0]) else func(*args, **kwargs)
        if name == "numpy" and tagged(args[0]):
            raise DeviceMismatch("`.numpy()` of a tensor on the model's device: move it to the CPU first")
        checked = args[:1] if name in ("__getitem__", "__setitem__", "__deepcopy__") else args  # memo: not operands
        tensors = [t for t in tree_flatten((checked, kwargs))[0] if isinstance(t, torch.Tensor)]
        if name == "__setitem__" and tagged(args[0]) and isinstance(args[2], torch.Tensor):
            tensors.append(args[2])
        target = _target(func, args, kwargs)
        if target is None and any(map(tagged, tensors)):
            plain = [tuple(t.shape) for t in tensors if not tagged(t) and t.dim() > 0]
            if plain:
                raise DeviceMismatch(f"{name}: tensors on the model's device mixed with CPU tensors of shapes {plain}")
        out = func(*args, **kwargs)
        on = any(map(tagged, tensors)) if target is None else target
        if func in _MOVES and out is args[0] and tagged(out) != on:
            out = out.clone()  # a move within the real CPU returns the tensor itself: keep the original's tag
        if not (args and out is args[0]):  # in place: the tensor keeps its tag
            tree_map(lambda t: _tag(t, on), out)
        return out
