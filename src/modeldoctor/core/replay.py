"""Noise replay: one forward pass, then J batched replays of only the part of the network after a layer.

Eq. 4 (and Eq. 5–6) need ∂ŷ/∂(m^r + σ^j) for J noise draws σ^j ~ Uniform(−δ, δ). Everything before
layer r is identical for all draws, so the floor is one forward pass plus J replays of the tail after r.
We trace the model with ``torch.fx`` (the graph shares the model's modules and parameters), run the whole
graph once keeping every intermediate value, and replay only the nodes that depend on r, with every
tensor from before r that the tail reads (skip connections) repeated J times along the batch.

Token layers (ViT sequences, channels-last maps) are replayed on their feature map m = to_map(output)
(:mod:`modeldoctor.core.tokens`): noise is added to m, the tail gets from_map(m + σ), special tokens unchanged, and
gradients are taken w.r.t. m, so every consumer sees (B, K, H, W).

Models that cannot be traced, or whose tail replay does not reproduce the full forward, fall back to one
batched full pass over J copies of the input with the noise added by a forward hook: the same numbers,
at the cost of the head.
"""

from __future__ import annotations

import contextlib
import logging
import operator
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.fx as fx
from torch import nn

from modeldoctor.core.errors import UserError
from modeldoctor.core.layers import LayerHooks, LayerRef, resolve_layers, train_mode
from modeldoctor.core.outputs import select_logits
from modeldoctor.core.tokens import LAYOUT_HELP, TokenLayout, as_map, from_map, layout_for

logger = logging.getLogger(__name__)

Output = Literal["logit", "prob"]
_INPLACE_FUNCTIONS = {operator.iadd: operator.add, operator.isub: operator.sub, operator.imul: operator.mul,
                      operator.itruediv: operator.truediv}


@dataclass
class ForwardState:
    """The clean forward pass: logits and, for each replayable layer, what its tail needs."""

    x: torch.Tensor
    logits: torch.Tensor
    features: dict[str, torch.Tensor]  # feature maps (B, K, H, W)
    env: dict[fx.Node, Any] = field(default_factory=dict, repr=False)
    training: bool = False
    layouts: dict[str, TokenLayout | None] = field(default_factory=dict)


@dataclass
class LayerGradients:
    """∂target/∂(m^r + σ^j) for one layer: ``grads[t]`` has shape (J, B, C, H, W) for target set t."""

    layer: str
    grads: list[torch.Tensor]
    noisy_logits: torch.Tensor  # (J, B, classes)


class _Tracer(fx.Tracer):
    """Keeps the chosen layers as leaves, so each is one node even when it is a container."""

    def __init__(self, leaves: set[str]) -> None:
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname in self.leaves or super().is_leaf_module(m, qualname)


