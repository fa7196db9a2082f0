"""Should the verdict ever say "keep your original model"? (issue 18: do no harm)

The verdict compares the chosen candidate with the matched control and says "keep the control" when the candidate
did not beat it.  On a model with nothing to repair (the ``:clean`` models) the control is a plain fine-tune at the
training lr, which can itself cost points: a user who follows "keep the control" is then worse off than before.
``search.verdict`` now also compares the control with the original model on the same held-out swap composites and
says "keep your original model" when the control falls below it by more than two standard errors.

Per run, the test accuracy of what a user who follows the verdict keeps: before (treated where ``use_treated``,
else the control) and now (the original where the verdict's winner is ``"original"``).  Rule, fixed before the
runs: ship if the mean over the do-no-harm runs rises and no background-shortcut run falls by more than half a
point.  Cells: simple-cnn-s2 on shortcut-, border- and spot-mnist, the vanilla model and the clean one
(do-no-harm), exact masks.  ``--report`` runs the same cells on the report seeds (0–2) after the rule was
decided; it chooses nothing.

Usage: python benchmarks/keep_original.py [--report]     Last stdout line: JSON {before, after, ship}.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch

torch.set_num_threads(1)

from matrix_baselines import CACHE  # noqa: E402
from modeldoctor.core.files import write_json  # noqa: E402
from treatment_matrix import DEV_SEEDS, REPORT_SEEDS, RESULTS, accuracies, default_treat, stats  # noqa: E402

FAMILIES = ("shortcut-mnist", "border-mnist", "spot-mnist")
ARCH = "simple-cnn-s2"


def run(spec: str, seed: int) -> dict[str, Any]:
    path = CACHE / "keep_original" / f"{spec.replace(':', '_')}__{ARCH}__seed{seed}.json"
    if path.exists():
        return json.loads(path.read_text())
    result = default_treat(spec, ARCH, "exact", seed)
    v = result.verdict
    arms = {"original": accuracies(result.original)["test"], "control": accuracies(result.control_metrics)["test"],
            "treated": accuracies(result.treated_metrics)["test"]}
    before = "treated" if v["use_treated"] else "control"
    row = {"spec": spec, "seed": seed, "test": arms, "chosen": result.chosen, "winner": v["winner"],
           "control_gain_vs_original": v.get("control_gain_vs_original"),
           "control_gain_vs_original_se": v.get("control_gain_vs_original_se"),
           "before": arms[before], "after": arms[v["winner"] if v["winner"] in arms else before]}
    write_json(path, row)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args()
    seeds = REPORT_SEEDS if args.report else DEV_SEEDS
    rows = []
    for family in FAMILIES:
        for spec in (family, f"{family}:clean"):
            for seed in seeds:
                rows.append(run(spec, seed))
                print(json.dumps(rows[-1]), flush=True)
    harm = [r for r in rows if r["spec"].endswith(":clean")]
    shortcut = [r for r in rows if not r["spec"].endswith(":clean")]
    summary = {"do_no_harm": {"before": stats([r["before"] for r in harm]), "after": stats([r["after"] for r in harm])},
               "background": {"before": stats([r["before"] for r in shortcut]),
                              "after": stats([r["after"] for r in shortcut])},
               "worst_background_change": min(r["after"] - r["before"] for r in shortcut),
               "kept_original": sum(r["winner"] == "original" for r in rows)}
    if not args.report:
        summary["ship"] = (summary["do_no_harm"]["after"]["mean"] > summary["do_no_harm"]["before"]["mean"]
                           and summary["worst_background_change"] >= -0.005)
    result = {"protocol": __doc__, "seeds": list(seeds), "arch": ARCH, "runs": rows, **summary}
    write_json(RESULTS / ("keep_original_report.json" if args.report else "keep_original.json"), result)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
