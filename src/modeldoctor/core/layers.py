"""Layers addressed by their dotted ``named_modules()`` name (timm/Captum habit), and hooks that always let go.

:class:`LayerHooks` is the one owner of hook state: every registration goes through it and all handles
are removed on exit, also when the forward pass raises.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from modeldoctor.core.device import model_device
from modeldoctor.core.errors import UserError

LayerRef = str | nn.Module


# Module-name parts of convs that sit beside the main path (ResNet downsample, shortcut and skip branches).
SIDE_BRANCH = ("downsample", "shortcut", "skip")


@dataclass
class LayerInfo:
    name: str
    kind: str
    depth: int  # 0-based index among the model's Conv2d layers, in registration order
    out_shape: tuple[int, ...]  # (C, H, W) for the probe input
    order: int  # position in the forward pass among the convs that ran

    @property
    def spatial(self) -> bool:
        """The output still has positions (more than 1×1): spatial masks and maps mean something there."""
        return len(self.out_shape) == 3 and self.out_shape[1] * self.out_shape[2] > 1

    @property
    def main_path(self) -> bool:
        return not any(part in SIDE_BRANCH for part in self.name.split("."))


def conv_layer_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def default_layer(model: nn.Module, input_shape: tuple[int, int, int]) -> str:
    """The paper's default (supplement A), the last conv layer, read as: the last Conv2d to run on the main path
    whose output for ``input_shape`` is spatial (> 1×1).  That skips squeeze-excitation convs on pooled 1×1 maps
    (RegNet, EfficientNet) and shortcut convs that run after the block's last conv."""
    table = layer_table(model, input_shape)
    if not table:
        raise UserError("the model has no Conv2d layer; name a layer with --layers")
    candidates = ([t for t in table if t.spatial and t.main_path] or [t for t in table if t.spatial]
                  or [t for t in table if t.main_path] or table)
    return max(candidates, key=lambda t: t.order).name


def resolve_layer(model: nn.Module, layer: LayerRef) -> tuple[str, nn.Module]:
    """Return ``(dotted name, module)`` for a name or a module object of ``model``."""
    if isinstance(layer, nn.Module):
        for name, module in model.named_modules():
            if module is layer:
                return name, module
        raise UserError(f"the module {type(layer).__name__} is not part of this model")
    modules = dict(model.named_modules())
    if layer not in modules or layer == "":
        convs = conv_layer_names(model)
        shown = ", ".join(convs[-8:]) if convs else ", ".join(list(modules)[1:9])
        raise UserError(f"unknown layer {layer!r}; valid conv layers include: {shown} "
                        f"(`modeldoctor layers` lists all {len(convs)})")
    return layer, modules[layer]


def sample_shape(dataset: Any) -> tuple[int, int, int]:
    """``(C, H, W)`` of the first image of a dataset of ``(image, label, ...)`` items."""
    if len(dataset) == 0:
        raise UserError("the data is empty; pass a split with at least one image")
    channels, height, width = dataset[0][0].shape
    return (channels, height, width)


def resolve_layers(model: nn.Module, layers: LayerRef | Sequence[LayerRef] | None,
                   input_shape: tuple[int, int, int] | None = None) -> list[str]:
    """Dotted names of ``layers``; ``None`` = :func:`default_layer` for ``input_shape`` (then required)."""
    if layers is None:
        if input_shape is None:
            raise TypeError("resolve_layers(model, None) needs the input shape to find the default layer")
        return [default_layer(model, input_shape)]
    if isinstance(layers, (str, nn.Module)):
        layers = [layers]
    names = [resolve_layer(model, ref)[0] for ref in layers]
    if len(set(names)) != len(names):
        raise UserError(f"a layer is named twice in {names}; list each layer once")
    return names


class LayerHooks(contextlib.AbstractContextManager):
    """Owns forward hooks on named layers; removes every handle on exit, also after an exception."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def add(self, layer: LayerRef, hook: Callable) -> torch.utils.hooks.RemovableHandle:
        _, module = resolve_layer(self.model, layer)
        handle = module.register_forward_hook(hook)
        self._handles.append(handle)
        return handle

    def remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()

    def __exit__(self, *exc) -> None:
        self.remove()


class FeatureCapture(LayerHooks):
    """Record each named layer's output (or, with ``source="input"``, its input) during one forward pass.

    Refuses layers that fire twice in one pass (shared modules): their feature map is ambiguous.
    The stored tensor is a clone, so in-place ops after the layer (``ReLU(inplace=True)``) cannot change it.
    """

    def __init__(self, model: nn.Module, layers: Sequence[LayerRef], detach: bool = True,
                 source: Literal["output", "input"] = "output") -> None:
        super().__init__(model)
        self.names = resolve_layers(model, list(layers))
        self.detach = detach
        self.source = source  # "input": the layer's first positional input (e.g. the features entering a Linear)
        self.captured: dict[str, torch.Tensor] = {}

    def __enter__(self) -> FeatureCapture:
        for name in self.names:
            self.add(name, self._hook_for(name))
        return self

    def _hook_for(self, name: str) -> Callable:
        def hook(module: nn.Module, inputs, output) -> None:
            if name in self.captured:
                raise UserError(f"layer {name!r} runs more than once per forward pass (a shared module); "
                                "choose a layer that runs once")
            value = (inputs[0] if inputs else None) if self.source == "input" else output
            if not isinstance(value, torch.Tensor):
                raise UserError(f"layer {name!r} has a {self.source} of type {type(value).__name__}, not a tensor; "
                                "choose a conv or linear layer")
            self.captured[name] = value.detach().clone() if self.detach else value.clone()
        return hook

    def reset(self) -> None:
        self.captured.clear()


def layer_table(model: nn.Module, input_shape: tuple[int, int, int]) -> list[LayerInfo]:
    """Candidate layers (every Conv2d that runs) with output shapes for one probe input, like timm's
    ``feature_info``; ``order`` is the position in the forward pass."""
    names = conv_layer_names(model)
    with train_mode(model, False), FeatureCapture(model, names) as cap, torch.no_grad():
        model(torch.zeros(1, *input_shape, device=model_device(model)))
    ran = list(cap.captured)  # insertion order = the order the hooks fired
    return [LayerInfo(n, type(model.get_submodule(n)).__name__, i, tuple(cap.captured[n].shape[1:]), ran.index(n))
            for i, n in enumerate(names) if n in cap.captured]


@contextlib.contextmanager
def replace_output(model: nn.Module, layer: LayerRef, fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Temporarily replace a layer's output with ``fn(output)`` (noise, ablation, scaling)."""
    with LayerHooks(model) as hooks:
        hooks.add(layer, lambda module, inputs, output: fn(output))
        yield


@contextlib.contextmanager
def train_mode(model: nn.Module, training: bool) -> Iterator[None]:
    """``model.train(training)`` for the block, then every submodule's own flag back (mixed modes survive)."""
    modes = {m: m.training for m in model.modules()}
    model.train(training)
    try:
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode
