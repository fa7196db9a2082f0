"""A diagnosis on disk: ``diagnosis.safetensors`` (tensors) + ``diagnosis.json`` (everything else).

Tensors, for each layer named by its dotted name: ``<layer>`` = ā float32 [classes, channels],
``<layer>/sums`` float64, ``<layer>/counts`` int64 [classes], ``<layer>/profiles`` float32
[classes, P, channels], ``<layer>/relevant`` uint8 [classes, channels] (the default relevance method);
plus ``profile_index`` int64 and ``profile_confidence`` float32 [classes, P].
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from modeldoctor.core.device import model_device
from modeldoctor.core.errors import UserError
from modeldoctor.core.files import read_json, write_bytes, write_json
from modeldoctor.core.layers import FeatureCapture, resolve_layers, train_mode
from modeldoctor.core.outputs import select_logits
from modeldoctor.doctor.diagnosis import Diagnosis, DiagnosisOptions, LayerDiagnosis
from modeldoctor.doctor.discovery import discovery_statistics
from modeldoctor.io import names
from modeldoctor.models.checkpoint import weights_hash

logger = logging.getLogger(__name__)

FORMAT = "modeldoctor-diagnosis/1"
TENSORS = names.DIAGNOSIS_TENSORS
META = names.DIAGNOSIS_JSON


def save_diagnosis(diagnosis: Diagnosis, directory: str | Path, shortcut: dict[str, Any] | None = None) -> Path:
    """Write both files atomically; returns the directory.  ``shortcut``: the shortcut check
    (:mod:`modeldoctor.doctor.shortcut`), kept in diagnosis.json under ``"shortcut"`` (:func:`read_shortcut`)."""
    out = Path(directory)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a directory; choose a directory for the diagnosis")
    out.mkdir(parents=True, exist_ok=True)
    relevance = diagnosis.default_relevance()
    tensors: dict[str, torch.Tensor] = {"profile_index": diagnosis.profile_index,
                                        "profile_confidence": diagnosis.profile_confidence}
    for name, layer in diagnosis.layers.items():
        tensors[name] = layer.correlation
        tensors[f"{name}/sums"] = layer.sums
        tensors[f"{name}/counts"] = layer.counts
        tensors[f"{name}/profiles"] = layer.profiles
        tensors[f"{name}/relevant"] = diagnosis.relevant(name).to(torch.uint8)
    write_bytes(out / TENSORS, save_safetensors({k: v.contiguous() for k, v in tensors.items()}))
    meta = {
        "format": FORMAT,
        "model": diagnosis.model_spec,
        "weights_sha256": diagnosis.weights_sha256,
        "input_shape": list(diagnosis.input_shape),
        "class_names": diagnosis.class_names,
        "options": asdict(diagnosis.options),
        "relevance": relevance,
        "layers": [{"name": n, "depth": ln.depth, "shape": list(ln.shape), "scale": ln.scale, "delta": ln.delta}
                   for n, ln in diagnosis.layers.items()],
        "profile_ids": diagnosis.profile_ids,
        "fallback_reason": diagnosis.fallback_reason,
        "timings": diagnosis.timings,
        "statistics": discovery_statistics(diagnosis),
    }
    if shortcut is not None:
        meta["shortcut"] = shortcut
    write_json(out / META, finite(meta))
    return out


def finite(obj: Any) -> Any:
    """Strict JSON has no NaN/Infinity: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def read_shortcut(directory: str | Path) -> dict[str, Any] | None:
    """The shortcut check stored in a diagnosis.json (``None`` when the diagnosis was made without masks)."""
    path = Path(directory)
    meta = read_json(path if path.is_file() else path / META)
    found = meta.get("shortcut") if isinstance(meta, dict) else None
    return found if isinstance(found, dict) else None


def load_diagnosis(directory: str | Path, model: nn.Module | None = None,
                   require_same_weights: bool = False) -> Diagnosis:
    """Read a diagnosis; with ``model``, check it has the same layers, channels and classes (and weights)."""
    path = Path(directory)
    if path.is_file():
        path = path.parent
    meta = read_json(path / META)
    if meta.get("format") != FORMAT:
        raise UserError(f"{path / META} is not a modeldoctor diagnosis (no '{FORMAT}'); run `modeldoctor diagnose`")
    blob = (path / TENSORS).read_bytes() if (path / TENSORS).is_file() else None
    if blob is None:
        raise UserError(f"{path / TENSORS} is missing; re-run `modeldoctor diagnose --out {path}`")
    try:
        tensors = load_safetensors(blob)
    except Exception as exc:  # noqa: BLE001 - any parse failure means a damaged file
        raise UserError(f"{path / TENSORS} is damaged ({type(exc).__name__}); re-run `modeldoctor diagnose`") from None
    options = DiagnosisOptions(**meta["options"])
    layers = {}
    for entry in meta["layers"]:
        n = entry["name"]
        layers[n] = LayerDiagnosis(n, entry["depth"], tuple(entry["shape"]), entry["scale"], entry["delta"],
                                   tensors[f"{n}/sums"], tensors[f"{n}/counts"], tensors[f"{n}/profiles"])
    diagnosis = Diagnosis(layers, meta["class_names"], options, meta["weights_sha256"], tuple(meta["input_shape"]),
                          tensors["profile_index"], tensors["profile_confidence"], meta["profile_ids"],
                          meta.get("model"), meta.get("timings", {}), meta.get("fallback_reason"))
    if model is not None:
        check_matches(diagnosis, model, require_same_weights, str(path))
    return diagnosis


def check_matches(diagnosis: Diagnosis, model: nn.Module, require_same_weights: bool = False,
                  where: str = "the diagnosis") -> None:
    """Raise a UserError naming every difference in layers, channels and classes between diagnosis and model.

    A weights-hash difference is expected after treatment (same architecture, new weights): a note on
    stderr, or an error with ``require_same_weights``.
    """
    modules = dict(model.named_modules())
    missing = [n for n in diagnosis.layers if n not in modules]
    if missing:
        raise UserError(f"{where} was made for layers the model lacks: {', '.join(missing)}; "
                        "diagnose this model again")
    names = resolve_layers(model, list(diagnosis.layers))
    with train_mode(model, False), FeatureCapture(model, names) as cap, torch.no_grad():
        classes = select_logits(model(torch.zeros(1, *diagnosis.input_shape, device=model_device(model)))).shape[1]
    problems = [f"{n}: {ln.channels} channels in the diagnosis, {cap.captured[n].shape[1]} in the model"
                for n, ln in diagnosis.layers.items() if cap.captured[n].shape[1] != ln.channels]
    if classes != diagnosis.num_classes:
        problems.append(f"{diagnosis.num_classes} classes in the diagnosis, {classes} in the model")
    if problems:
        raise UserError(f"{where} does not match the model ({'; '.join(problems)}); diagnose this model again")
    if weights_hash(model) != diagnosis.weights_sha256:
        message = f"{where} was computed for other weights of this architecture"
        if require_same_weights:
            raise UserError(f"{message}; diagnose this model again")
        logger.warning("%s", message)
