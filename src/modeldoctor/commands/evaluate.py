"""Evaluate a checkpoint: accuracy overall and per class, confusion matrix, confidence statistics.

Example: modeldoctor evaluate --checkpoint runs/base/model.pt --data mnist5k
"""

from __future__ import annotations

import argparse

from ..training import evaluate
from .common import add_checkpoint_args, load_model_and_data


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_checkpoint_args(p)
    p.add_argument("--splits", default="val,test", help="comma-separated splits to evaluate")


def run(args: argparse.Namespace) -> dict:
    model, meta, bundle = load_model_and_data(args)
    metrics = {s: evaluate(model, bundle.split(s), bundle.num_classes) for s in args.splits.split(",")}
    return {"checkpoint": args.checkpoint, "metrics": metrics, "weights_sha256": meta.weights_sha256}
