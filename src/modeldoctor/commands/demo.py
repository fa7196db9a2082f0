"""Run the end-to-end story on offline data (for now: train a baseline on mnist5k and evaluate it).

Example: modeldoctor demo --out runs/demo
"""

from __future__ import annotations

import argparse

from . import train


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--quick", action="store_true", help="fewer epochs (used by CI)")


def run(args: argparse.Namespace) -> dict:
    parser = argparse.ArgumentParser()
    train.add_arguments(parser)  # train's own defaults, including flags added later
    targs = parser.parse_args(["--model", "simple-cnn", "--data", "mnist5k", "--out", args.out,
                               "--epochs", "1" if args.quick else "5"])
    return train.run(targs)
