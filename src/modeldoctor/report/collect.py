"""Find the outputs of modeldoctor commands anywhere under a run directory.

Each command writes a file with a fixed name (:mod:`modeldoctor.io.names`); the report shows a section for every
kind it finds.  When a name occurs more than once the shallowest path wins (ties: the alphabetically first), so
``RUN/treat.json`` beats ``RUN/old/treat.json``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modeldoctor.core.errors import UserError
from modeldoctor.io import names
from modeldoctor.io.documents import ABLATION, ANNOTATION_LIST, DECOMPOSITION, STABILITY, TREATMENT, Document

DOCUMENTS = (ANNOTATION_LIST, TREATMENT, ABLATION, DECOMPOSITION, STABILITY)


@dataclass
class RunFiles:
    """Paths of the outputs found under ``root`` (absent kinds are simply missing)."""

    root: Path
    documents: dict[str, Path] = field(default_factory=dict)  # file name → the shallowest copy
    diagnosis: Path | None = None  # diagnosis.json; its directory holds the whole diagnosis
    checkpoints: list[Path] = field(default_factory=list)
    explain_pngs: list[Path] = field(default_factory=list)  # overlays written by `modeldoctor explain`

    def path(self, document: Document) -> Path | None:
        return self.documents.get(document.name)

    def read(self, document: Document) -> dict[str, Any] | None:
        """The document through its one reader, or ``None`` when the run has none."""
        path = self.path(document)
        return document.read(path) if path is not None else None


def find_outputs(run_dir: str | Path) -> RunFiles:
    """Scan ``run_dir`` recursively for known output files, explain overlays and checkpoints (``*.pt``)."""
    root = Path(run_dir)
    if not root.is_dir():
        raise UserError(f"{root} is not a directory; pass the --out directory of modeldoctor commands")

    def found(pattern: str) -> list[Path]:
        return _shallowest_first(root, (p for p in root.rglob(pattern) if p.is_file()))

    files = RunFiles(root)
    for document in DOCUMENTS:
        hits = found(document.name)
        if hits:
            files.documents[document.name] = hits[0]
    files.diagnosis = next(iter(found(names.DIAGNOSIS_JSON)), None)
    files.explain_pngs = found(names.EXPLAIN_PATTERN)
    files.checkpoints = found(names.CHECKPOINT_PATTERN)
    return files


def _shallowest_first(root: Path, paths: Iterable[Path]) -> list[Path]:
    """Without the temporary files of atomic writes (``.name.tmp``) and hidden folders; shallowest first."""
    visible = [p for p in paths if not any(part.startswith(".") for part in p.relative_to(root).parts)]
    return sorted(visible, key=lambda p: (len(p.relative_to(root).parts), str(p)))
