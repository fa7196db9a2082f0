"""Weights trained elsewhere: a plain ``state_dict`` file or a common wrapper around one, fitted to a model.

Read with ``torch.load(weights_only=True)`` (pickled objects only with ``trust``).  Wrappers: ``{"state_dict":
...}`` (Lightning, many training scripts), ``{"model": ...}`` / ``{"model_state_dict": ...}`` / ``{"net": ...}``,
and ``{"state_dict_ema": ...}`` is ignored in favour of the plain weights.  Key prefixes from DataParallel /
DDP (``module.``), Lightning modules (``model.``, ``net.``) and ``torch.compile`` (``_orig_mod.``) are mapped
away when that makes the keys fit the model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from modeldoctor.core.errors import UserError
from modeldoctor.models.checkpoint import read_torch_file

logger = logging.getLogger(__name__)

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")
PREFIXES = ("module.", "model.", "net.", "_orig_mod.", "backbone.")
# BatchNorm's step counter is absent from older checkpoints; its value does not change what the layer computes.
OPTIONAL_SUFFIXES = ("num_batches_tracked",)


@dataclass
class FittedWeights:
    """A state dict renamed to fit a model, and what did not fit."""

    state: dict[str, torch.Tensor]
    stripped: list[str] = field(default_factory=list)  # prefixes mapped away, outermost first
    unexpected: list[str] = field(default_factory=list)  # keys of the file the model has no place for (ignored)
    missing: list[str] = field(default_factory=list)  # model keys the file does not fill (optional ones only)

    def summary(self) -> str:
        parts = [f"mapped prefix {'+'.join(self.stripped)!r} away" if self.stripped else "keys used as they are"]
        if self.unexpected:
            parts.append(f"ignored {len(self.unexpected)} unexpected keys ({', '.join(self.unexpected[:3])}"
                         f"{', …' if len(self.unexpected) > 3 else ''})")
        if self.missing:
            parts.append(f"kept the model's own {len(self.missing)} optional buffers ({', '.join(self.missing[:2])})")
        return "; ".join(parts)


def read_state_dict(path: str | Path, trust: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, unwrapped from the first wrapper key that holds them."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"weights file {p} does not exist; pass a .pth/.pt file saved with torch.save(model.state_dict())")
    blob = read_torch_file(p, trust)
    if isinstance(blob, nn.Module):
        return blob.state_dict()
    for _ in range(3):  # wrappers nest at most a couple of levels ({"checkpoint": {"state_dict": ...}} is rare)
        if not isinstance(blob, dict):
            break
        tensors = {k: v for k, v in blob.items() if isinstance(v, torch.Tensor)}
        if tensors and len(tensors) >= len(blob) / 2:
            return tensors
        inner = next((blob[k] for k in WRAPPER_KEYS if isinstance(blob.get(k), (dict, nn.Module))), None)
        if inner is None:
            break
        blob = inner.state_dict() if isinstance(inner, nn.Module) else inner
    raise UserError(f"{p} holds no state dict (looked for tensors at the top and under {', '.join(WRAPPER_KEYS)}); "
                    "save the weights with torch.save(model.state_dict(), path)")


def fit_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> FittedWeights:
    """Rename ``state``'s keys to ``model``'s by stripping the chain of up to three known prefixes that fits the
    most keys;
    refuse in one line when a needed key is missing or a shape differs."""
    own = model.state_dict()
    chains = [()] + [(a,) for a in PREFIXES] + [(a, b) for a in PREFIXES for b in PREFIXES] \
        + [(a, b, c) for a in PREFIXES for b in PREFIXES for c in PREFIXES]
    stripped = list(max(chains, key=lambda chain: (len(set(_strip(state, chain)) & set(own)), -len(chain))))
    state = _strip(state, tuple(stripped))
    missing = sorted(set(own) - set(state))
    required = [k for k in missing if not k.endswith(OPTIONAL_SUFFIXES)]
    if required:
        raise UserError(f"{source} lacks {len(required)} of the model's {len(own)} weights ({', '.join(required[:3])}"
                        f"{', …' if len(required) > 3 else ''}); is --model the architecture these weights belong to?")
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and state[k].shape != own[k].shape]
    if shapes:
        raise UserError(f"{source} does not fit the model: shape differs for {'; '.join(shapes[:2])}; check --model "
                        "and that the data has as many classes as the weights' last layer")
    fitted = {k: state[k] for k in own if k in state}
    return FittedWeights(fitted, stripped, sorted(set(state) - set(own)), missing)


def _strip(state: dict[str, torch.Tensor], chain: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """``state`` with the prefix ``"".join(chain)`` removed from the keys that have it (others kept as they are)."""
    prefix = "".join(chain)
    return {k.removeprefix(prefix): v for k, v in state.items()}


def load_foreign_weights(model: nn.Module, path: str | Path, trust: bool = False) -> FittedWeights:
    """Fill ``model`` with the weights in ``path`` (any wrapper or prefix above); optional buffers it lacks keep the
    model's own values.  Returns what was mapped and ignored; logs it in one line."""
    fitted = fit_state_dict(model, read_state_dict(path, trust), str(path))
    model.load_state_dict(fitted.state, strict=False)
    logger.info("weights from %s: %s", path, fitted.summary())
    return fitted