class NoiseReplay:
    """Split ``model`` at ``layers``; compute gradients at noisy copies of each layer's feature map.

    >>> replay = NoiseReplay(model, ["layer4.1.conv2"])
    >>> state = replay.forward(x)                       # one full pass
    >>> g = replay.gradients(state, "layer4.1.conv2", [state.logits.argmax(1)], noise_draws=10, delta=0.1)

    The model's modules are shared, never copied; modes and in-place flags are restored after each call.
    """

    def __init__(self, model: nn.Module, layers: LayerRef | Sequence[LayerRef],
                 force_fallback: bool = False) -> None:
        self.model = model
        self.layers = resolve_layers(model, layers)
        nested = [(a, b) for a in self.layers for b in self.layers if b.startswith(a + ".")]
        if nested:
            raise UserError(f"layer {nested[0][1]!r} lies inside layer {nested[0][0]!r}; choose one of them "
                            "(or run them separately)")
        self._graphs: dict[bool, fx.GraphModule | None] = {}
        self._checked: set[str] = set()
        self.fallback_reason: str | None = "forced" if force_fallback else None

    @property
    def uses_fallback(self) -> bool:
        return self.fallback_reason is not None

    def forward(self, x: torch.Tensor) -> ForwardState:
        """One clean pass in the model's current mode; gradients flow if grad mode is on."""
        training = self.model.training
        gm = None if self.uses_fallback else self._graph(training)
        if gm is None:
            with _no_inplace(self.model), _capture(self.model, self.layers, tuple(x.shape)) as (feats, layouts):
                logits = select_logits(self.model(x))
            return ForwardState(x, logits, dict(feats), training=training, layouts=dict(layouts))
        state = self._graph_state(gm, x, training)
        if not training and not self._checked:
            # Two samples show whether the graph reproduces the model; checking the whole batch would cost
            # one more full forward pass.
            self._check_against_model(state if len(x) <= 2 else self._graph_state(gm, x[:2], training))
        return state

    def _graph_state(self, gm: fx.GraphModule, x: torch.Tensor, training: bool) -> ForwardState:
        with _no_inplace(self.model):
            env, out = _run_graph(gm, x)
        raw = {name: env[_node_of(gm, name)] for name in self.layers}
        layouts = {name: _layout(self.model, name, raw[name], tuple(x.shape)) for name in self.layers}
        feats = {name: as_map(layouts[name], raw[name]) for name in self.layers}
        return ForwardState(x, select_logits(out), feats, env, training, layouts)

    def gradients(self, state: ForwardState, layer: str, classes: Sequence[torch.Tensor], noise_draws: int,
                  delta: float, output: Output = "logit", create_graph: bool = False,
                  generator: torch.Generator | None = None, sample_seeds: torch.Tensor | None = None
                  ) -> LayerGradients:
        """Gradients of ``ŷ_c`` (logit or softmax probability of class ``classes[t][b]``) w.r.t. ``m + σ^j``.

        The tail runs with every module in eval mode (BatchNorm uses running statistics, dropout is off),
        so the J noisy copies neither mix through batch statistics nor update running buffers.
        ``sample_seeds`` (one int per sample) makes each sample's noise independent of batching.
        """
        if layer not in self.layers:
            raise UserError(f"layer {layer!r} was not prepared for replay; prepared: {', '.join(self.layers)}")
        feature = state.features[layer]
        J = noise_draws
        noise = draw_noise(feature, J, delta, generator, sample_seeds)
        base = feature if create_graph and feature.requires_grad else feature.detach()
        with torch.enable_grad(), train_mode(self.model, False), _no_inplace(self.model):
            noisy = base.unsqueeze(0) + noise
            if not noisy.requires_grad:
                noisy.requires_grad_(True)
            flat = noisy.reshape(J * feature.shape[0], *feature.shape[1:])
            logits = self.replay_tail(state, layer, flat, J)
            scores = logits.softmax(1) if output == "prob" else logits
            grads = []
            for t, cls in enumerate(classes):
                picked = scores.gather(1, cls.repeat(J).view(-1, 1)).sum()
                keep = create_graph or t < len(classes) - 1
                grads.append(torch.autograd.grad(picked, noisy, create_graph=create_graph, retain_graph=keep)[0])
        return LayerGradients(layer, grads, logits.detach().view(J, feature.shape[0], -1))

    def piecewise_linear_tail(self, layer: str) -> bool:
        """Whether the eval-mode network after ``layer`` is piecewise linear in every tensor it reads (convs, linear
        maps, eval BatchNorm, ReLU-like activations, max/average pools, sums, reshapes, products with at most one
        input-dependent factor).  Then ∂ŷ/∂m^r is locally constant in m^r and in every skip tensor, so it depends on
        no weight before r; unknown ops (softmax, GELU, LayerNorm, gating products) answer ``False``."""
        gm = None if self.uses_fallback else self._graph(False)
        if gm is None:
            return False
        batched = _batched_nodes(gm)
        return all(_piecewise_linear(gm, node, batched) for node in _tail_nodes(gm, _node_of(gm, layer)))

    # -- tail replay ---------------------------------------------------------------------------------
    def replay_tail(self, state: ForwardState, layer: str, flat_noisy: torch.Tensor, J: int) -> torch.Tensor:
        """Logits of the network with ``layer``'s feature map replaced by ``flat_noisy`` ((J·B, C, H, W),
        copy-major).

        Only the tail after ``layer`` runs; every earlier tensor the tail reads is repeated J times.
        """
        layout = state.layouts.get(layer)
        if self.uses_fallback or not state.env:
            return self._full_pass_with(state.x, layer, flat_noisy, J, layout)
        try:
            return self._tail(state, layer, flat_noisy, J, layout)
        except RuntimeError as exc:  # a train-mode state is never checked: a tail that fails batched falls back here
            self._fall_back(f"the tail after {layer} cannot be replayed ({type(exc).__name__}: {exc})")
            return self._full_pass_with(state.x, layer, flat_noisy, J, layout)

    def _tail(self, state: ForwardState, layer: str, flat_noisy: torch.Tensor, J: int,
              layout: TokenLayout | None) -> torch.Tensor:
        gm = self._graph(state.training)
        assert gm is not None  # state.env is only filled by a traced graph
        split = _node_of(gm, layer)
        batched = _batched_nodes(gm)
        raw = state.env[split]
        like = raw.repeat(J, *([1] * (raw.dim() - 1))) if layout is not None and layout.prefix else raw
        env: dict[fx.Node, Any] = {split: from_map(layout, flat_noisy, like)}
        repeated: dict[fx.Node, Any] = {}

        def value(n: fx.Node) -> Any:
            if n in env:
                return env[n]
            if n not in repeated:
                v = state.env[n]
                repeated[n] = v.repeat(J, *([1] * (v.dim() - 1))) if n in batched and isinstance(v, torch.Tensor) else v
            return repeated[n]

        out = None
        for node in _tail_nodes(gm, split):
            args = fx.node.map_arg(node.args, value)
            kwargs = fx.node.map_arg(node.kwargs, value)
            if node.op == "output":
                out = args[0]
                break
            env[node] = _call(gm, node, args, kwargs)
        return select_logits(out)

    def _full_pass_with(self, x: torch.Tensor, layer: str, flat_noisy: torch.Tensor, J: int,
                        layout: TokenLayout | None) -> torch.Tensor:
        with LayerHooks(self.model) as hooks:
            hooks.add(layer, lambda module, inputs, output: from_map(layout, flat_noisy, output))
            return select_logits(self.model(x.repeat(J, *([1] * (x.dim() - 1)))))

    # -- tracing and its check -----------------------------------------------------------------------
    def _graph(self, training: bool) -> fx.GraphModule | None:
        if training not in self._graphs:
            self._graphs[training] = self._trace(training)
        return self._graphs[training]

    def _trace(self, training: bool) -> fx.GraphModule | None:
        try:
            with train_mode(self.model, training):
                graph = _Tracer(set(self.layers)).trace(self.model)
        except Exception as exc:  # noqa: BLE001 - any tracing failure means: use the fallback
            self._fall_back(f"torch.fx cannot trace {type(self.model).__name__} ({type(exc).__name__})")
            return None
        gm = fx.GraphModule(self.model, graph)
        _remove_inplace_ops(gm)
        for name in self.layers:
            calls = [n for n in gm.graph.nodes if n.op == "call_module" and n.target == name]
            if len(calls) != 1:
                raise UserError(f"layer {name!r} runs {len(calls)} times per forward pass; choose a layer that runs once")
        return gm

    def _check_against_model(self, state: ForwardState) -> None:
        """Once per layer: the replay of J=2 noise-free copies must reproduce the full forward twice, or we fall back
        (two copies catch a tail that reads the batch size from the input, e.g. torchvision ViT's
        ``reshape(n, hidden, h·w)`` after its patch-embedding conv)."""
        with torch.no_grad(), _no_inplace(self.model):
            reference = select_logits(self.model(state.x))
            ok = torch.allclose(state.logits, reference, rtol=1e-4, atol=1e-5)
            for name in self.layers:
                if not ok:
                    break
                try:
                    feature = state.features[name]
                    replayed = self.replay_tail(state, name, feature.repeat(2, *([1] * (feature.dim() - 1))), 2)
                    ok = torch.allclose(replayed, reference.repeat(2, 1), rtol=1e-4, atol=1e-5)
                except Exception as exc:  # noqa: BLE001 - a tail that cannot run batched means: fall back
                    self._fall_back(f"the tail after {name} cannot be replayed ({type(exc).__name__}: {exc})")
                    return
        self._checked.update(self.layers)
        if not ok:
            self._fall_back("the traced graph does not reproduce the model's output")

    def _fall_back(self, reason: str) -> None:
        self.fallback_reason = reason
        logger.info("%s; using full batched passes instead (same numbers, slower)", reason)


