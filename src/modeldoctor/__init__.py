"""Model Doctor: diagnose and treat trained CNN image classifiers.

The Python API mirrors the CLI (names are imported on first use, so ``import modeldoctor`` stays light)::

    import modeldoctor as md
    model, meta = md.load_checkpoint("runs/base/model.pt")      # or your own nn.Module
    data = md.load_data("shortcut-mnist")
    diagnosis = md.diagnose(model, data.train, layers="all")     # Eq. 3-4
    result = md.treat(model, diagnosis, data, annotate_per_class=20)
    md.build_report("runs/demo")                                 # one HTML file

A name equal to a submodule (``explain``, ``decompose``, ``stability``, ``report``) would be replaced by that
submodule as soon as it is imported, so those commands are exported as ``explain_image``,
``decompose_model``, ``discovery2`` and ``build_report``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "load_data": ("data", "load_data"),
    "build_model": ("models", "build_model"),
    "load_checkpoint": ("checkpoint", "load_checkpoint"),
    "save_checkpoint": ("checkpoint", "save_checkpoint"),
    "CheckpointMeta": ("checkpoint", "CheckpointMeta"),
    "TrainConfig": ("training", "TrainConfig"),
    "fit": ("training", "fit"),
    "evaluate": ("training", "evaluate"),
    "diagnose": ("diagnosis", "diagnose"),
    "Diagnosis": ("diagnosis", "Diagnosis"),
    "load_diagnosis": ("diagnosis_io", "load_diagnosis"),
    "save_diagnosis": ("diagnosis_io", "save_diagnosis"),
    "explain_image": ("explain", "explain_image"),
    "annotation_list": ("api", "annotation_list"),
    "treat": ("api", "treat"),
    "TreatmentResult": ("api", "TreatmentResult"),
    "ablate": ("ablation", "unit_deletion"),
    "decompose_model": ("decompose", "decompose_model"),
    "discovery2": ("stability", "discovery2"),
    "build_report": ("report", "report"),
    "run_demo": ("demo", "run_demo"),
    "ModelDoctorCallback": ("lightning", "ModelDoctorCallback"),
    "UserError": ("errors", "UserError"),
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'modeldoctor' has no attribute {name!r}")
    module, attr = _API[name]
    value = getattr(importlib.import_module(f".{module}", __name__), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
