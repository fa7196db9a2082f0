"""Which images are annotated: is the draw the lever on ResNet-20 · border-mnist's shortfall? (issue 18)

``treat`` annotates (and ``diagnose`` suggests) the 20 training images per class the vanilla model is least
confident of — the paper's advice, and the matrix's.  A quarter of them is held out as the swap meter's objects, so
the meter only ever sees the objects the model found hardest, and the counterfactual term only ever pastes those.
Session 16 found a run whose verdict said "use treated" while test put it below its control, its validation
accuracy 5 points under the control's: recognition of ordinary digits lost, unseen by a meter built from the tail.

This runs ``api.treat`` with every option at its default (both arms, candidate search, verdict) on three draws of
the 20 annotated images per class, from the vanilla model's confidence in the true label:

* ``lowest`` — the 20 least confident (the shipped suggestion; the matrix's own cached run);
* ``random`` — 20 drawn uniformly from the class (seeded by the run's seed);
* ``mixed`` — the 10 least confident and 10 drawn uniformly from the rest.

Both arms see the same draw (the control mixes the same annotated images into its batches), so each draw has its
matched control.  Swap accuracies of different draws are measured on different held-out objects and are not
comparable across draws; test accuracy is the common yardstick, and chooses nothing.

Usage: python benchmarks/annotation_draw.py [--cell FAMILY/ARCH] [--seeds 100,101] [--draws lowest,random,mixed]
       [--out NAME.json]
Last stdout line: JSON {draw: {default, control, gap, use_treated}}.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch

torch.set_num_threads(1)

from matrix_baselines import baseline  # noqa: E402
from modeldoctor.core.files import write_json  # noqa: E402
from modeldoctor.data.border import COLOURS  # noqa: E402
from modeldoctor.data.bundle import DataBundle  # noqa: E402
from modeldoctor.training import predict  # noqa: E402
from treatment_matrix import DEV_SEEDS, PER_CLASS, RESULTS, clean_row, stats, treat_run  # noqa: E402

DRAWS = ("lowest", "random", "mixed")


def draw(vanilla: torch.nn.Module, data: DataBundle, masks: dict[str, torch.Tensor], kind: str,
         seed: int) -> tuple[list[int], torch.Tensor]:
    """Split indices of the ``kind`` draw of ``PER_CLASS`` masked training images per class, and every training
    image's confidence in its true label under ``vanilla``."""
    logits, labels = predict(vanilla, data.train)
    conf = logits.softmax(1).gather(1, labels.view(-1, 1)).squeeze(1)
    generator = torch.Generator().manual_seed(seed + 7919)
    chosen: list[int] = []
    for c in range(data.num_classes):
        rows = [i for i, sid in enumerate(data.train.ids) if int(labels[i]) == c and sid in masks]
        rows.sort(key=lambda i: (float(conf[i]), i))
        hard = {"lowest": PER_CLASS, "random": 0, "mixed": PER_CLASS // 2}[kind]
        rest = rows[hard:]
        picks = torch.randperm(len(rest), generator=generator)[:PER_CLASS - hard].tolist()
        chosen += rows[:hard] + [rest[p] for p in picks]
    return sorted(chosen), conf


def off_cue(data: DataBundle, rows: list[int]) -> float | None:
    """border-mnist only: the share of ``rows`` (split indices) whose frame colour is not their class's — the
    minority that contradicts the shortcut (the frame's corner pixel, nearest of the family's colours)."""
    if not data.spec.startswith("border-mnist"):
        return None
    corners = torch.stack([data.train.raw(i)[:, 0, 0] for i in rows])
    colour = torch.cdist(corners, COLOURS).argmin(1)
    return float((colour != data.train.labels[rows]).double().mean())


def seed_row(family: str, arch: str, seed: int, kind: str) -> dict[str, Any]:
    vanilla, data = baseline(family, arch, seed)
    clean, _ = baseline(f"{family}:clean", arch, seed)
    masks = data.masks
    tag = f"{family}__{arch}__exact__seed{seed}"
    clean_test = clean_row(f"clean__{tag}", vanilla, clean, data, masks, seed)["test"]
    chosen, conf = draw(vanilla, data, masks, kind, seed)
    drawn = {data.train.ids[i]: masks[data.train.ids[i]] for i in chosen}
    key = f"run__{tag}__default" if kind == "lowest" else f"draw__{tag}__{kind}"  # lowest: the matrix's own run
    run = treat_run(key, vanilla, data, masks if kind == "lowest" else drawn, arch, seed)
    vanilla_test = run["original"]["test"]
    gap = max(clean_test - vanilla_test, 1e-9)
    return {"default": run["treated"], "control": run["control"], "clean_test": clean_test, "vanilla_test": vanilla_test,
            "gap_default": (run["treated"]["test"] - vanilla_test) / gap,
            "gap_control": (run["control"]["test"] - vanilla_test) / gap,
            "annotated_confidence": float(conf[chosen].mean()),
            "annotated_misread": float((conf[chosen] < 0.5).double().mean()),
            "annotated_off_cue": off_cue(data, chosen), "train_off_cue": off_cue(data, list(range(len(data.train)))),
            "use_treated": bool(run["verdict"].get("use_treated")), "chosen": run["chosen"],
            "swap_gain": run["verdict"].get("swap_gain"), "swap_gain_se": run["verdict"].get("swap_gain_se"),
            "seconds": run["seconds"], "treat_version": run.get("treat_version")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cell", default="border-mnist/resnet20", help="FAMILY/ARCH")
    parser.add_argument("--seeds", default=",".join(map(str, DEV_SEEDS)))
    parser.add_argument("--draws", default=",".join(DRAWS))
    parser.add_argument("--out", default="annotation_draw_dev.json")
    args = parser.parse_args()
    if args.cell.count("/") != 1:
        parser.error(f"--cell takes FAMILY/ARCH (e.g. border-mnist/resnet20), got {args.cell!r}")
    family, arch = args.cell.split("/")
    draws = args.draws.split(",")
    if unknown := [d for d in draws if d not in DRAWS]:
        parser.error(f"unknown draw(s) {unknown}; choose from {', '.join(DRAWS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    report: dict[str, Any] = {"protocol": __doc__, "family": family, "arch": arch, "seeds": seeds,
                              "development_seeds": all(s in DEV_SEEDS for s in seeds), "draws": {}}
    for kind in draws:
        runs = [seed_row(family, arch, seed, kind) for seed in seeds]
        report["draws"][kind] = {
            "runs": runs,
            "default_test": stats([r["default"]["test"] for r in runs]),
            "control_test": stats([r["control"]["test"] for r in runs]),
            "paired_test": stats([r["default"]["test"] - r["control"]["test"] for r in runs]),
            "gap_default": stats([r["gap_default"] for r in runs]),
            "gap_control": stats([r["gap_control"] for r in runs]),
            "use_treated": [r["use_treated"] for r in runs]}
        write_json(RESULTS / args.out, report)
    print(json.dumps({k: {"default": round(d["default_test"]["mean"], 4), "control": round(d["control_test"]["mean"], 4),
                          "gap": round(d["gap_default"]["mean"], 3), "use_treated": d["use_treated"]}
                      for k, d in report["draws"].items()}))


if __name__ == "__main__":
    main()