def draw_noise(feature: torch.Tensor, J: int, delta: float, generator: torch.Generator | None = None,
               sample_seeds: torch.Tensor | None = None) -> torch.Tensor:
    """σ ~ Uniform(−δ, δ) of shape (J, *feature.shape); per-sample seeds make it batch-independent."""
    shape = (J, *feature.shape)
    if delta == 0:
        return feature.new_zeros(shape)
    if sample_seeds is None:
        u = torch.rand(shape, generator=generator, dtype=feature.dtype)
    else:
        per = [torch.rand((J, *feature.shape[1:]), generator=torch.Generator().manual_seed(int(s)), dtype=feature.dtype)
               for s in sample_seeds.tolist()]
        u = torch.stack(per, dim=1)
    return (u.to(feature.device) * 2 - 1) * delta


_PIECEWISE_LINEAR_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.ReLU,
                             nn.ReLU6, nn.LeakyReLU, nn.Hardtanh, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
                             nn.AdaptiveMaxPool2d, nn.Flatten, nn.Identity, nn.Dropout, nn.ZeroPad2d)
_PIECEWISE_LINEAR_NAMES = {"add", "sub", "neg", "getitem", "cat", "stack", "flatten", "reshape", "view", "relu",
                           "relu6", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d",
                           "linear", "conv2d", "dropout", "transpose", "permute", "squeeze", "unsqueeze", "size",
                           "contiguous", "mean", "sum", "expand", "chunk", "split", "dim", "clone", "getattr",
                           "iadd", "isub"}
