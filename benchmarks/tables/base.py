"""The results reader, the table registry and the formatters every table module shares."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
RESULTS = ROOT / "benchmarks" / "results"


class Results:
    """``results["shortcut"]`` = benchmarks/results/shortcut.json, read once."""

    def __init__(self, folder: Path = RESULTS) -> None:
        self.folder = folder
        self._cache: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self._cache:
            self._cache[name] = json.loads((self.folder / f"{name}.json").read_text())
        return self._cache[name]

    def has(self, name: str) -> bool:
        return (self.folder / f"{name}.json").exists()


TABLES: dict[str, Callable[[Results], str]] = {}


def table(name: str, pending: bool = False) -> Callable[[Callable[[Results], str]], Callable[[Results], str]]:
    """Register a block generator under ``name`` (the ``TABLE:name`` marker); a ``pending`` one reads
    benchmarks/results/{name}.json, and until that exists the block says it is not measured yet."""

    def register(fn: Callable[[Results], str]) -> Callable[[Results], str]:
        if name in TABLES:
            raise ValueError(f"table {name!r} registered twice")
        TABLES[name] = (lambda r: fn(r) if r.has(name) else not_measured(name)) if pending else fn
        return fn

    return register


# ----------------------------------------------------------------------------------------------------- formatting
def pct(x: float, digits: int = 1) -> str:
    """A fraction as a percentage without the sign: 0.9287 → '92.9'."""
    return f"{100 * x:.{digits}f}"


def pm(stat: dict, digits: int = 2, scale: float = 100.0) -> str:
    """``{"mean", "std"}`` as 'mean ± std' (fractions scaled to percent by default)."""
    return f"{scale * stat['mean']:.{digits}f} ± {scale * stat['std']:.{digits}f}"


def num(x: float, digits: int = 2) -> str:
    return f"{x:.{digits}f}"


def thousands(x: float) -> str:
    return f"{x:,.0f}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: Sequence[str] | None = None) -> str:
    rule = [("---:" if a == "r" else "---") for a in (align or ["l"] * len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def not_measured(name: str) -> str:
    """A block's text while benchmarks/results/{name}.json does not exist yet."""
    return f"_Not measured yet: generated from `benchmarks/results/{name}.json`._"


def source(*names: str) -> str:
    """The line under a table naming the results files it comes from."""
    files = ", ".join(f"`benchmarks/results/{n}.json`" for n in names)
    return f"<small>Generated from {files} by `benchmarks/readme_tables.py`.</small>"
