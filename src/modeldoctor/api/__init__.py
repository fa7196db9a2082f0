"""The Python API: one function per CLI command, on model objects instead of files — the only orchestration.

``modeldoctor <command>`` parses its arguments, loads its inputs through :mod:`modeldoctor.io`, calls the function
here and writes what it returns through :mod:`modeldoctor.io`; the demo calls the same functions.  Each returns a
typed result whose ``to_dict()`` is the command's JSON layout (less the file paths), or that layout itself.

========== ====================================== =========================================
command    function                               result
========== ====================================== =========================================
train      :func:`train`                          :class:`TrainResult`
evaluate   :func:`evaluate_model`                 metrics by split
import     :func:`from_model`                     :class:`Imported`
layers     :func:`list_layers`                    ``{"layers", "default"}``
diagnose   :func:`diagnose_model`                 :class:`DiagnoseResult`
explain    :func:`explain`                        :class:`ExplainResult`
treat      :func:`treat`, :func:`treat_seeds`     :class:`TreatmentResult` (``treatment_document``)
ablate     :func:`ablate`                         :class:`AblationReport`
decompose  :func:`decompose`                      :class:`DecompositionReport`
dissect    :func:`dissect`                        :class:`DissectionReport`
stability  :func:`stability`                      the ``stability.json`` layout
report     :func:`write_report`                   :class:`ReportResult` (``build_report``: its path)
========== ====================================== =========================================

``diagnose --masks`` adds :func:`shortcut_check` (the model alone against background-swap composites).

Every function leaves the model passed in as it found it.
"""

from modeldoctor.api.analyses import (
    AblationReport,
    DecompositionReport,
    DissectionReport,
    ablate,
    decompose,
    dissect,
    stability,
    stability_figure,
)
from modeldoctor.api.diagnosis import (
    DiagnoseResult,
    ExplainResult,
    annotation_list,
    diagnose_model,
    explain,
    shortcut_check,
)
from modeldoctor.api.imports import Imported, from_model
from modeldoctor.api.training import TrainResult, evaluate_model, list_layers, train
from modeldoctor.api.treatment import Arm, TreatmentResult, treat, treat_seeds, treatment_document
from modeldoctor.doctor.explain import save_overlay
from modeldoctor.report.build import ReportResult, write_report
from modeldoctor.report.build import report as build_report

__all__ = [
    "AblationReport", "Arm", "DecompositionReport", "DiagnoseResult", "DissectionReport", "ExplainResult",
    "Imported", "ReportResult", "TrainResult", "TreatmentResult", "ablate", "annotation_list", "build_report", "decompose",
    "diagnose_model", "dissect", "evaluate_model", "explain", "from_model", "list_layers", "save_overlay",
    "shortcut_check", "stability",
    "stability_figure", "train", "treat", "treat_seeds", "treatment_document", "write_report",
]
