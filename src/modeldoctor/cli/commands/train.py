"""Train a baseline classifier; the best epoch is chosen on the validation split.

Example: modeldoctor train --model simple-cnn --data mnist5k --epochs 3 --out runs/base
"""

from __future__ import annotations

import argparse
from typing import Any

from modeldoctor import api
from modeldoctor.cli.commands.common import out_dir
from modeldoctor.core import distributed
from modeldoctor.io import names
from modeldoctor.io.checkpoints import write_model
from modeldoctor.io.loading import data_for_model
from modeldoctor.models.focused_dropout import parse_focused_dropout
from modeldoctor.training import DEFAULT_LR, TrainConfig, recipe_for


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="simple-cnn, resnet20, a torchvision name, timm:NAME or pkg.mod:factory")
    p.add_argument("--data", default="mnist5k", help="mnist5k, shortcut-mnist, imagefolder:PATH, cifar10:ROOT, ...")
    p.add_argument("--out", required=True, help=f"output directory ({names.MODEL})")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--optimizer", choices=["sgd", "adam", "rmsprop"], default=None,
                   help="default: the model family's torchvision reference recipe (AdamW for ConvNeXt, RMSprop for "
                        "EfficientNet-B and MobileNet-V3), else sgd")
    p.add_argument("--lr", type=float, default=None, help="default: the recipe's (0.05 sgd, 1e-3 adam, 0.008 rmsprop)")
    p.add_argument("--weight-decay", type=float, default=None, help="default: the recipe's (5e-4 for sgd)")
    p.add_argument("--schedule", choices=["cosine", "constant"], default="cosine")
    p.add_argument("--precise-bn", choices=["auto", "on", "off"], default="auto",
                   help="re-estimate BatchNorm statistics over 64 training batches after every epoch (auto: when a "
                        "BatchNorm momentum is below 0.1, as in MobileNet-V3 and EfficientNet)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--input-size", type=int, default=None, help="resize images to this many pixels")
    p.add_argument("--focused-dropout", default=None, metavar="after=LAYER,par=0.1",
                   help="insert FocusedDropout after LAYER, active in a fraction par of batches [,gamma=0.6:0.9]")
    p.add_argument("--input-grad-reg", type=float, default=0.0, metavar="LAMBDA",
                   help="double backpropagation: add LAMBDA * mean squared input gradient of the loss")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The model family's recipe, with every option the user gave put over it (an optimiser without an lr takes
    that optimiser's default lr)."""
    recipe = recipe_for(args.model)
    if args.optimizer is not None and args.optimizer != recipe["optimizer"]:
        recipe = {"optimizer": args.optimizer, "lr": DEFAULT_LR[args.optimizer], "weight_decay": recipe["weight_decay"]}
    given = {"lr": args.lr, "weight_decay": args.weight_decay}
    recipe.update({k: v for k, v in given.items() if v is not None})
    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, schedule=args.schedule, seed=args.seed,
                       precise_bn=args.precise_bn, **recipe)


def run(args: argparse.Namespace) -> dict[str, Any]:
    out = out_dir(args)
    assert out is not None  # --out is required
    cfg = config_from_args(args)
    focused_dropout = parse_focused_dropout(args.focused_dropout) if args.focused_dropout else None
    bundle = data_for_model(args.data, args.model, args.input_size)
    result = api.train(args.model, bundle, cfg, focused_dropout=focused_dropout, input_grad_reg=args.input_grad_reg)
    path = write_model(out, result.model, result.meta) if distributed.is_main() else out / names.MODEL
    return {"checkpoint": str(path), **result.to_dict()}
