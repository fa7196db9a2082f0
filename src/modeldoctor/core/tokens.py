"""Feature maps from token sequences: a layer's output read as m of shape (B, K, H, W), channels K, positions H×W.

Eq. 2–7 need channels and positions, not convolutions.  Three layouts cover CNNs and vision transformers:

- ``nchw``   (B, C, H, W): a conv feature map, m = x.
- ``nhwc``   (B, H, W, C): channels-last (Swin blocks, ConvNeXt's norms and MLPs), m = x.permute(0, 3, 1, 2).
- ``tokens`` (B, P + H·W, D): a ViT / DeiT sequence whose P leading special tokens (class, distillation, registers)
  are set aside, m[b, d, i, j] = x[b, P + i·W + j, d]; the special tokens are kept as they are and put back by
  :meth:`TokenLayout.from_map`, so noise and constraints act on the patch tokens only.

Found from the output's shape and the input's size (:func:`detect_layout`): a (B, T, D) output is ``tokens`` when
T − P = h·w for the patch grid h = ⌈H_in/s⌉ or ⌊H_in/s⌋, w likewise, of some stride s, with 0 ≤ P ≤ 16 (the model's
own ``num_prefix_tokens`` / class token preferred); a (B, a, b, c) output is ``nhwc`` when (a, b) is such a grid and
(b, c) is not (both: the module decides, LayerNorm / Linear = channels-last).  A batch dimension other than the
input's (window-partitioned attention) is no feature map.  :func:`set_token_layout` overrides the detection per model,
:func:`token_layouts` for a whole command (``--token-layout``).
"""

from __future__ import annotations

import contextlib
import functools
import math
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from modeldoctor.core.errors import UserError

Kind = Literal["nchw", "nhwc", "tokens"]
MAX_PREFIX = 16  # special tokens a ViT may carry (class + distillation + registers)
CHANNELS_LAST_MODULES = (nn.LayerNorm, nn.Linear)
LAYOUT_HELP = "auto, nchw, nhwc, tokens, tokens:P (P leading special tokens) or tokens:P:HxW"


