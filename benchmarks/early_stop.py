"""When may a losing counterfactual fine-tune stop early? (issue 18: the whole ``treat`` ≤ 4× its control; development
seeds only)

Treat v4 runs the counterfactual fine-tune to the end, re-fits the head, and when the re-fit beats the fine-tune on
select swaps runs the fine-tune's low-lr fallback as well: about 4.3× the control's time.  Most of that is the
losing fine-tune.  Here every shipped-default run of treat v4 (``early_stop_margin=None``) keeps each fine-tune's
per-epoch select-swap accuracy (the checkpoint rule already measures it), so one set of runs answers, for every
margin m: had the fine-tune stopped after epoch e of E whenever its best epoch so far trailed the re-fit head by
more than m · (E − e) / E (``TreatConfig.early_stop_margin``), which runs would have stopped, and would any of them
have chosen differently?

A run that v4 finished with the re-fit head or the fallback chosen ends the same with a stop (the head and the
fallback do not depend on the fine-tune), only sooner; a run that chose the fine-tune would lose it.  The rule: the
margin is the smallest m in ``MARGINS`` under which no development run that chose the fine-tune would have stopped,
and it ships if it stops at least half the runs where the fallback ran.

How the rule came about, in order: first a stop after the first epoch alone, judged on the simple-cnn-s2 runs and
ResNet-20 seed 100.  Those showed that the first epoch does not tell: fine-tunes that went on to win trailed the
head by up to 28 points after it (spot-mnist box seed 101; border-mnist box seed 101 and ResNet-20 seed 100: 27),
fine-tunes that lost by 18 to 65.  After the second epoch the winners trailed by at most 6 points.  So the
threshold shrinks with the schedule left, and the margin was fixed on the simple-cnn-s2 runs and ResNet-20 seed 100
before ResNet-20 seed 101 and ResNet-18 (both seeds) finished: those three runs are the rule's check.

Cells: simple-cnn-s2 on shortcut-, border- and spot-mnist (exact and box masks, and the do-no-harm run on the clean
model), ResNet-20 and ResNet-18 on border-mnist, seeds 100 and 101.  Report seeds are never run here.

``--report`` runs the same on the report seeds (0–2) of the cheap architectures, after the margin was fixed: it
chooses nothing, it counts how often the shipped margin stops a fine-tune and whether any such run had chosen it.

``--check`` (session 15) runs ``CHECK_CELLS`` on the development seeds: cells the margin was not chosen on, added
after a report seed showed it stopping a fine-tune that would have won (ResNet-20 · shortcut-mnist seed 1, which
trailed by 38 points after its first epoch).  It chooses nothing either; it asks whether development seeds of that
cell show the same, which a change of the margin would need first.  Its runs are of the treat version of the day
(v7: composites at the donor's place where the check finds the background read), the study's own of v4.

Usage: python benchmarks/early_stop.py [--report | --check] [--cells FAMILY/ARCH/MASKS,...]   Last stdout line: JSON
{margin: {stopped, changed}} (``--report``, ``--check``: the shipped margin's counts).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch

torch.set_num_threads(1)

from matrix_baselines import CACHE  # noqa: E402
from modeldoctor.core.files import write_json  # noqa: E402
from modeldoctor.doctor.treatment import TreatConfig  # noqa: E402
from treatment_matrix import DEV_SEEDS, REPORT_SEEDS, RESULTS, TREAT_VERSION, accuracies, default_treat  # noqa: E402

CELLS = ["shortcut-mnist/simple-cnn-s2/exact", "border-mnist/simple-cnn-s2/exact", "spot-mnist/simple-cnn-s2/exact",
         "shortcut-mnist:clean/simple-cnn-s2/exact", "border-mnist:clean/simple-cnn-s2/exact",
         "spot-mnist:clean/simple-cnn-s2/exact", "border-mnist/simple-cnn-s2/box", "spot-mnist/simple-cnn-s2/box",
         "border-mnist/resnet20/exact", "border-mnist/resnet18/exact"]
# The shipped margin's check on report seeds (``--report``): the cheap architectures; it chooses nothing.
REPORT_CELLS = [c for c in CELLS if "simple-cnn-s2" in c] + ["shortcut-mnist/mobilenet_v3_small/exact",
                                                             "border-mnist/mobilenet_v3_small/exact"]
CHECK_CELLS = ["shortcut-mnist/resnet20/exact"]
MARGINS = (0.15, 0.3, 0.45, 0.6, 0.75, 0.9)
FINE_TUNE = "counterfactual"


def run(spec: str, arch: str, kind: str, seed: int) -> dict[str, Any]:
    """One v4 default run (every fine-tune in full) with each fine-tune's per-epoch select-swap accuracy."""
    path = CACHE / "early_stop" / f"{spec.replace(':', '_')}__{arch}__{kind}__seed{seed}.json"
    if path.exists():
        return json.loads(path.read_text())
    result = default_treat(spec, arch, kind, seed, early_stop_margin=None)
    histories = {c["name"]: c["select_swap_per_epoch"] for c in result.candidates if "select_swap_per_epoch" in c}
    row = {"spec": spec, "arch": arch, "masks": kind, "seed": seed, "chosen": result.chosen,
           "select_swap": {c["name"]: c["select_swap"] for c in result.candidates},
           "candidate_seconds": {c["name"]: c["seconds"] for c in result.candidates}, "seconds": result.seconds,
           "histories": histories, "treated": accuracies(result.treated_metrics),
           "control": accuracies(result.control_metrics or {}),
           "use_treated": bool(result.verdict.get("use_treated"))}
    write_json(path, row)
    return row


