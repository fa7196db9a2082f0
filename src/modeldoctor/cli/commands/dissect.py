"""Network Dissection: label each unit of a layer with the concept mask its strongest activations match (IoU).

Concepts come from --masks DIR (one PNG per sample id, non-zero = "object", the rest "background"), or
--masks builtin (the dataset's own object masks, e.g. shortcut-mnist's digits); without --masks, the
stand-in "stroke" (raw pixel > 0.5) / "background" for digit data such as mnist5k.

Example: modeldoctor dissect --checkpoint runs/base/model.pt --data mnist5k --layer features.12 --out runs/dissect --json
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from modeldoctor.analyses.dissect import (
    DEFAULT_MIN_IOU,
    DEFAULT_QUANTILE,
    dissect,
    dissection_summary,
    object_background,
    stroke_concepts,
)
from modeldoctor.cli.commands.common import add_checkpoint_args, add_out_arg, out_dir
from modeldoctor.core.errors import UserError
from modeldoctor.core.files import write_json
from modeldoctor.data.masks import load_masks
from modeldoctor.io import names
from modeldoctor.io.loading import load_model_and_data


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_checkpoint_args(p)
    add_out_arg(p)
    p.add_argument("--layer", default=None, help="dotted layer name(s), comma-separated (default: the last Conv2d)")
    p.add_argument("--split", default="val", help="split whose images are scored (default val)")
    p.add_argument("--masks", default=None, help="folder with one PNG mask per sample id (non-zero = object), or builtin")
    p.add_argument("--quantile", type=float, default=DEFAULT_QUANTILE, help="top quantile for t_u (default 0.01)")
    p.add_argument("--min-iou", type=float, default=DEFAULT_MIN_IOU, help="IoU a unit needs to count as a detector")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-samples", type=int, default=None, help="use at most N evenly spaced samples")


def run(args: argparse.Namespace) -> dict[str, Any]:
    model, meta, bundle = load_model_and_data(args.checkpoint, args.data, args.trust_checkpoint)
    split = bundle.split(args.split)
    ids = _evenly_spaced_ids(split.ids, args.max_samples)
    if args.masks == "builtin":
        if not bundle.masks:
            raise UserError(f"{bundle.spec} has no built-in masks; pass --masks DIR, or omit --masks for the "
                            "stroke / background stand-in")
        source, masks = "builtin", object_background({i: bundle.masks[i] for i in ids if i in bundle.masks})
    elif args.masks:
        found = load_masks(args.masks, ids, bundle.input_size)
        if not found:
            raise UserError(f"no mask in {args.masks} is named after a sample id of the {args.split} split "
                            f"(e.g. {ids[0]}.png); name each PNG after its sample id")
        source, masks = "masks", object_background(found)
    else:
        print("modeldoctor dissect: no --masks given; using the built-in stand-in concepts stroke / background",
              file=sys.stderr)
        chosen = set(ids)
        source, masks = "builtin-stroke", {k: v for k, v in stroke_concepts(split).items() if k in chosen}
    layers = [s for s in args.layer.split(",") if s] if args.layer else None
    results = dissect(model, split, masks, layers, quantile=args.quantile, batch_size=args.batch_size)
    report = {"checkpoint": args.checkpoint, "weights_sha256": meta.weights_sha256, "split": args.split,
              "concept_source": source, "quantile": args.quantile, **dissection_summary(results, args.min_iou)}
    out = out_dir(args)
    if out is not None:
        write_json(out / names.DISSECT, report)
        report["files"] = [str(out / names.DISSECT)]
    return report


def _evenly_spaced_ids(ids: list[str], limit: int | None) -> list[str]:
    if limit is None or limit >= len(ids):
        return list(ids)
    if limit < 1:
        raise UserError(f"--max-samples must be at least 1, got {limit}")
    return [ids[int(i * len(ids) / limit)] for i in range(limit)]
