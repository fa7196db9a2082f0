"""What the counterfactual term's step cost buys (issue 21: a treatment step ≤ 2× a plain step, or why not).

The shipped default appends ``composites`` = 64 counterfactual composites to every 80-image batch (64 images + 16
mixed-in annotated ones), so its step processes 1.8× the images of the control's plain step: its time and memory
follow the image count.  Fewer composites bring the step well under 2×; this measures what that costs.

Per composite count k ∈ {16, 32, 64}: the step's time and saved-tensor memory against a plain step
(``treat_speed.shipped_default(k)``, interleaved in this process), and the counterfactual term alone (no candidate
search, 3 fine-tune epochs, λ_cf = 3) on the **development seeds** (100, 101) of shortcut-mnist and border-mnist with
exact masks, simple-cnn-s2: test and swap accuracy, paired against the seed's control arm (the cached default run's).
Development seeds only: this is a cost curve, not a report; the matrix's report seeds are never touched.

Usage: python benchmarks/composites_cost.py     Last stdout line: JSON {k: {ratio_time, ratio_memory, test, swap}}.
"""

from __future__ import annotations

import json
from typing import Any

import torch

torch.set_num_threads(1)

from matrix_baselines import baseline  # noqa: E402
from modeldoctor.core.files import write_json  # noqa: E402
from treat_speed import shipped_default  # noqa: E402
from treatment_matrix import DEV_SEEDS, RESULTS, stats, treat_run  # noqa: E402

COUNTS = (16, 32, 64)
FAMILIES = ("shortcut-mnist", "border-mnist")
ARCH = "simple-cnn-s2"


def accuracy_rows(k: int) -> list[dict[str, Any]]:
    rows = []
    for family in FAMILIES:
        for seed in DEV_SEEDS:
            vanilla, data = baseline(family, ARCH, seed)
            tag = f"{family}__{ARCH}__exact__seed{seed}"
            control = treat_run(f"run__{tag}__default", vanilla, data, data.masks, ARCH, seed)["control"]
            treated = treat_run(f"run__{tag}__cf{k}", vanilla, data, data.masks, ARCH, seed, control=False,
                                constraints=("counterfactual",), composites=k)["treated"]
            rows.append({"family": family, "seed": seed, "test": treated["test"], "swap": treated["swap"],
                         "control_test": control["test"], "control_swap": control["swap"],
                         "paired_test": treated["test"] - control["test"]})
    return rows


def main() -> None:
    report: dict[str, Any] = {"protocol": __doc__, "seeds": list(DEV_SEEDS), "families": list(FAMILIES),
                              "arch": ARCH, "counts": {}}
    for k in COUNTS:
        step = shipped_default(k)
        rows = accuracy_rows(k)
        report["counts"][str(k)] = {
            "ratio_time": step["ratio_time"], "ratio_memory": step["ratio_memory"], "ratio_images": step["ratio_images"],
            "rows": rows, **{f"{m}_{s}": stats([r[m] for r in rows])[s]
                             for m in ("test", "swap", "paired_test") for s in ("mean", "std")}}
    write_json(RESULTS / "composites_cost.json", report)
    print(json.dumps({k: {m: round(v[m], 3) for m in ("ratio_time", "ratio_memory", "test_mean", "swap_mean",
                                                       "paired_test_mean")}
                      for k, v in report["counts"].items()}))


if __name__ == "__main__":
    main()
