"""How far does a matrix cell move when its baselines are trained again? (issue 18)

The run cache (``results/cache/matrix``, ignored by git) does not outlive a session, and training is bit-for-bit
repeatable within a session but not from one session's machine to the next: the same code and seeds give other
vanilla and clean models.  Every matrix cell is therefore one draw of its baselines.  This re-runs the shipped
default (both arms, exact masks, report seeds 0–2, every option at its default) of the given cells on the baselines
in this machine's cache and sets each beside the committed ``treatment_matrix.json`` cell: vanilla, control and
default test, the gap recovered and the paired gain in control std.  It chooses nothing.  Where the cache holds the
matrix's own baselines the two agree; ``same_vanilla`` says whether the vanilla means match.

Usage: python benchmarks/matrix_reproduce.py [--cells FAMILY/ARCH,...]
Last stdout line: JSON {cell: {matrix_gap, fresh_gap}}.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch

torch.set_num_threads(1)

from annotation_draw import seed_row  # noqa: E402
from modeldoctor.core.files import write_json  # noqa: E402
from treatment_matrix import REPORT_SEEDS, RESULTS, stats  # noqa: E402

CELLS = ("shortcut-mnist/simple-cnn-s2", "border-mnist/simple-cnn-s2", "spot-mnist/simple-cnn-s2",
         "border-mnist/resnet20", "shortcut-mnist/mobilenet_v3_small", "border-mnist/mobilenet_v3_small")


def matrix_cell(family: str, arch: str) -> dict[str, dict[str, Any]]:
    """The committed matrix's exact-mask rows of one cell, by method."""
    cells = json.loads((RESULTS / "treatment_matrix.json").read_text())["cells"]
    return {c["method"]: c for c in cells if (c["family"], c["arch"], c["masks"]) == (family, arch, "exact")}


def fresh_cell(family: str, arch: str) -> dict[str, Any]:
    runs = [seed_row(family, arch, seed, "lowest") for seed in REPORT_SEEDS]
    control = stats([r["control"]["test"] for r in runs])
    paired = stats([r["default"]["test"] - r["control"]["test"] for r in runs])
    return {"vanilla_test": stats([r["vanilla_test"] for r in runs]),
            "clean_test": stats([r["clean_test"] for r in runs]), "control_test": control,
            "default_test": stats([r["default"]["test"] for r in runs]), "paired": paired,
            "paired_in_control_std": paired["mean"] / max(control["std"], 1e-9),
            "gap_recovered": stats([r["gap_default"] for r in runs])["mean"],
            "use_treated": [r["use_treated"] for r in runs], "chosen": [r["chosen"] for r in runs],
            "treat_version": sorted({r["treat_version"] for r in runs})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", default=",".join(CELLS), help="FAMILY/ARCH,... (exact masks)")
    args = parser.parse_args()
    report: dict[str, Any] = {"protocol": __doc__, "seeds": list(REPORT_SEEDS), "cells": {}}
    for cell in args.cells.split(","):
        if cell.count("/") != 1:
            parser.error(f"--cells takes FAMILY/ARCH entries (e.g. border-mnist/resnet20), got {cell!r}")
        family, arch = cell.split("/")
        committed = matrix_cell(family, arch)
        if "default" not in committed:
            parser.error(f"{cell} has no exact-mask cell in treatment_matrix.json; run the matrix for it first")
        fresh = fresh_cell(family, arch)
        control_std = committed["default"]["control_std"]
        report["cells"][cell] = {
            "fresh": fresh,
            "matrix": {"vanilla_test": committed["vanilla"]["test_mean"], "clean_test": committed["clean"]["test_mean"],
                       "control_test": committed["control"]["test_mean"],
                       "control_std": control_std, "default_test": committed["default"]["test_mean"],
                       "paired": committed["default"]["paired_vs_control"],
                       "paired_in_control_std": committed["default"]["paired_vs_control"] / max(control_std, 1e-9),
                       "gap_recovered": committed["default"]["gap_recovered"],
                       "treat_version": committed["verdict"]["treat_version"]},
            "same_vanilla": abs(fresh["vanilla_test"]["mean"] - committed["vanilla"]["test_mean"]) < 1e-6}
        write_json(RESULTS / "matrix_reproduce.json", report)
    print(json.dumps({cell: {"matrix_gap": round(c["matrix"]["gap_recovered"], 3),
                             "fresh_gap": round(c["fresh"]["gap_recovered"], 3)} for cell, c in report["cells"].items()}))


if __name__ == "__main__":
    main()
