"""Network Dissection: label each unit of a layer with the concept mask its strongest activations match (IoU).

Concepts come from --masks DIR (one PNG per sample id, non-zero = "object", the rest "background"), or
--masks builtin (the dataset's own object masks, e.g. shortcut-mnist's digits); without --masks, the
stand-in "stroke" (raw pixel > 0.5) / "background" for digit data such as mnist5k.

Example: modeldoctor dissect --checkpoint runs/base/model.pt --data mnist5k --layer features.12 --out runs/dissect --json
"""

from __future__ import annotations

import argparse
from typing import Any

from modeldoctor import api
from modeldoctor.analyses.dissect import DEFAULT_MIN_IOU, DEFAULT_QUANTILE
from modeldoctor.cli.commands.common import add_checkpoint_args, add_out_arg, comma_list, out_dir
from modeldoctor.io.documents import DISSECTION
from modeldoctor.io.loading import load_model_and_data, read_object_masks


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
    masks = read_object_masks(bundle, args.masks, args.split) if args.masks else None
    result = api.dissect(model, bundle, args.split, masks, "builtin" if args.masks == "builtin" else "masks",
                         comma_list(args.layer), quantile=args.quantile, min_iou=args.min_iou,
                         batch_size=args.batch_size, max_samples=args.max_samples)
    report = {"checkpoint": args.checkpoint, "weights_sha256": meta.weights_sha256, **result.to_dict()}
    out = out_dir(args)
    if out is not None:
        report["files"] = [str(DISSECTION.write(out, report))]
    return report
