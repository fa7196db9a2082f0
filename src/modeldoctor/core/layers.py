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
from modeldoctor.core.outputs import select_logits
from modeldoctor.core.tokens import TokenLayout, as_map, attention_module, from_map, layout_for

LayerRef = str | nn.Module


# Module-name parts of convs that sit beside the main path (ResNet downsample, shortcut and skip branches).
SIDE_BRANCH = ("downsample", "shortcut", "skip")


@dataclass
class LayerInfo:
    name: str
    kind: str
    depth: int  # 0-based index among the model's Conv2d layers, in registration order (−1: not a Conv2d)
    out_shape: tuple[int, ...]  # (C, H, W) of the feature map (:mod:`modeldoctor.core.tokens`) for the probe input
    order: int  # position in the forward pass among the candidate layers that ran
    layout: str = "nchw"  # how the output is read as (C, H, W): nchw, nhwc, tokens P+HxW

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
    (RegNet, EfficientNet) and shortcut convs that run after the block's last conv.

    Models with attention blocks: the deepest candidate layer (:func:`layer_table`) whose patch positions still
    reach the logits with a non-zero gradient (:func:`reaching_layers`): in a class-token ViT only the class token
    of the last block's output reaches the head, so the default is the last block's first norm."""
    table = layer_table(model, input_shape)
    if not table:
        raise UserError("the model has no Conv2d layer and no token layer; name a layer with --layers")
    if attention_module(model) is not None and any(t.depth < 0 for t in table):
        spatial = [t for t in table if t.spatial and t.main_path] or table
        reach = reaching_layers(model, input_shape, [t.name for t in spatial])
        return max([t for t in spatial if t.name in reach] or spatial, key=lambda t: t.order).name
    candidates = ([t for t in table if t.spatial and t.main_path] or [t for t in table if t.spatial]
                  or [t for t in table if t.main_path] or table)
    return max(candidates, key=lambda t: t.order).name


def all_layers(model: nn.Module, input_shape: tuple[int, int, int]) -> list[str]:
    """``--layers all``: every Conv2d; in a model with attention blocks also every spatial token / channels-last
    layer of :func:`layer_table` whose patch positions reach the logits (:func:`reaching_layers`; after a ViT's last
    attention only the class token counts, and ā would be 0) and that holds no other chosen layer (norms, not the
    blocks around them: one traced node per layer), in registration order."""
    convs = conv_layer_names(model)
    if attention_module(model) is None:
        return convs
    spatial = [t.name for t in layer_table(model, input_shape) if t.depth < 0 and t.spatial]
    tokens = reaching_layers(model, input_shape, spatial)
    chosen = [n for n in candidate_names(model) if n in tokens or n in convs]
    return [n for n in chosen if not any(other.startswith(n + ".") for other in chosen)]


def layer_depth(model: nn.Module, name: str) -> int:
    """Depth index of a layer for trends over depth: its index among the Conv2d layers; in a model with attention
    blocks its index among :func:`candidate_names` (convs, norms, blocks in registration order); −1 if neither."""
    names = candidate_names(model) if attention_module(model) is not None else conv_layer_names(model)
    return names.index(name) if name in names else -1


def reaching_layers(model: nn.Module, input_shape: tuple[int, int, int], names: Sequence[str]) -> set[str]:
    """The layers among ``names`` whose feature-map positions get a non-zero ∂(Σ_c w_c ŷ_c)/∂m for one random
    input (random w: no class cancels another).  When the logits come out of a Linear head, its input f stands in for
    them (∂(Σ_i w_i f_i)/∂m): heads start at zero in torchvision's ViT, and reach does not depend on the head's
    weights.  One forward and one backward pass in eval mode; a model on the meta device has no numbers, so every
    layer counts as reaching there."""
    device = model_device(model)
    if device.type == "meta":
        return set(names)
    held: dict[str, torch.Tensor] = {}
    layouts: dict[str, TokenLayout | None] = {}
    x = torch.randn(1, *input_shape, generator=torch.Generator().manual_seed(0)).to(device)

    def keep(name: str) -> Callable:
        def hook(module: nn.Module, inputs, output):
            if not isinstance(output, torch.Tensor) or name in held:
                return None
            layouts[name] = layout_for(model, module, output, tuple(x.shape))
            held[name] = output
            return output.clone()  # in-place ops downstream act on the clone, never on the held tensor
        return hook

    heads: list[tuple[torch.Tensor, torch.Tensor]] = []
    with train_mode(model, False), torch.enable_grad(), LayerHooks(model) as hooks:
        for name in names:
            hooks.add(name, keep(name))
        for module in model.modules():
            if isinstance(module, nn.Linear):
                hooks.handles.append(module.register_forward_hook(lambda m, i, o: heads.append((i[0], o))))
        logits = select_logits(model(x.requires_grad_(True)))
        target = heads[-1][0] if heads and heads[-1][1] is logits else logits
        weights = torch.randn(target.shape[-1], generator=torch.Generator().manual_seed(1)).to(device)
        tensors = [held[n] for n in names if n in held and held[n].requires_grad]
        grads = torch.autograd.grad((target.float() * weights).sum(), tensors, allow_unused=True)
    found = {n for n, t in zip([n for n in names if n in held and held[n].requires_grad], grads)
             if t is not None and bool(as_map(layouts[n], t).abs().sum() > 0)}
    return found


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
        self.handles: list[torch.utils.hooks.RemovableHandle] = []
        self.input_shape: tuple[int, ...] = ()

    def add(self, layer: LayerRef, hook: Callable) -> torch.utils.hooks.RemovableHandle:
        _, module = resolve_layer(self.model, layer)
        handle = module.register_forward_hook(hook)
        self.handles.append(handle)
        return handle

    def watch_input(self) -> None:
        """Record the shape of the model's input on each call (token layouts depend on the image size)."""
        def pre_hook(module: nn.Module, args: tuple) -> None:
            if args and isinstance(args[0], torch.Tensor):
                self.input_shape = tuple(args[0].shape)
        self.handles.append(self.model.register_forward_pre_hook(pre_hook))

    def layout(self, module: nn.Module, output: object) -> TokenLayout | None:
        return layout_for(self.model, module, output, self.input_shape)

    def remove(self) -> None:
        while self.handles:
            self.handles.pop().remove()

    def __exit__(self, *exc) -> None:
        self.remove()