_PRODUCTS = {"mul", "imul"}
_DIVISIONS = {"truediv", "div", "itruediv"}


def _piecewise_linear(gm: fx.GraphModule, node: fx.Node, batched: set[fx.Node]) -> bool:
    if node.op in ("output", "get_attr", "placeholder"):
        return True
    if node.op == "call_module":
        return isinstance(gm.get_submodule(str(node.target)), _PIECEWISE_LINEAR_MODULES)
    name = getattr(node.target, "__name__", str(node.target)).strip("_")
    if name in _DIVISIONS:  # x / c is linear in x; c / x is not
        divisor = node.args[1] if len(node.args) > 1 else None
        return not (isinstance(divisor, fx.Node) and divisor in batched)
    if name in _PRODUCTS:  # a product is linear in each factor, so only one may depend on the input
        return sum(a in batched for a in node.all_input_nodes) <= 1
    return name in _PIECEWISE_LINEAR_NAMES


def _run_graph(gm: fx.GraphModule, x: torch.Tensor) -> tuple[dict[fx.Node, Any], Any]:
    env: dict[fx.Node, Any] = {}
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            env[node] = x if not env else node.args[0] if node.args else None
            continue
        args = fx.node.map_arg(node.args, env.__getitem__)
        kwargs = fx.node.map_arg(node.kwargs, env.__getitem__)
        if node.op == "output":
            return env, args[0]
        env[node] = _call(gm, node, args, kwargs)
    raise UserError("the traced model has no output")


