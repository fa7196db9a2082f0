"""Unit deletion: accuracy per class with each unit of a layer removed, then scaling interventions (Table 1).

Units are ranked on --rank-split (validation by default) and the interventions on the k worst / best units
are reported on --eval-split (test) as well, so no unit is chosen on the data that judges it.

Example: modeldoctor ablate --checkpoint runs/base/model.pt --data mnist5k --layer features.12 --out runs/ablate --json
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from typing import Any

from modeldoctor.analyses.ablation import intervention_table, rank_units, unit_deletion
from modeldoctor.cli.commands.common import add_checkpoint_args, add_out_arg, out_dir
from modeldoctor.core.errors import UserError
from modeldoctor.core.files import read_json, write_json, write_text
from modeldoctor.core.layers import default_layer, resolve_layer
from modeldoctor.data.bundle import ImageSplit
from modeldoctor.io import names
from modeldoctor.io.loading import load_model_and_data


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_checkpoint_args(p)
    add_out_arg(p)
    p.add_argument("--layer", default=None, help="dotted layer name (default: the last Conv2d)")
    p.add_argument("--rank-split", default="val", help="split on which units are ranked (default val)")
    p.add_argument("--eval-split", default="test", help="extra split on which interventions are reported")
    p.add_argument("--k", type=int, default=5, help="number of worst / best units an intervention touches")
    p.add_argument("--c", default="2,3", help="comma-separated constants c for dividing / multiplying")
    p.add_argument("--top", type=int, default=5, help="units listed per class as helping / hurting")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--max-samples", type=int, default=None,
                   help="use at most N evenly spaced samples of each split (quick looks)")
    p.add_argument("--dissect", default=None,
                   help="dissect.json of the same layer: adds each top unit's best concept")


def run(args: argparse.Namespace) -> dict[str, Any]:
    model, meta, bundle = load_model_and_data(args.checkpoint, args.data, args.trust_checkpoint)
    layer = resolve_layer(model, args.layer)[0] if args.layer else default_layer(model)
    constants = _constants(args.c)
    out = out_dir(args)
    splits = {s: evenly_spaced(bundle.split(s), args.max_samples) for s in dict.fromkeys([args.rank_split, args.eval_split])}
    print(f"modeldoctor ablate: removing each unit of {layer} on {args.rank_split}", file=sys.stderr)
    result = unit_deletion(model, splits[args.rank_split], bundle.num_classes, layer, batch_size=args.batch_size)
    ranking = rank_units(result, bundle.class_names, top=args.top)
    if args.dissect:
        _add_concepts(ranking, read_json(args.dissect), layer)
    print("modeldoctor ablate: interventions", file=sys.stderr)
    k = min(args.k, len(result.units))
    table = intervention_table(model, splits, bundle.num_classes, layer, result, k=k, constants=constants)
    report = {
        "checkpoint": args.checkpoint, "weights_sha256": meta.weights_sha256, "layer": layer,
        "rank_split": args.rank_split, "eval_split": args.eval_split,
        "num_samples": {s: len(d) for s, d in splits.items()}, "num_units": len(result.units),
        "baseline": {"accuracy": result.baseline_accuracy, "per_class": result.baseline_per_class.tolist(),
                     "loss": result.baseline_loss},
        "units": [{"unit": u, "delta": float(result.delta[i]), "delta_loss": float(result.delta_loss[i]),
                   "delta_per_class": result.delta_per_class[i].tolist()} for i, u in enumerate(result.units)],
        "ranking": ranking, "k": k, "c": constants, "interventions": table,
    }
    if out is not None:
        write_json(out / names.ABLATE, report)
        write_text(out / names.ABLATE_UNITS, units_csv(result, bundle.class_names))
        report["files"] = [str(out / names.ABLATE), str(out / names.ABLATE_UNITS)]
    return report


def evenly_spaced(split: ImageSplit, limit: int | None) -> ImageSplit:
    """At most ``limit`` samples spread over the whole split (splits are sorted by id, often by class)."""
    if limit is None or limit >= len(split):
        return split
    if limit < 1:
        raise UserError(f"--max-samples must be at least 1, got {limit}")
    step = len(split) / limit
    return split.subset([int(i * step) for i in range(limit)])


def units_csv(result, class_names: list[str]) -> str:
    """One row per unit and class (plus class "overall"): accuracy with the unit removed and its Δ."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["unit", "class", "accuracy", "delta"])
    for i, u in enumerate(result.units):
        w.writerow([u, "overall", f"{float(result.accuracy[i]):.6f}", f"{float(result.delta[i]):.6f}"])
        for k, name in enumerate(class_names):
            w.writerow([u, name, f"{float(result.per_class[i, k]):.6f}", f"{float(result.delta_per_class[i, k]):.6f}"])
    return buf.getvalue()


def _constants(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--c {text!r} is not a comma-separated list of numbers; e.g. --c 2,3") from None
    if not values or any(v <= 0 for v in values):
        raise UserError(f"--c needs positive constants, got {text!r}; e.g. --c 2,3")
    return values


def _add_concepts(ranking: dict[str, Any], dissection: dict[str, Any], layer: str) -> None:
    """Attach the best concept (and IoU) from a dissect.json to every unit listed in the ranking."""
    layers = dissection.get("layers", {}) if isinstance(dissection, dict) else {}
    if layer not in layers:
        raise UserError(f"the --dissect file has no results for layer {layer!r} (it has {', '.join(layers) or 'none'}); "
                        f"run `modeldoctor dissect --layer {layer}` first")
    labels = {u["unit"]: u for u in layers[layer]["units"]}
    entries = ranking["worst"] + ranking["best"] + [e for per in ranking["per_class"].values()
                                                    for e in per["helping"] + per["hurting"]]
    for e in entries:
        if e["unit"] in labels:
            e["concept"], e["iou"] = labels[e["unit"]]["concept"], labels[e["unit"]]["iou"]
