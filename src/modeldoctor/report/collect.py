"""Find the outputs of modeldoctor commands anywhere under a run directory.

Each command writes a file with a fixed name (``diagnosis.json``, ``treat.json``, ...); the report shows a
section for every kind it finds.  When a name occurs more than once the shallowest path wins (ties: the
alphabetically first), so ``RUN/treat.json`` beats ``RUN/old/treat.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modeldoctor.core.errors import UserError
from modeldoctor.core.files import read_json
from modeldoctor.io import names

NAMES = {"diagnosis": names.DIAGNOSIS_JSON, "annotate": names.ANNOTATE, "treat": names.TREAT, "ablate": names.ABLATE,
         "decompose": names.DECOMPOSE, "stability": names.STABILITY}


@dataclass
class RunFiles:
    """Paths of the outputs found under ``root`` (``None`` where a command's output is absent)."""

    root: Path
    found: dict[str, Path] = field(default_factory=dict)
    checkpoints: list[Path] = field(default_factory=list)
    explain_pngs: list[Path] = field(default_factory=list)  # overlays written by `modeldoctor explain`

    def get(self, kind: str) -> Path | None:
        return self.found.get(kind)

    def json(self, kind: str) -> Any:
        path = self.found.get(kind)
        return read_json(path) if path is not None else None


def find_outputs(run_dir: str | Path) -> RunFiles:
    """Scan ``run_dir`` recursively for known output files, explain overlays and checkpoints (``*.pt``)."""
    root = Path(run_dir)
    if not root.is_dir():
        raise UserError(f"{root} is not a directory; pass the --out directory of modeldoctor commands")
    files = RunFiles(root)

    def depth_first(paths: list[Path]) -> list[Path]:
        return sorted(paths, key=lambda p: (len(p.relative_to(root).parts), str(p)))

    for kind, name in NAMES.items():
        hits = depth_first([p for p in root.rglob(name) if p.is_file() and not _hidden(p, root)])
        if hits:
            files.found[kind] = hits[0]
    files.explain_pngs = depth_first([p for p in root.rglob("explain-*.png") if not _hidden(p, root)])
    files.checkpoints = depth_first([p for p in root.rglob("*.pt") if p.is_file() and not _hidden(p, root)])
    return files


def _hidden(path: Path, root: Path) -> bool:
    """Skip temporary files of atomic writes (``.name.tmp``) and hidden folders."""
    return any(part.startswith(".") for part in path.relative_to(root).parts)
