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

from modeldoctor.core.errors import UserError
from modeldoctor.core.files import atomic_path
from modeldoctor.models.focused_dropout import insert_focused_dropout
from modeldoctor.models.zoo import build_model

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
    blob = read_torch_file(p, trust)
    if isinstance(blob, nn.Module):
        raise UserError(f"{p} is a pickled full model without metadata; re-save it with "
                        "modeldoctor.models.checkpoint.save_checkpoint(path, model, CheckpointMeta(...))")
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise UserError(f"{p} is not a modeldoctor checkpoint (no '{FORMAT}' marker); train one with `modeldoctor train`")
    try:
        meta = CheckpointMeta(**json.loads(blob["meta_json"]))
        state = dict(blob["state_dict"])
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{p} has unreadable metadata or weights ({exc}); the file is damaged") from None
    if meta.weights_sha256 and weights_hash(state) != meta.weights_sha256:
        raise UserError(f"{p} is corrupted: its weights do not match the SHA-256 recorded when it was saved; "
                        "use an intact copy")
    model = build_model(meta.model, meta.num_classes, meta.in_channels)
    if meta.train_config.get("focused_dropout"):
        insert_focused_dropout(model, **meta.train_config["focused_dropout"])
    load_state(model, state, str(p))
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


def read_torch_file(p: Path, trust: bool) -> Any:
    """``torch.load`` of ``p`` on the CPU, weights-only unless ``trust``; every failure is one UserError line."""
    with p.open("rb") as f:
        head = f.read(2)
    is_zip = head == b"PK"  # torch.save's archive; a plain pickle starts with the PROTO opcode 0x80
    if not is_zip and head[:1] != b"\x80":
        raise UserError(f"{p} is not a PyTorch checkpoint (neither a torch.save archive nor a pickle); "
                        "pass the model.pt written by `modeldoctor train`")
    try:
        return torch.load(p, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as exc:
        # The weights-only unpickler names the refused GLOBAL; a plain pickle fails on its framing opcodes.
        if not trust and (not is_zip or "global" in str(exc).lower()):
            raise UserError(f"{p} contains pickled Python objects, which can run code when loaded; "
                            "if you trust its origin pass --trust-checkpoint") from None
        raise UserError(f"{p} is corrupted or truncated ({_first_line(exc)})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError, IndexError,
            AttributeError, ImportError, TypeError) as exc:
        # torch.load surfaces damaged input as any of these; trusted unpickling adds import/attribute errors.
        raise UserError(f"{p} is corrupted, truncated or not a PyTorch file ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0][:120] if lines else ''}"