def _call(gm: fx.GraphModule, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    target = node.target
    if node.op == "call_function":
        assert callable(target)
        return target(*args, **kwargs)
    assert isinstance(target, str)  # modules, methods and attributes are addressed by name
    if node.op == "call_module":
        return gm.get_submodule(target)(*args, **kwargs)
    if node.op == "call_method":
        return getattr(args[0], target)(*args[1:], **kwargs)
    if node.op == "get_attr":
        return gm.get_parameter(target) if target in dict(gm.named_parameters()) else _fetch_attr(gm, target)
    raise UserError(f"unsupported graph node {node.op}")


def _fetch_attr(gm: fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _node_of(gm: fx.GraphModule, layer: str) -> fx.Node:
    for n in gm.graph.nodes:
        if n.op == "call_module" and n.target == layer:
            return n
    raise UserError(f"layer {layer!r} is not called in the model's forward pass")


def _tail_nodes(gm: fx.GraphModule, split: fx.Node) -> list[fx.Node]:
    """Nodes after ``split`` that depend on it, in execution order (plus the output)."""
    cache = gm.__dict__.setdefault("_md_tails", {})
    if split not in cache:
        depends = {split}
        tail = []
        for n in gm.graph.nodes:
            if n is split:
                continue
            if n.op == "output" or any(a in depends for a in n.all_input_nodes):
                depends.add(n)
                tail.append(n)
        cache[split] = tail
    return cache[split]


def _batched_nodes(gm: fx.GraphModule) -> set[fx.Node]:
    """Nodes whose value depends on the input batch (and so must be repeated J times for the tail)."""
    if "_md_batched" not in gm.__dict__:
        batched: set[fx.Node] = set()
        for n in gm.graph.nodes:
            if n.op == "placeholder" or any(a in batched for a in n.all_input_nodes):
                batched.add(n)
        gm.__dict__["_md_batched"] = batched
    return gm.__dict__["_md_batched"]


def _remove_inplace_ops(gm: fx.GraphModule) -> None:
    """In-place ops would overwrite values the replays reuse; the traced copy uses out-of-place ones."""
    for n in gm.graph.nodes:
        if n.op == "call_function":
            if n.target in _INPLACE_FUNCTIONS:
                n.target = _INPLACE_FUNCTIONS[n.target]
            if n.kwargs.get("inplace"):
                n.kwargs = {**n.kwargs, "inplace": False}
        elif n.op == "call_method" and n.target.endswith("_") and not n.target.startswith("_") \
                and hasattr(torch.Tensor, n.target[:-1]):
            n.target = n.target[:-1]


@contextlib.contextmanager
def _no_inplace(model: nn.Module) -> Iterator[None]:
    """Temporarily turn ``inplace=True`` modules (ReLU etc.) out-of-place; restored afterwards."""
    changed = [m for m in model.modules() if getattr(m, "inplace", False) is True]
    for m in changed:
        setattr(m, "inplace", False)  # noqa: B010 (nn.Module's attribute typing does not know inplace)
    try:
        yield
    finally:
        for m in changed:
            setattr(m, "inplace", True)  # noqa: B010


def _layout(model: nn.Module, name: str, output: Any, x_shape: tuple[int, ...]) -> TokenLayout | None:
    """The layer's token layout; a sequence that is no feature map of the input is refused in one line."""
    layout = layout_for(model, model.get_submodule(name), output, x_shape)
    if layout is None and isinstance(output, torch.Tensor) and output.dim() == 3:
        raise UserError(f"layer {name!r} outputs {tuple(output.shape)}, which is no patch grid of a "
                        f"{tuple(x_shape[-2:])} input; pass --token-layout ({LAYOUT_HELP}) or choose another layer")
    return layout


@contextlib.contextmanager
def _capture(model: nn.Module, layers: list[str], x_shape: tuple[int, ...]
             ) -> Iterator[tuple[dict[str, torch.Tensor], dict[str, TokenLayout | None]]]:
    """Fallback capture: keep each layer's feature map with its graph (no clone: in-place ops are off)."""
    feats: dict[str, torch.Tensor] = {}
    layouts: dict[str, TokenLayout | None] = {}
    with LayerHooks(model) as hooks:
        for name in layers:
            def hook(module, inputs, output, name=name):
                if name in feats:
                    raise UserError(f"layer {name!r} runs more than once per forward pass; choose a layer that runs once")
                layouts[name] = _layout(model, name, output, x_shape)
                feats[name] = as_map(layouts[name], output)
            hooks.add(name, hook)
        yield feats, layouts
