"""How far does a matrix cell move when its baselines are trained again? (issue 18)

Training is bit-for-bit repeatable within a session but not from one session's machine to the next: the same code
and seeds give other vanilla and clean models, and the run cache (``results/cache/matrix``, ignored by git) need not
outlive a session.  Every matrix cell is therefore one draw of its baselines.  This re-runs the shipped default of
the given background-shortcut cells (default: every one in the committed ``treatment_matrix.json``) on the baselines
in this machine's cache, through the matrix's own code (``treatment_matrix.seed_rows``: both arms, the verdict,
the clean reference, the shortcut check; report seeds 0–2, every option at its default, no do-no-harm or other
methods), and sets each beside the committed cell: vanilla, control and default test, the gap recovered, the
paired gain in control std and the issue's goals.  It chooses nothing; the matrix keeps its cells.  Where the cache
holds the matrix's own baselines the two agree; ``same_vanilla`` says whether the vanilla means match.

Usage: python benchmarks/matrix_reproduce.py [--cells FAMILY/ARCH/MASKS,...] [--out NAME.json]
Last stdout line: JSON {cell: {matrix_gap, fresh_gap}}.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch

torch.set_num_threads(1)

from modeldoctor.core.files import write_json  # noqa: E402
from tables.matrix import ON_OBJECT  # noqa: E402
from treatment_matrix import REPORT_SEEDS, RESULTS, seed_rows, summarise  # noqa: E402

ARMS = ("vanilla", "clean", "control", "default", "recommended")
KEPT = ("test_mean", "test_std", "swap_mean", "gap_recovered", "paired_vs_control", "paired_vs_control_std", "control_std")


def committed() -> dict[str, dict[str, dict[str, Any]]]:
    """The committed matrix's background-shortcut cells, ``FAMILY/ARCH/MASKS`` → method → row."""
    cells: dict[str, dict[str, dict[str, Any]]] = {}
    for c in json.loads((RESULTS / "treatment_matrix.json").read_text())["cells"]:
        if c["family"] not in ON_OBJECT:
            cells.setdefault(f"{c['family']}/{c['arch']}/{c['masks']}", {})[c["method"]] = c
    return cells


def brief(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What the comparison needs of a cell: each arm's test, swap and gap, the default's goals, the verdicts."""
    out: dict[str, Any] = {arm: {k: rows[arm][k] for k in KEPT} for arm in ARMS if arm in rows}
    default = rows["default"]
    std = max(default["control_std"], 1e-9)
    out["paired_in_control_std"] = default["paired_vs_control"] / std
    out["goals"] = {"gap_80": default["gap_recovered"] >= 0.8, "above_2_std": default["paired_vs_control"] > 2 * std,
                    "not_below_1_std": default["paired_vs_control"] >= -std}
    verdict = rows["verdict"]
    out.update(chosen=verdict["chosen"], use_treated=verdict["use_treated"], treat_version=verdict["treat_version"])
    return out


def fresh_cell(cell: str) -> dict[str, Any]:
    family, arch, kind = cell.split("/")
    per_seed = {s: seed_rows(family, arch, kind, s, [], None, harm=False) for s in REPORT_SEEDS}
    return brief({c["method"]: c for c in summarise(family, arch, kind, per_seed)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", default=None, help="FAMILY/ARCH/MASKS,... (default: every background cell)")
    parser.add_argument("--out", default="matrix_reproduce.json")
    args = parser.parse_args()
    matrix = committed()
    cells = args.cells.split(",") if args.cells else list(matrix)
    if unknown := [c for c in cells if c not in matrix]:
        parser.error(f"not a background cell of treatment_matrix.json: {', '.join(unknown)}; "
                     f"choose from {', '.join(matrix)}")
    report: dict[str, Any] = {"protocol": __doc__, "seeds": list(REPORT_SEEDS), "cells": {},
                              "not_rerun": [c for c in matrix if c not in cells]}
    for cell in cells:
        fresh = fresh_cell(cell)
        report["cells"][cell] = {"matrix": brief(matrix[cell]), "fresh": fresh,
                                 "same_vanilla": abs(fresh["vanilla"]["test_mean"]
                                                     - matrix[cell]["vanilla"]["test_mean"]) < 1e-6}
        write_json(RESULTS / args.out, report)
    print(json.dumps({cell: {"matrix_gap": round(c["matrix"]["default"]["gap_recovered"], 3),
                             "fresh_gap": round(c["fresh"]["default"]["gap_recovered"], 3)}
                      for cell, c in report["cells"].items()}))


if __name__ == "__main__":
    main()
