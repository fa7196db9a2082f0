"""Arguments and loading steps shared by several commands."""

from __future__ import annotations

import argparse
from pathlib import Path

from torch import nn

from ..checkpoint import CheckpointMeta, load_checkpoint
from ..data import DataBundle, load_data
from ..errors import UserError


def add_checkpoint_args(p: argparse.ArgumentParser, data_required: bool = False) -> None:
    p.add_argument("--checkpoint", required=True, help="model.pt written by `modeldoctor train`")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow pickled Python objects in the checkpoint (only for files you trust)")
    p.add_argument("--data", required=data_required, default=None,
                   help="dataset spec (default: the one the checkpoint was trained on)")


def add_out_arg(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--out", required=required, default=None, help="output directory")


def data_for(meta: CheckpointMeta, spec: str | None) -> DataBundle:
    """Load the data at the checkpoint's input size, normalised with the checkpoint's own statistics."""
    bundle = load_data(spec or meta.dataset, input_size=meta.input_size)
    if bundle.num_classes != meta.num_classes or bundle.in_channels != meta.in_channels:
        raise UserError(f"data {bundle.spec} has {bundle.num_classes} classes / {bundle.in_channels} channels but the "
                        f"checkpoint expects {meta.num_classes} / {meta.in_channels}; use the data it was trained on")
    for split in (bundle.train, bundle.val, bundle.test):
        split.mean = split.mean.new_tensor(meta.mean).view(-1, 1, 1)
        split.std = split.std.new_tensor(meta.std).view(-1, 1, 1)
    bundle.mean, bundle.std = list(meta.mean), list(meta.std)
    return bundle


def load_model_and_data(args: argparse.Namespace) -> tuple[nn.Module, CheckpointMeta, DataBundle]:
    model, meta = load_checkpoint(args.checkpoint, trust=args.trust_checkpoint)
    return model, meta, data_for(meta, args.data)


def out_dir(args: argparse.Namespace, default: str | None = None) -> Path | None:
    value = args.out or default
    if value is None:
        return None
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {path} exists and is not a directory; choose a directory path")
    path.mkdir(parents=True, exist_ok=True)
    return path
