"""Unit deletion: accuracy per class with each unit of a layer removed, then scaling interventions (Table 1).

Units are ranked on --rank-split (validation by default) and the interventions on the k worst / best units
are reported on --eval-split (test) as well, so no unit is chosen on the data that judges it.

Example: modeldoctor ablate --checkpoint runs/base/model.pt --data mnist5k --layer features.12 --out runs/ablate --json
"""

from __future__ import annotations

import argparse
from typing import Any

from modeldoctor import api
from modeldoctor.cli.commands.common import add_checkpoint_args, add_out_arg, out_dir
from modeldoctor.core.errors import UserError
from modeldoctor.io import names
from modeldoctor.io.documents import ABLATION, DISSECTION, write_unit_table
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
                   help=f"{names.DISSECT} of the same layer: adds each top unit's best concept")


def run(args: argparse.Namespace) -> dict[str, Any]:
    model, meta, bundle = load_model_and_data(args.checkpoint, args.data, args.trust_checkpoint)
    constants = _constants(args.c)
    out = out_dir(args)
    dissection = DISSECTION.read(args.dissect) if args.dissect else None
    result = api.ablate(model, bundle, args.layer, args.rank_split, args.eval_split, k=args.k, constants=constants,
                        top=args.top, batch_size=args.batch_size, max_samples=args.max_samples, dissection=dissection)
    report = {"checkpoint": args.checkpoint, "weights_sha256": meta.weights_sha256, **result.to_dict()}
    if out is not None:
        files = [ABLATION.write(out, report), write_unit_table(out, result.deletion, bundle.class_names)]
        report["files"] = [str(f) for f in files]
    return report


def _constants(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--c {text!r} is not a comma-separated list of numbers; e.g. --c 2,3") from None
    if not values or any(v <= 0 for v in values):
        raise UserError(f"--c needs positive constants, got {text!r}; e.g. --c 2,3")
    return values
