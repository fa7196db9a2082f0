"""Train a baseline classifier; the best epoch is chosen on the validation split.

Example: modeldoctor train --model simple-cnn --data mnist5k --epochs 3 --out runs/base
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from modeldoctor.analyses.input_gradients import double_backprop_loss
from modeldoctor.cli.commands.common import out_dir
from modeldoctor.data.bundle import DataBundle
from modeldoctor.data.sources import load_data
from modeldoctor.io import names
from modeldoctor.models.checkpoint import CheckpointMeta, save_checkpoint
from modeldoctor.models.focused_dropout import insert_focused_dropout, parse_focused_dropout
from modeldoctor.models.zoo import build_model, min_input_size
from modeldoctor.training import TrainConfig, cross_entropy_loss, evaluate, fit


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="simple-cnn, resnet20, a torchvision name, timm:NAME or pkg.mod:factory")
    p.add_argument("--data", default="mnist5k", help="mnist5k, shortcut-mnist, imagefolder:PATH, cifar10:ROOT, ...")
    p.add_argument("--out", required=True, help="output directory (model.pt, metrics.json)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd")
    p.add_argument("--lr", type=float, default=None, help="default 0.05 for sgd, 1e-3 for adam")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--schedule", choices=["cosine", "constant"], default="cosine")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--input-size", type=int, default=None, help="resize images to this many pixels")
    p.add_argument("--focused-dropout", default=None, metavar="after=LAYER,par=0.1",
                   help="insert FocusedDropout after LAYER, active in a fraction par of batches [,gamma=0.6:0.9]")
    p.add_argument("--input-grad-reg", type=float, default=0.0, metavar="LAMBDA",
                   help="double backpropagation: add LAMBDA * mean squared input gradient of the loss")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    lr = args.lr if args.lr is not None else (0.05 if args.optimizer == "sgd" else 1e-3)
    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=lr,
                       weight_decay=args.weight_decay, schedule=args.schedule, seed=args.seed)


def run(args: argparse.Namespace) -> dict:
    out = out_dir(args)
    assert out is not None  # --out is required
    cfg = config_from_args(args)
    bundle = _load_bundle(args)
    torch.manual_seed(cfg.seed)
    model = build_model(args.model, bundle.num_classes, bundle.in_channels, bundle.input_size)
    regularisers = _regularisers(args)
    if "focused_dropout" in regularisers:
        insert_focused_dropout(model, **regularisers["focused_dropout"])
    loss_fn = double_backprop_loss(args.input_grad_reg) if args.input_grad_reg else cross_entropy_loss
    started = time.perf_counter()
    summary = fit(model, bundle.train, bundle.val, bundle.num_classes, cfg, loss_fn=loss_fn)
    metrics = {"val": evaluate(model, bundle.val, bundle.num_classes),
               "test": evaluate(model, bundle.test, bundle.num_classes)}
    meta = CheckpointMeta(model=args.model, num_classes=bundle.num_classes, in_channels=bundle.in_channels,
                          input_size=bundle.input_size, class_names=bundle.class_names, mean=bundle.mean,
                          std=bundle.std, dataset=bundle.spec, train_config=cfg.to_dict() | regularisers,
                          metrics={k: {"accuracy": v["accuracy"], "per_class": v["per_class"]} for k, v in metrics.items()})
    path = save_checkpoint(out / names.MODEL, model, meta)
    print(f"trained {args.model} on {bundle.spec}: val {metrics['val']['accuracy']:.4f} "
          f"test {metrics['test']['accuracy']:.4f} (best epoch {summary['best_epoch']})", file=sys.stderr)
    return {"checkpoint": str(path), "metrics": metrics, "best_epoch": summary["best_epoch"],
            "history": summary["history"], "seconds": time.perf_counter() - started,
            "weights_sha256": meta.weights_sha256}


def _regularisers(args: argparse.Namespace) -> dict:
    """The regularisers as stored in the checkpoint's train_config (load_checkpoint re-inserts FocusedDropout)."""
    found: dict = {}
    if args.focused_dropout:
        found["focused_dropout"] = parse_focused_dropout(args.focused_dropout)
    if args.input_grad_reg:
        found["input_grad_reg"] = args.input_grad_reg
    return found


def _load_bundle(args: argparse.Namespace) -> DataBundle:
    """The data at ``--input-size``, else at its own size, enlarged (never shrunk) to the model's minimum."""
    if args.input_size:
        return load_data(args.data, input_size=args.input_size)
    bundle = load_data(args.data)
    need = min_input_size(args.model)
    return bundle if bundle.input_size >= need else load_data(args.data, input_size=need)