class FeatureCapture(LayerHooks):
    """Record each named layer's output as a feature map (B, K, H, W) (token sequences and channels-last outputs
    read by :mod:`modeldoctor.core.tokens`), or with ``source="input"`` its raw first input, in one forward pass.

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
        self.layouts: dict[str, TokenLayout | None] = {}

    def __enter__(self) -> FeatureCapture:
        self.watch_input()
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
            if self.source == "output":
                self.layouts[name] = self.layout(module, value)
                value = as_map(self.layouts[name], value)
            self.captured[name] = value.detach().clone() if self.detach else value.clone()
        return hook

    def reset(self) -> None:
        self.captured.clear()


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.LayerNorm, nn.GroupNorm)) or "Norm" in type(module).__name__


def candidate_names(model: nn.Module) -> list[str]:
    """Conv2d layers, norms, and blocks (containers held in an ``nn.Sequential`` / ``nn.ModuleList``): the layers
    whose outputs may be feature maps, in registration order."""
    blocks = {f"{parent}.{child}".lstrip(".") for parent, m in model.named_modules()
              if isinstance(m, (nn.Sequential, nn.ModuleList)) for child, c in m.named_children()
              if any(True for _ in c.children())}
    return [n for n, m in model.named_modules()
            if n and (isinstance(m, nn.Conv2d) or _is_norm(m) or n in blocks)]


def layer_table(model: nn.Module, input_shape: tuple[int, int, int]) -> list[LayerInfo]:
    """Candidate layers with feature-map shapes for one probe input, like timm's ``feature_info``: every Conv2d
    that runs, and (models with token or channels-last outputs) every norm or block whose output is a feature map
    other than NCHW (in models with attention blocks: any feature map); ``order`` is the position in the forward
    pass.  Works on the meta device (shapes only)."""
    convs = conv_layer_names(model)
    names = candidate_names(model)
    attention = attention_module(model) is not None
    with train_mode(model, False), LayerHooks(model) as hooks, torch.no_grad():
        hooks.watch_input()
        seen: dict[str, tuple[nn.Module, TokenLayout | None, tuple[int, ...]]] = {}

        def keep(name: str) -> Callable:
            def hook(module: nn.Module, inputs, output) -> None:
                if isinstance(output, torch.Tensor) and name not in seen:
                    layout = hooks.layout(module, output)
                    seen[name] = (module, layout, tuple(as_map(layout, output).shape[1:]))
            return hook

        for name in names:
            hooks.add(name, keep(name))
        model(torch.zeros(1, *input_shape, device=model_device(model)))
    table: list[LayerInfo] = []
    for name, (module, layout, shape) in seen.items():  # insertion order = firing order
        conv = isinstance(module, nn.Conv2d)
        if not conv and (layout is None or (layout.kind == "nchw" and not attention)):
            continue
        table.append(LayerInfo(name, type(module).__name__, convs.index(name) if conv else -1, shape, len(table),
                               str(layout) if layout is not None else "flat"))
    return sorted(table, key=lambda t: names.index(t.name))  # registration order, like the model's printout


@contextlib.contextmanager
def replace_output(model: nn.Module, layer: LayerRef, fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Temporarily replace a layer's output with ``fn(output)`` (noise, ablation, scaling); ``fn`` sees and returns
    the feature map (B, K, H, W) (:mod:`modeldoctor.core.tokens`), special tokens are kept."""
    with LayerHooks(model) as hooks:
        hooks.watch_input()

        def hook(module: nn.Module, inputs, output):
            layout = hooks.layout(module, output)
            return from_map(layout, fn(as_map(layout, output)), output)

        hooks.add(layer, hook)
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
