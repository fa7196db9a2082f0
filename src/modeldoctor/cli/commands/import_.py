"""Import a classifier trained elsewhere: its weights file (a plain state_dict or a common wrapper) into a
modeldoctor checkpoint, evaluated once on the data.

Example: modeldoctor import --model resnet18 --weights resnet18_digits.pth --data mnist5k --input-size 32 \\
    --mean 0.1307 --std 0.3081 --out runs/imported/model.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from modeldoctor import api
from modeldoctor.cli.checks import check_out
from modeldoctor.cli.commands.common import comma_floats, comma_list
from modeldoctor.core.errors import UserError
from modeldoctor.data.sources import load_data
from modeldoctor.io import names
from modeldoctor.io.weights import load_foreign_weights
from modeldoctor.models.checkpoint import save_checkpoint
from modeldoctor.models.zoo import build_model

SUFFIXES = (".pt", ".pth")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="the architecture: a torchvision name, timm:NAME or pkg.mod:factory")
    p.add_argument("--weights", required=True, help="state_dict file (.pth/.pt; {'state_dict': ...} and "
                                                   "'module.'/'model.' prefixes are understood)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow pickled Python objects in the weights file (only for files you trust)")
    p.add_argument("--data", required=True, help="the data the model classifies: mnist5k, imagefolder:PATH, ...")
    p.add_argument("--classes", default=None, metavar="A,B,...", help="class names in the model's output order")
    p.add_argument("--mean", default=None, metavar="M[,M,M]", help="normalisation mean the model was trained with")
    p.add_argument("--std", default=None, metavar="S[,S,S]", help="normalisation std the model was trained with")
    p.add_argument("--input-size", type=int, default=None, help="resize images to this many pixels")
    p.add_argument("--out", dest="target", required=True,
                   help=f"checkpoint file (.pt) or directory (then DIR/{names.MODEL})")


def target_path(value: str) -> Path:
    """``--out``: a ``.pt``/``.pth`` file, or a directory that gets ``model.pt``; checked before any work."""
    path = Path(value)
    if path.suffix in SUFFIXES:
        check_out(path.parent, "--out's folder")
        if path.is_dir():
            raise UserError(f"--out {path} is a directory; give a file name ending in .pt or a directory path")
        return path
    check_out(path)
    return path / names.MODEL


def run(args: argparse.Namespace) -> dict[str, Any]:
    target = target_path(args.target)
    if target.exists() and target.resolve() == Path(args.weights).resolve():
        raise UserError(f"refusing to overwrite the input file {target}; choose another --out")
    mean = comma_floats(args.mean, "--mean", "0.485,0.456,0.406")
    std = comma_floats(args.std, "--std", "0.229,0.224,0.225")
    bundle = load_data(args.data, input_size=args.input_size)
    model = build_model(args.model, bundle.num_classes, bundle.in_channels, bundle.input_size)
    fitted = load_foreign_weights(model, args.weights, trust=args.trust_checkpoint)
    imported = api.from_model(model, bundle, spec=args.model, class_names=comma_list(args.classes), mean=mean,
                              std=std, source=str(Path(args.weights).resolve()))
    path = save_checkpoint(target, imported.model, imported.meta, protect=(args.weights,))
    return {"checkpoint": str(path), **imported.to_dict(), "weights": fitted.summary()}