@dataclass(frozen=True)
class TokenLayout:
    """How one layer's output maps to (B, K, H, W); ``grid`` = (H, W), ``prefix`` = special tokens set aside."""

    kind: Kind
    grid: tuple[int, int]
    prefix: int = 0

    def __str__(self) -> str:
        h, w = self.grid
        return f"tokens {self.prefix}+{h}x{w}" if self.kind == "tokens" else self.kind

    def to_map(self, x: torch.Tensor) -> torch.Tensor:
        """The feature map (B, K, H, W): a differentiable view or copy of ``x``."""
        if self.kind == "nchw":
            return x
        if self.kind == "nhwc":
            return x.permute(0, 3, 1, 2)
        patches = x[:, self.prefix:]
        return patches.transpose(1, 2).reshape(x.shape[0], x.shape[2], *self.grid)

    def from_map(self, m: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The layer output for map ``m``: the inverse of :meth:`to_map`; special tokens taken from ``like``
        (an output with the same batch size)."""
        if self.kind == "nchw":
            return m
        if self.kind == "nhwc":
            return m.permute(0, 2, 3, 1)
        patches = m.flatten(2).transpose(1, 2)
        return torch.cat([like[:, :self.prefix].to(patches.dtype), patches], 1) if self.prefix else patches


@dataclass(frozen=True)
class LayoutRule:
    """A parsed ``--token-layout``: the kind to use, and for tokens the prefix and grid when given."""

    kind: Kind | None  # None = auto
    prefix: int | None = None
    grid: tuple[int, int] | None = None


def parse_layout(spec: str) -> LayoutRule:
    """``auto`` | ``nchw`` | ``nhwc`` | ``tokens`` | ``tokens:P`` | ``tokens:P:HxW`` → :class:`LayoutRule`."""
    parts = spec.strip().lower().split(":")
    try:
        if parts == ["auto"]:
            return LayoutRule(None)
        if parts[0] in ("nchw", "nhwc") and len(parts) == 1:
            return LayoutRule("nchw" if parts[0] == "nchw" else "nhwc")
        if parts[0] == "tokens" and len(parts) <= 3:
            prefix = int(parts[1]) if len(parts) > 1 else None
            grid = tuple(int(v) for v in parts[2].split("x")) if len(parts) > 2 else None
            if (prefix is not None and prefix < 0) or (grid is not None and (len(grid) != 2 or min(grid) < 1)):
                raise ValueError(spec)
            return LayoutRule("tokens", prefix, grid)
    except ValueError:
        pass
    raise UserError(f"unknown token layout {spec!r}; use {LAYOUT_HELP}")


_OVERRIDES: weakref.WeakKeyDictionary[nn.Module, LayoutRule] = weakref.WeakKeyDictionary()
_PROCESS: list[LayoutRule] = []  # the command's ``--token-layout``, for every model without its own


@contextlib.contextmanager
def token_layouts(spec: str | None) -> Iterator[None]:
    """Read every model's layers with layout ``spec`` inside the block (``None`` / ``"auto"``: detect)."""
    rule = parse_layout(spec) if spec else LayoutRule(None)
    _PROCESS.append(rule)
    try:
        yield
    finally:
        _PROCESS.pop()


def set_token_layout(model: nn.Module, spec: str | LayoutRule | None) -> None:
    """Read every layer of ``model`` with this layout from now on (``None`` or ``"auto"``: detect again)."""
    rule = parse_layout(spec) if isinstance(spec, str) else spec
    if rule is None or rule.kind is None:
        _OVERRIDES.pop(model, None)
    else:
        _OVERRIDES[model] = rule


def token_layout_of(model: nn.Module) -> LayoutRule | None:
    """The model's own override, else the command's (:func:`token_layouts`), else ``None`` (detect)."""
    return _OVERRIDES.get(model) or (_PROCESS[-1] if _PROCESS else None)


def prefix_hint(model: nn.Module) -> int | None:
    """Special tokens the model declares: timm's ``num_prefix_tokens``, torchvision's ``class_token``."""
    value = getattr(model, "num_prefix_tokens", None)
    if isinstance(value, int):
        return value
    return 1 if isinstance(getattr(model, "class_token", None), torch.Tensor) else None


@functools.cache
def _sides(size: int) -> list[tuple[int, int]]:
    """(stride, side) pairs a patch grid along an axis of ``size`` pixels can have: ⌊size/s⌋ and ⌈size/s⌉."""
    return [(s, v) for s in range(1, size + 1) for v in {size // s, -(-size // s)} if v >= 1]


def _is_grid(h: int, w: int, input_hw: tuple[int, int]) -> bool:
    rows = {s for s, v in _sides(input_hw[0]) if v == h}
    cols = {s for s, v in _sides(input_hw[1]) if v == w}
    return bool(rows & cols)


@functools.cache
def _grids(input_hw: tuple[int, int]) -> frozenset[tuple[int, int]]:
    """Patch grids (⌊H/s⌋, ⌊W/s⌋) and (⌈H/s⌉, ⌈W/s⌉) of an input, over every stride s."""
    return frozenset((-(-input_hw[0] // s) if up else input_hw[0] // s, -(-input_hw[1] // s) if up else input_hw[1] // s)
                     for s in range(1, max(input_hw) + 1) for up in (False, True))


def _token_grid(tokens: int, input_hw: tuple[int, int], prefixes: list[int]) -> tuple[int, tuple[int, int]] | None:
    """(prefix, grid) with prefix + h·w = ``tokens`` for a grid of the input, trying ``prefixes`` in order."""
    grids = _grids(input_hw)
    for p in prefixes:
        found = sorted(g for g in grids if min(g) >= 1 and g[0] * g[1] == tokens - p)
        if found:
            return p, found[-1]
    return None


def _forced(rule: LayoutRule, shape: tuple[int, ...], input_hw: tuple[int, int]) -> TokenLayout | None:
    if rule.kind == "nchw":
        return TokenLayout("nchw", (shape[2], shape[3])) if len(shape) == 4 else None
    if rule.kind == "nhwc":
        return TokenLayout("nhwc", (shape[1], shape[2])) if len(shape) == 4 else None
    if len(shape) != 3:
        return TokenLayout("nchw", (shape[2], shape[3])) if len(shape) == 4 else None
    prefix = rule.prefix if rule.prefix is not None else None
    if rule.grid is not None:
        grid = rule.grid
        prefix = shape[1] - grid[0] * grid[1] if prefix is None else prefix
        if prefix < 0 or prefix + grid[0] * grid[1] != shape[1]:
            return None
        return TokenLayout("tokens", grid, prefix)
    if prefix is not None:
        n = shape[1] - prefix
        if n < 1:
            return None
        aspect = input_hw[0] / input_hw[1]
        pairs = [(h, n // h) for h in range(1, n + 1) if n % h == 0]
        grid = min(pairs, key=lambda g: abs(math.log(g[0] / g[1] / aspect)))
        return TokenLayout("tokens", grid, prefix)
    found = _token_grid(shape[1], input_hw, list(range(MAX_PREFIX + 1)))
    return TokenLayout("tokens", found[1], found[0]) if found else None


def detect_layout(shape: tuple[int, ...], input_hw: tuple[int, int], batch: int, module: nn.Module | None = None,
                  prefix: int | None = None, rule: LayoutRule | None = None) -> TokenLayout | None:
    """The layout of an output of ``shape`` for an input batch of ``batch`` images of ``input_hw`` pixels, or
    ``None`` when the output is no feature map (pooled, window-partitioned, or of another rank)."""
    if len(shape) not in (3, 4) or shape[0] != batch:
        return None
    if rule is not None and rule.kind is not None:
        return _forced(rule, shape, input_hw)
    if len(shape) == 3:
        order = ([prefix] if prefix is not None else []) + [p for p in range(MAX_PREFIX + 1) if p != prefix]
        found = _token_grid(shape[1], input_hw, order)
        return TokenLayout("tokens", found[1], found[0]) if found else None
    first, last = _is_grid(shape[2], shape[3], input_hw), _is_grid(shape[1], shape[2], input_hw)
    if last and (not first or isinstance(module, CHANNELS_LAST_MODULES)):
        return TokenLayout("nhwc", (shape[1], shape[2]))
    return TokenLayout("nchw", (shape[2], shape[3]))


def layout_for(model: nn.Module, module: nn.Module | None, output: object, x_shape: tuple[int, ...]
               ) -> TokenLayout | None:
    """The layout of ``module``'s ``output`` inside ``model`` for an input of ``x_shape`` (override first)."""
    if not isinstance(output, torch.Tensor) or len(x_shape) < 3:
        return None
    return detect_layout(tuple(output.shape), (int(x_shape[-2]), int(x_shape[-1])), int(x_shape[0]), module,
                         prefix_hint(model), token_layout_of(model))


def as_map(layout: TokenLayout | None, x: torch.Tensor) -> torch.Tensor:
    return layout.to_map(x) if layout is not None else x


def from_map(layout: TokenLayout | None, m: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return layout.from_map(m, like) if layout is not None else m


def attention_module(model: nn.Module) -> str | None:
    """The dotted name of the first attention block (class name containing "Attention", ``nn.MultiheadAttention``,
    or a whole ``VisionTransformer``), else ``None``: which default rule applies, never whether a model is refused."""
    for name, module in model.named_modules():
        kind = type(module).__name__
        if isinstance(module, nn.MultiheadAttention) or "Attention" in kind or kind == "VisionTransformer":
            return name or kind
    return None
