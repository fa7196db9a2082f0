"""Model Doctor: diagnose and treat trained CNN image classifiers.

The Python API mirrors the CLI::

    import modeldoctor as md
    model, meta = md.load_checkpoint("runs/base/model.pt")      # or your own nn.Module
    data = md.load_data("shortcut-mnist")
    diagnosis = md.diagnose(model, data.train, layers="all")     # Eq. 3-4
    result = md.treat(model, diagnosis, data, annotate_per_class=20)
    md.build_report("runs/demo")                                 # one HTML file

``ModelDoctorCallback`` (the optional Lightning integration) is imported on first use, so Lightning is
needed only by those who use it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from modeldoctor.analyses.ablation import unit_deletion as ablate
from modeldoctor.analyses.decompose import decompose_model
from modeldoctor.analyses.stability import discovery2
from modeldoctor.api import TreatmentResult, annotation_list, treat
from modeldoctor.core.errors import UserError
from modeldoctor.data.sources import load_data
from modeldoctor.demo import run_demo
from modeldoctor.doctor.diagnosis import Diagnosis, diagnose
from modeldoctor.doctor.explain import explain_image
from modeldoctor.io.diagnosis_files import load_diagnosis, save_diagnosis
from modeldoctor.models.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from modeldoctor.models.zoo import build_model
from modeldoctor.report import report as build_report
from modeldoctor.training import TrainConfig, evaluate, fit

if TYPE_CHECKING:
    from modeldoctor.lightning import ModelDoctorCallback

__version__ = "0.1.0"

__all__ = [
    "CheckpointMeta", "Diagnosis", "ModelDoctorCallback", "TrainConfig", "TreatmentResult", "UserError",
    "ablate", "annotation_list", "build_model", "build_report", "decompose_model", "diagnose", "discovery2",
    "evaluate", "explain_image", "fit", "load_checkpoint", "load_data", "load_diagnosis", "run_demo",
    "save_checkpoint", "save_diagnosis", "treat",
]


def __getattr__(name: str) -> Any:
    if name == "ModelDoctorCallback":
        from modeldoctor.lightning import ModelDoctorCallback

        return ModelDoctorCallback
    raise AttributeError(f"module 'modeldoctor' has no attribute {name!r}")
