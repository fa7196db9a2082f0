"""Every measured number in README.md and docs/, generated from benchmarks/results/*.json.

A page marks a generated block with two HTML comments on their own lines::

    <!-- TABLE:shortcut -->
    ... generated, do not edit ...
    <!-- /TABLE:shortcut -->

and this script rewrites what lies between them with the output of the function registered under that name.
``python benchmarks/readme_tables.py`` rewrites README.md and docs/**/*.md in place; ``--check`` only reports the
blocks that differ from the JSON (exit 1), which is what tests/test_readme_numbers.py runs.

Adding a table for a new results file is one function, in the module of benchmarks/tables/ that shares its subject
(tables/base.py holds ``Results``, ``table`` and the formatters; a new module joins the imports below;
``@table(name, pending=True)`` while the JSON may not exist yet)::

    @table("treatment_matrix")
    def treatment_matrix(r: Results) -> str:
        doc = r["treatment_matrix"]           # benchmarks/results/treatment_matrix.json
        return markdown_table(["arm", "test"], [[row["arm"], pct(row["test"])] for row in doc["rows"]])

then ``<!-- TABLE:treatment_matrix -->`` / ``<!-- /TABLE:treatment_matrix -->`` on a page and a run of this script.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # finds tables/ also when a test loads this file by path
# Importing a table module registers its tables; RESULTS stays importable from here.
from tables import analyses, architectures, cost, glance, matrix, shortcut, treatment_studies  # noqa: E402, F401
from tables.base import RESULTS, ROOT, TABLES, Results  # noqa: E402, F401

BLOCK = re.compile(r"<!-- TABLE:(?P<name>[\w-]+) -->\n(?P<body>.*?)<!-- /TABLE:(?P=name) -->", re.S)
START = re.compile(r"<!-- TABLE:([\w-]+) -->")


# ----------------------------------------------------------------------------------------------------- rewriting
def pages(root: Path = ROOT) -> list[Path]:
    """Every page that may hold generated blocks: README.md and docs/**/*.md."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def render(text: str, results: Results, where: str = "page") -> str:
    """``text`` with every ``TABLE:name`` block regenerated; an unknown name or an unclosed block is an error."""
    starts = START.findall(text)
    closed = [m.group("name") for m in BLOCK.finditer(text)]
    if starts != closed:
        raise ValueError(f"{where}: unclosed or nested TABLE block: {sorted(set(starts) - set(closed)) or starts}")
    unknown = sorted(set(starts) - TABLES.keys())
    if unknown:
        raise ValueError(f"{where}: no generator for TABLE {', '.join(unknown)} (benchmarks/readme_tables.py)")

    def one(m: re.Match[str]) -> str:
        name = m.group("name")
        return f"<!-- TABLE:{name} -->\n\n{TABLES[name](results).strip()}\n\n<!-- /TABLE:{name} -->"

    return BLOCK.sub(one, text)


def stale(root: Path = ROOT, results: Results | None = None) -> dict[Path, str]:
    """Pages whose blocks differ from the JSON, with the regenerated text."""
    results = results or Results(root / "benchmarks" / "results")
    out = {}
    for page in pages(root):
        old = page.read_text()
        new = render(old, results, str(page.relative_to(root)))
        if new != old:
            out[page] = new
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report pages whose blocks differ; write nothing")
    args = parser.parse_args(argv)
    changed = stale()
    for page, text in changed.items():
        rel = page.relative_to(ROOT)
        if args.check:
            print(f"{rel}: generated blocks differ from benchmarks/results; run python benchmarks/readme_tables.py",
                  file=sys.stderr)
        else:
            page.write_text(text)
            print(f"rewrote {rel}", file=sys.stderr)
    return 1 if (args.check and changed) else 0


if __name__ == "__main__":
    sys.exit(main())
