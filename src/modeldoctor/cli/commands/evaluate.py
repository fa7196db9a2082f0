"""Evaluate a checkpoint: accuracy overall and per class, confusion matrix, confidence statistics.

Example: modeldoctor evaluate --checkpoint runs/base/model.pt --data mnist5k
Robustness: modeldoctor evaluate --checkpoint runs/base/model.pt --fgsm 0.05,0.1 --json
"""

from __future__ import annotations

import argparse
from typing import Any

from modeldoctor import api
from modeldoctor.analyses.adversarial import parse_eps
from modeldoctor.cli.commands.common import add_checkpoint_args, comma_list
from modeldoctor.io.loading import load_model_and_data


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_checkpoint_args(p)
    p.add_argument("--splits", default="val,test", help="comma-separated splits to evaluate")
    p.add_argument("--fgsm", default=None, metavar="EPS[,EPS...]",
                   help="also report test accuracy under FGSM at each ε (raw [0,1] pixel units), e.g. 0.05,0.1")


def run(args: argparse.Namespace) -> dict[str, Any]:
    eps_values = parse_eps(args.fgsm) if args.fgsm else []
    model, meta, bundle = load_model_and_data(args.checkpoint, args.data, args.trust_checkpoint)
    metrics = api.evaluate_model(model, bundle, comma_list(args.splits) or [], fgsm=eps_values)
    return {"checkpoint": args.checkpoint, "metrics": metrics, "weights_sha256": meta.weights_sha256}
