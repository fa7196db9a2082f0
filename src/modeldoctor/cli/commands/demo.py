"""Run the whole story offline: train on shortcut-mnist, diagnose, list images to annotate, treat vs control, report.

The baseline learns the background shortcut of shortcut-mnist; the diagnosis and the report show how much of
its derivative map falls on the background; the treatment uses 20 object masks per class and is compared
with the matched control (the same fine-tune without the constraints).  Ends by printing the report's path
and the original / control / treated test accuracies.

Example: modeldoctor demo --out runs/demo
"""

from __future__ import annotations

import argparse
from typing import Any

from modeldoctor.demo import run_demo


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    p.add_argument("--quick", action="store_true", help="fewer epochs, samples and noise draws (CI; about a minute)")
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """With --json the full result ({"html", "original": M, "control": M, "treated": M, ...}); else the headline."""
    result = run_demo(args.out, quick=args.quick, seed=args.seed)
    if getattr(args, "json", False):
        return result
    return {"report": result["html"],
            **{f"{arm} test accuracy": result[arm]["test"]["accuracy"] for arm in ("original", "control", "treated")},
            "seconds": result["seconds"]["total"]}
