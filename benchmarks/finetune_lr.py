"""Which learning rate should ``treat`` fine-tune at? (issue 18, development seeds only)

Treat v3 fine-tuned both arms at the checkpoint's own lr (the paper's "original optimiser settings").  On ResNet-18
the counterfactual term then rewrote the network: select-swap accuracy ended at 16–43% and the last-layer
candidate took over.  Three policies, on the **development seeds** (100, 101) only, every other option of ``treat``
at its default, exact masks:

* ``lr×1``: v3 (``fallback=False``), both arms at the checkpoint's lr;
* ``lr×0.2``: the same at a fifth of it, both arms (matched compute);
* ``fallback`` (v4, shipped): v3, plus the counterfactual fine-tune retried at a fifth of the lr when another
  candidate beat it on select swaps (``search.FALLBACKS``); the control stays at the checkpoint's lr.

Cells: simple-cnn-s2 on shortcut-, border- and spot-mnist (with the do-no-harm run, treating the clean model) and
ResNet-20 on border-mnist.  ResNet-18 · border-mnist under v4 is in ``treatment_matrix_dev.json``.  The lr×1 runs are
treat v3's cached runs (the same code path with ``lr`` given); ``fallback`` reuses the matrix's own cached runs.

Rule fixed before each policy's runs: ship it if the default's mean gap recovered over these cells rises, no cell's
default test mean falls by more than one point, and no do-no-harm run ends below its control.

Usage: python benchmarks/finetune_lr.py     Last stdout line: JSON {cell: {policy: {default, control, gap}}}.
"""

from __future__ import annotations

import json
from typing import Any

import torch

torch.set_num_threads(1)

from matrix_baselines import baseline, recipe  # noqa: E402
from modeldoctor.core.files import write_json  # noqa: E402
from treatment_matrix import DEV_SEEDS, RESULTS, cell_masks, clean_row, stats, treat_run  # noqa: E402

POLICIES = ("lr×1", "lr×0.2", "fallback")
CELLS = (("shortcut-mnist", "simple-cnn-s2"), ("border-mnist", "simple-cnn-s2"), ("spot-mnist", "simple-cnn-s2"),
         ("border-mnist", "resnet20"))
HARM_ARCHS = ("simple-cnn-s2",)  # the do-no-harm run costs a third treat per seed; ResNets skip it here


def run(key: str, model: torch.nn.Module, data: Any, masks: Any, arch: str, seed: int, policy: str) -> dict:
    """One default ``treat`` under ``policy``; ``fallback`` is the shipped default and shares the matrix's key."""
    if policy == "fallback":
        return treat_run(key, model, data, masks, arch, seed)
    factor = float(policy.removeprefix("lr×"))
    return treat_run(f"{key}__lr{factor}", model, data, masks, arch, seed, lr=recipe(arch, seed).lr * factor,
                     fallback=False)


def seed_row(family: str, arch: str, seed: int, policy: str) -> dict[str, Any]:
    vanilla, data = baseline(family, arch, seed)
    clean, _ = baseline(f"{family}:clean", arch, seed)
    masks = cell_masks(data, "exact")
    tag = f"{family}__{arch}__exact__seed{seed}"
    clean_test = clean_row(f"clean__{tag}", vanilla, clean, data, masks, seed)["test"]
    default = run(f"run__{tag}__default", vanilla, data, masks, arch, seed, policy)
    vanilla_test = default["original"]["test"]
    gap = max(clean_test - vanilla_test, 1e-9)
    row = {"default": default["treated"], "control": default["control"], "clean_test": clean_test,
           "gap_default": (default["treated"]["test"] - vanilla_test) / gap,
           "gap_control": (default["control"]["test"] - vanilla_test) / gap,
           "chosen": default["chosen"], "use_treated": bool(default["verdict"].get("use_treated")),
           "select_swap": {c["name"]: c["select_swap"] for c in default["candidates"]}, "seconds": default["seconds"]}
    if arch in HARM_ARCHS:
        harm = run(f"run__{tag}__do_no_harm", clean, data, masks, arch, seed, policy)
        row["do_no_harm"], row["do_no_harm_control"] = harm["treated"], harm["control"]
    return row


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out = {name: stats([r[name]["test"] for r in runs]) for name in ("default", "control")}
    out |= {name: stats([r[name] for r in runs]) for name in ("gap_default", "gap_control")}
    out["chosen"] = [r["chosen"] for r in runs]
    out["use_treated"] = [r["use_treated"] for r in runs]
    out["select_swap"] = [r["select_swap"] for r in runs]
    if "do_no_harm" in runs[0]:
        out["do_no_harm"] = stats([r["do_no_harm"]["test"] for r in runs])
        out["do_no_harm_control"] = stats([r["do_no_harm_control"]["test"] for r in runs])
        out["clean"] = stats([r["clean_test"] for r in runs])
    return out


def decision(cells: dict[str, dict[str, Any]], policy: str) -> dict[str, Any]:
    """The rule in the module docstring, for ``policy`` against v3 (``lr×1``)."""
    gap = {p: sum(c[p]["gap_default"]["mean"] for c in cells.values()) / len(cells) for p in ("lr×1", policy)}
    change = {k: c[policy]["default"]["mean"] - c["lr×1"]["default"]["mean"] for k, c in cells.items()}
    harm = [k for k, c in cells.items() if "do_no_harm" in c[policy]
            for r in c[policy]["runs"] if r["do_no_harm"]["test"] < r["do_no_harm_control"]["test"]]
    ship = gap[policy] > gap["lr×1"] and min(change.values()) >= -0.01 and not harm
    return {"mean_gap": gap, "default_change": change, "do_no_harm_below_control": harm, "ship": ship}


def main() -> None:
    report: dict[str, Any] = {"protocol": __doc__, "seeds": list(DEV_SEEDS), "policies": list(POLICIES), "cells": {}}
    for family, arch in CELLS:
        per_policy = {}
        for policy in POLICIES:
            runs = [seed_row(family, arch, seed, policy) for seed in DEV_SEEDS]
            per_policy[policy] = {"runs": runs, **summary(runs)}
        report["cells"][f"{family}/{arch}"] = per_policy
        write_json(RESULTS / "finetune_lr.json", report)
    report["decision"] = {p: decision(report["cells"], p) for p in POLICIES[1:]}
    write_json(RESULTS / "finetune_lr.json", report)
    print(json.dumps({cell: {p: {"default": round(v["default"]["mean"], 4), "control": round(v["control"]["mean"], 4),
                                 "gap": round(v["gap_default"]["mean"], 3)} for p, v in c.items()}
                      for cell, c in report["cells"].items()} | {"ship": {p: d["ship"] for p, d in
                                                                       report["decision"].items()}}))


if __name__ == "__main__":
    main()
