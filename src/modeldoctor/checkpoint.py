"""Checkpoints: the state dict plus everything needed to rebuild and re-evaluate the model.

Saved with ``torch.save`` as a dict of tensors and one JSON string, so loading works with
``torch.load(weights_only=True)``; a pickled full model is refused unless the user trusts it.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import UserError
from .fileio import atomic_path
from .models import build_model

FORMAT = "modeldoctor-checkpoint/1"


@dataclass
class CheckpointMeta:
    """What a checkpoint remembers besides the weights."""

    model: str
    num_classes: int
    in_channels: int
    input_size: int
    class_names: list[str]
    mean: list[float]
    std: list[float]
    dataset: str
    train_config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    weights_sha256: str = ""
    parent: str | None = None  # the checkpoint this one was fine-tuned from, if any


def weights_hash(model_or_state: nn.Module | dict[str, torch.Tensor]) -> str:
    """SHA-256 over the state dict's names and bytes, in name order."""
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_checkpoint(path: str | Path, model: nn.Module, meta: CheckpointMeta,
                    protect: tuple[str | Path, ...] = ()) -> Path:
    """Write atomically; ``protect`` names input files that must never be overwritten."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    meta.weights_sha256 = weights_hash(state)
    with atomic_path(path, protect=protect) as tmp:
        torch.save({"format": FORMAT, "state_dict": state, "meta_json": json.dumps(asdict(meta))}, tmp)
    return Path(path)


def load_checkpoint(path: str | Path, trust: bool = False) -> tuple[nn.Module, CheckpointMeta]:
    """Rebuild the model from a checkpoint written by :func:`save_checkpoint`; weights-only unless ``trust``."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"checkpoint {p} does not exist; pass the model.pt written by `modeldoctor train`")
    blob = _read(p, trust)
    if isinstance(blob, nn.Module):
        raise UserError(f"{p} is a pickled full model without metadata; re-save it with "
                        "modeldoctor.checkpoint.save_checkpoint(path, model, CheckpointMeta(...))")
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise UserError(f"{p} is not a modeldoctor checkpoint (no '{FORMAT}' marker); train one with `modeldoctor train`")
    try:
        meta = CheckpointMeta(**json.loads(blob["meta_json"]))
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise UserError(f"{p} has unreadable metadata ({exc}); the file is damaged") from None
    model = build_model(meta.model, meta.num_classes, meta.in_channels)
    load_state(model, blob["state_dict"], str(p))
    model.eval()
    return model, meta


def load_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load weights, turning any key or shape mismatch into one line that says what differs."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or shapes:
        detail = (f"missing {missing[:3]}" if missing else "") + (f" unexpected {unexpected[:3]}" if unexpected else "") \
            + (f" shape differs for {shapes[:3]}" if shapes else "")
        raise UserError(f"{source} does not fit this model ({detail.strip()}); use the checkpoint trained for it")
    model.load_state_dict(state)


def _read(p: Path, trust: bool) -> Any:
    try:
        return torch.load(p, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as exc:
        if "weights_only" in str(exc) or "Unsupported" in str(exc) or "global" in str(exc).lower():
            raise UserError(f"{p} contains pickled Python objects, which can run code when loaded; "
                            "if you trust its origin pass --trust-checkpoint") from None
        raise UserError(f"{p} is corrupted or truncated ({str(exc).splitlines()[0]})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise UserError(f"{p} is corrupted, truncated or not a PyTorch file ({str(exc).splitlines()[0][:120]})") from None