def trailing(row: dict[str, Any]) -> list[float]:
    """After each epoch e < E, how far the fine-tune (its best epoch so far, as the checkpoint rule keeps it) trails
    the re-fit head on select swaps."""
    history = row["histories"][FINE_TUNE]
    return [row["select_swap"]["last-layer"] - max(history[:e]) for e in range(1, len(history))]


def stop_epoch(row: dict[str, Any], margin: float) -> int | None:
    """The epoch after which ``TreatConfig.early_stop_margin = margin`` stops the fine-tune (None: it runs out)."""
    epochs = len(row["histories"][FINE_TUNE])
    return next((e for e, t in enumerate(trailing(row), start=1) if t > margin * (epochs - e) / epochs), None)


def margins(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {}
    for m in MARGINS:
        stops = [(r, e) for r in rows if (e := stop_epoch(r, m)) is not None]
        out[str(m)] = {"stopped": len(stops),
                       "stopped_where_fallback_ran": sum(r["chosen"] != FINE_TUNE for r, _ in stops),
                       "changed": sum(r["chosen"] == FINE_TUNE for r, _ in stops),
                       "epochs_saved": sum(len(r["histories"][FINE_TUNE]) - e for r, e in stops)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cells", default=None)
    parser.add_argument("--report", action="store_true",
                        help="the shipped margin's check on the report seeds (chooses nothing)")
    parser.add_argument("--check", action="store_true",
                        help="the shipped margin on development seeds of cells it was not chosen on (chooses nothing)")
    args = parser.parse_args()
    seeds, cells = (REPORT_SEEDS, REPORT_CELLS) if args.report else (DEV_SEEDS, CHECK_CELLS if args.check else CELLS)
    cells = args.cells.split(",") if args.cells else cells
    rows = []
    for cell in cells:
        spec, arch, kind = cell.split("/")
        for seed in seeds:
            rows.append(run(spec, arch, kind, seed))
            r = rows[-1]
            print(json.dumps({"cell": cell, "seed": seed, "chosen": r["chosen"],
                              "trailing": [round(t, 3) for t in trailing(r)],
                              "histories": {k: [round(v, 3) for v in h] for k, h in r["histories"].items()}}),
                  flush=True)
    table = margins(rows)
    fallback_ran = sum(r["chosen"] != FINE_TUNE for r in rows)
    result: dict[str, Any] = {"protocol": __doc__, "seeds": list(seeds), "cells": cells, "runs": rows,
                              "margins": table, "fallback_ran": fallback_ran}
    if args.check:
        result["treat_version"] = TREAT_VERSION
    if args.report or args.check:
        result["shipped_margin"] = TreatConfig.early_stop_margin
        summary = {"shipped_margin": TreatConfig.early_stop_margin, **table[str(TreatConfig.early_stop_margin)],
                   "fallback_ran": fallback_ran}
    else:
        safe = [float(m) for m, v in table.items() if v["changed"] == 0]
        chosen = min(safe) if safe else None
        result["chosen_margin"] = chosen
        result["ship"] = chosen is not None and table[str(chosen)]["stopped_where_fallback_ran"] >= fallback_ran / 2
        summary = {"margins": table, "fallback_ran": fallback_ran, "chosen_margin": chosen, "ship": result["ship"]}
    name = "early_stop_report" if args.report else "early_stop_check" if args.check else "early_stop"
    write_json(RESULTS / f"{name}.json", result)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
