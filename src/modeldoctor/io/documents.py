"""The JSON documents the commands write and other steps read back: one :class:`Document` (one writer, one
reader) each, plus the one CSV table.

``annotate.json`` (:data:`ANNOTATION_LIST`): ``{"per_class": {class_name: [{"id", "confidence", "label",
"predicted"}, ...]}}`` — per true class, the training images with the lowest probability of their true label;
with ``diagnose --masks`` the classes come worst background first, as ``"priority"`` records (pull per class).

``treat.json`` (:data:`TREATMENT`): ``{"checkpoint", "original" | "control" | "treated": M, "config",
"train_config", "annotated", "held_out", "lambdas", "select", "weight_change"}`` with ``M = {"val" | "test" |
"swap": {"accuracy", "per_class"}}`` (plus ``"std"`` and ``"seeds"`` over several seeds); ``control`` is null
without a control.

``ablate.json`` (:data:`ABLATION`), ``decompose.json`` (:data:`DECOMPOSITION`), ``influential.json``
(:data:`INFLUENTIAL`), ``stability.json`` (:data:`STABILITY`), ``dissect.json`` (:data:`DISSECTION`): what the
command of the same name prints with ``--json`` (the layouts are on each command's page under docs/commands/).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modeldoctor.analyses.ablation import UnitDeletion
from modeldoctor.core.errors import UserError
from modeldoctor.core.files import read_json, write_json, write_text
from modeldoctor.io import names


@dataclass(frozen=True)
class Document:
    """One JSON output: its file name, the keys every copy holds, and the command that writes it."""

    name: str
    keys: tuple[str, ...]
    command: str

    def path(self, directory: str | Path) -> Path:
        return Path(directory) / self.name

    def write(self, directory: str | Path, document: Mapping[str, Any]) -> Path:
        """Write ``directory/<name>`` atomically; a document without the keys its reader needs is a bug."""
        missing = [k for k in self.keys if k not in document]
        if missing:
            raise ValueError(f"a {self.name} document needs the keys {missing}")
        return write_json(self.path(directory), dict(document))

    def read(self, path: str | Path) -> dict[str, Any]:
        """``path``: the file, or the directory holding it under its usual name."""
        p = Path(path)
        file = self.path(p) if p.is_dir() else p
        document = read_json(file)
        missing = [k for k in self.keys if not isinstance(document, dict) or k not in document]
        if missing:
            raise UserError(f"{file} is not a valid {self.name} (no {', '.join(map(repr, missing))}); run `{self.command}`")
        return document


ANNOTATION_LIST = Document(names.ANNOTATE, ("per_class",), "modeldoctor diagnose --lowest K")
TREATMENT = Document(names.TREAT, ("original", "treated"), "modeldoctor treat")
ABLATION = Document(names.ABLATE, ("layer", "rank_split", "baseline", "units", "ranking"), "modeldoctor ablate --out DIR")
DECOMPOSITION = Document(names.DECOMPOSE, ("layer", "accuracy_full", "accuracy_decomposed", "r_A"),
                         "modeldoctor decompose --out DIR")
INFLUENTIAL = Document(names.INFLUENTIAL, ("layer", "influential", "histogram"), "modeldoctor decompose --out DIR")
STABILITY = Document(names.STABILITY, ("auroc", "fgsm", "curves"), "modeldoctor stability --out DIR")
DISSECTION = Document(names.DISSECT, ("layers",), "modeldoctor dissect --out DIR")


def write_unit_table(directory: str | Path, result: UnitDeletion, class_names: Sequence[str]) -> Path:
    """``ablate_units.csv``: one row per unit and class (plus class ``overall``): accuracy with the unit removed
    and its Δ against the intact model."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["unit", "class", "accuracy", "delta"])
    for i, u in enumerate(result.units):
        w.writerow([u, "overall", f"{float(result.accuracy[i]):.6f}", f"{float(result.delta[i]):.6f}"])
        for k, name in enumerate(class_names):
            w.writerow([u, name, f"{float(result.per_class[i, k]):.6f}", f"{float(result.delta_per_class[i, k]):.6f}"])
    return write_text(Path(directory) / names.ABLATE_UNITS, buf.getvalue())
