"""What a model can take, found by trying: its smallest square input, and whether any layer yields a feature map.

The smallest input is probed on a copy of the model (so the caller's BatchNorm statistics and gradients stay as
they were): a forward pass in eval mode with batch 1 and a forward + backward pass in train mode with batch 2
must both work.  A model that declares one fixed size (ViT) is probed at that size first.  Sizes double until one
works, then a binary search finds the smallest; failing sizes are assumed to be all below the working ones; when no
size up to the largest probe works, the model's default size (timm's, else 224) is tried last.  Results are cached
per architecture spec in this process and in ``$XDG_CACHE_HOME/modeldoctor/min_input.json`` (keyed with the
torchvision / timm version).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from modeldoctor.core.errors import UserError
from modeldoctor.core.files import write_json
from modeldoctor.core.layers import candidate_names, layer_table
from modeldoctor.core.outputs import select_logits

LARGEST_PROBE = 1024  # pixels; an architecture that needs more is refused
# What a too-small input raises inside torch / torchvision / timm (pooling, BatchNorm, reshapes, asserts).
_TOO_SMALL = (RuntimeError, ValueError, AssertionError, IndexError, ZeroDivisionError)


def fixed_input_size(model: nn.Module) -> int | None:
    """The one square size a model declares it takes: torchvision ViT's ``image_size``, timm's strict
    ``patch_embed.img_size``; ``None`` when it declares none (any size above the minimum may work)."""
    size = getattr(model, "image_size", None)
    if isinstance(size, int):
        return size
    embed = getattr(model, "patch_embed", None)
    img = getattr(embed, "img_size", None)
    if img is None or not getattr(embed, "strict_img_size", False) or getattr(embed, "dynamic_img_size", False):
        return None
    return int(img[0]) if isinstance(img, (tuple, list)) else int(img)


def _default_input_size(model: nn.Module) -> int:
    """The size a model was built for: timm's ``pretrained_cfg["input_size"]``, else ImageNet's 224 (torchvision's
    MaxViT partitions a 224 px input and takes no other)."""
    cfg = getattr(model, "pretrained_cfg", None)
    size = cfg.get("input_size") if isinstance(cfg, dict) else None
    return int(size[-1]) if isinstance(size, (tuple, list)) and size else 224


def require_cnn(model: nn.Module, spec: str, input_shape: tuple[int, int, int] | None = None) -> None:
    """Accept a model by capability: some layer must yield a spatial feature map (a Conv2d, a token sequence on a
    patch grid, a channels-last map; :func:`modeldoctor.core.layers.layer_table`) for ``input_shape``; otherwise
    one line says why.  Without ``input_shape`` only the structural part is checked (a Conv2d or a norm /
    block layer exists)."""
    if not candidate_names(model):
        raise UserError(f"{spec} has no Conv2d, norm or block layer; Model Doctor needs a classifier whose layers "
                        "output feature maps (channels × positions): a CNN or a vision transformer")
    if input_shape is None:
        return
    size = f"{input_shape[1]}x{input_shape[2]}"
    try:
        table = layer_table(model, input_shape)
    except _TOO_SMALL as exc:
        raise UserError(f"{spec} cannot run on {size} inputs ({str(exc).splitlines()[0][:100]}); "
                        "pass another --input-size") from None
    # A CNN is accepted at any size it runs at (its minimum input is probed separately; a 1-px ResNet trains).
    if not any(t.spatial for t in table) and not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        raise UserError(f"{spec} has no layer whose output is a spatial feature map for {size} inputs (no Conv2d, "
                        "token sequence on a patch grid or channels-last map with more than one position); "
                        "pass a larger --input-size or --token-layout")


def _works(model: nn.Module, in_channels: int, size: int) -> bool:
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, in_channels, size, size))
        model.train()
        out = select_logits(model(torch.randn(2, in_channels, size, size)))
        params = [p for p in model.parameters() if p.requires_grad]
        torch.autograd.grad(out.float().square().mean(), params, allow_unused=True)
        return True
    except _TOO_SMALL:
        return False


def probe_min_input(model: nn.Module, in_channels: int) -> int:
    """Smallest square input side (pixels) that ``model`` takes; ``model`` itself is not touched."""
    trial = copy.deepcopy(model)
    fixed = fixed_input_size(model)
    if fixed is not None and _works(trial, in_channels, fixed):
        return fixed
    partition = getattr(model, "partition_size", None)  # torchvision MaxViT: 5 halvings, then p × p partitions
    if isinstance(partition, int) and _works(trial, in_channels, 32 * partition):
        return 32 * partition  # probing larger sizes first would run out of memory before failing
    size = 1
    while not _works(trial, in_channels, size):
        if size >= LARGEST_PROBE:
            default = _default_input_size(model)
            if _works(trial, in_channels, default):
                return default  # one size only (EfficientFormer's attention biases): the model's own default
            raise UserError(f"no square input up to {LARGEST_PROBE} px works for this model (it may need one fixed "
                            "size); pass a model that accepts variable input sizes")
        size *= 2
    low, high = size // 2, size  # low fails (or is 0), high works
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if _works(trial, in_channels, middle) else (middle, high)
    return high


def _cache_file() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "modeldoctor" / "min_input.json"


def cache_key(spec: str, in_channels: int) -> str | None:
    """A key that changes with the code defining the architecture; ``None`` (never cached) for user factories."""
    if ":" in spec and not spec.startswith("timm:"):
        return None  # the user's own code may change between runs
    from importlib.metadata import version

    library = "timm" if spec.startswith("timm:") else "torchvision"
    return f"{spec}|{in_channels}|{library} {version(library)}|modeldoctor {version('modeldoctor')}"


def remembered(key: str | None, probe: Callable[[], int]) -> int:
    """``probe()``, or its earlier answer for ``key`` from the on-disk cache (``None`` = never cache)."""
    path = _cache_file()
    try:
        known = json.loads(path.read_text()) if key is not None and path.is_file() else {}
    except (OSError, ValueError):
        known = {}  # a damaged cache is only a cache: probe again and rewrite it
    if key in known:
        return int(known[key])
    size = probe()
    if key is not None:
        with contextlib.suppress(OSError):  # a read-only home only costs the next run a probe
            write_json(path, {**known, key: size})
    return size
