"""Model Doctor: diagnose and treat trained CNN image classifiers.

The Python API mirrors the CLI, one function per command (:mod:`modeldoctor.api`)::

    import modeldoctor as md
    model, meta = md.load_checkpoint("runs/base/model.pt")      # or your own nn.Module
    data = md.load_data("shortcut-mnist")
    diagnosis = md.diagnose(model, data.train, layers="all")     # Eq. 3-4
    result = md.treat(model, diagnosis, data, annotate_per_class=20)
    md.build_report("runs/demo")                                 # one HTML file

Commands: ``train``, ``from_model`` (a model trained elsewhere), ``evaluate_model``, ``list_layers``,
``diagnose_model``, ``explain``, ``treat`` /
``treat_seeds``, ``ablate``, ``decompose``, ``dissect``, ``stability``, ``write_report`` / ``build_report``,
``run_demo``; each returns a typed result with ``to_dict()`` (the command's JSON layout).  The engine functions
they compose stay available: ``fit``, ``evaluate``, ``diagnose``, ``annotation_list``, ``explain_image``,
``unit_deletion``, ``decompose_model``, ``discovery2``.

``ModelDoctorCallback`` (the optional Lightning integration) is imported on first use, so Lightning is
needed only by those who use it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from modeldoctor.analyses.ablation import unit_deletion
from modeldoctor.analyses.decompose_protocol import decompose_model
from modeldoctor.analyses.stability import discovery2
from modeldoctor.api import (
    AblationReport,
    DecompositionReport,
    DiagnoseResult,
    DissectionReport,
    ExplainResult,
    Imported,
    ReportResult,
    TrainResult,
    TreatmentResult,
    ablate,
    annotation_list,
    build_report,
    decompose,
    diagnose_model,
    dissect,
    evaluate_model,
    explain,
    from_model,
    list_layers,
    stability,
    train,
    treat,
    treat_seeds,
    treatment_document,
    write_report,
)
from modeldoctor.core.errors import UserError
from modeldoctor.data.sources import load_data
from modeldoctor.demo import run_demo
from modeldoctor.doctor.diagnosis import Diagnosis, DiagnosisOptions, diagnose
from modeldoctor.doctor.explain import explain_image
from modeldoctor.doctor.treatment import TreatConfig
from modeldoctor.io.diagnosis_files import load_diagnosis, save_diagnosis
from modeldoctor.models.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from modeldoctor.models.zoo import build_model
from modeldoctor.training import TrainConfig, evaluate, fit

if TYPE_CHECKING:
    from modeldoctor.lightning import ModelDoctorCallback

__version__ = "0.1.0"

__all__ = [
    "AblationReport", "CheckpointMeta", "DecompositionReport", "Diagnosis", "DiagnosisOptions", "DiagnoseResult",
    "DissectionReport", "ExplainResult", "Imported", "ModelDoctorCallback", "ReportResult", "TrainConfig", "TrainResult",
    "TreatConfig", "TreatmentResult", "UserError",
    "ablate", "annotation_list", "build_model", "build_report", "decompose", "decompose_model", "diagnose",
    "diagnose_model", "discovery2", "dissect", "evaluate", "evaluate_model", "explain", "explain_image", "fit", "from_model",
    "list_layers", "load_checkpoint", "load_data", "load_diagnosis", "run_demo", "save_checkpoint", "save_diagnosis",
    "stability", "train", "treat", "treat_seeds", "treatment_document", "unit_deletion", "write_report",
]


def __getattr__(name: str) -> Any:
    if name == "ModelDoctorCallback":
        from modeldoctor.lightning import ModelDoctorCallback

        return ModelDoctorCallback
    raise AttributeError(f"module 'modeldoctor' has no attribute {name!r}")
