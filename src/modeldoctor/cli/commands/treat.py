"""Treat a trained classifier with the channel- and space-wise constraints (Eq. 7), against a matched control.

The treatment fine-tunes the given weights (never a restart).  By default the same fine-tune without the
constraints (same data order, epochs, optimiser, seed) runs too, and original / control / treated are
reported on validation and test, overall and per class; checkpoints are chosen on validation.

Example: modeldoctor treat --checkpoint runs/base/model.pt --diagnosis runs/diag --data shortcut-mnist --constraints space,channel --masks builtin --annotate-per-class 20 --epochs 3 --out runs/treat --json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from modeldoctor.cli.commands.common import add_checkpoint_args, out_dir
from modeldoctor.core.errors import UserError
from modeldoctor.core.files import write_json
from modeldoctor.data.masks import check_masks, default_expansion, load_boxes, load_masks
from modeldoctor.doctor.treatment import (
    CONSTRAINTS,
    MaskBank,
    TreatConfig,
    control_config,
    default_layers,
    lowest_confidence,
    mean_std,
    split_metrics,
    treat_and_control,
)
from modeldoctor.io.diagnosis_files import load_diagnosis
from modeldoctor.io.loading import load_model_and_data
from modeldoctor.models.checkpoint import CheckpointMeta, save_checkpoint
from modeldoctor.training import TrainConfig

DEFAULT_LR_SCALE = 0.1  # fine-tuning lr = 0.1 × the checkpoint's training lr (fixed a priori, not tuned; README)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_checkpoint_args(p)
    p.add_argument("--diagnosis", default=None, help="directory written by `modeldoctor diagnose` (channel-wise)")
    p.add_argument("--constraints", default="space,channel", help=f"comma list of {', '.join(CONSTRAINTS)}")
    p.add_argument("--masks", default=None, help="builtin (the dataset's own object masks) or DIR of PNG/labelme files")
    p.add_argument("--boxes", default=None, help="CSV or JSON file of boxes: id, x0, y0, x1, y1 (input pixels)")
    p.add_argument("--annotate-per-class", type=int, default=20,
                   help="use the N lowest-confidence training images per class that have masks (0: all masks)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=None,
                   help=f"fine-tuning learning rate (default {DEFAULT_LR_SCALE} x the checkpoint's)")
    p.add_argument("--batch-size", type=int, default=None, help="default: the checkpoint's")
    p.add_argument("--seeds", type=int, default=1, help="repeat with seeds 0..N-1 and report mean ± std")
    p.add_argument("--no-control", action="store_true", help="skip the matched fine-tuning control")
    p.add_argument("--out", required=True, help="output directory (treat.json, treated.pt, control.pt)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--space-layers", default=None, help="comma list (default: the last two conv layers)")
    p.add_argument("--channel-layers", default=None, help="comma list (default: the last conv layer)")
    p.add_argument("--lam-space", type=float, default=TreatConfig.lam_space)
    p.add_argument("--lam-channel", type=float, default=TreatConfig.lam_channel)
    p.add_argument("--lam-input-gradient", type=float, default=TreatConfig.lam_input_gradient)
    p.add_argument("--noise-draws", type=int, default=TreatConfig.noise_draws, help="J")
    p.add_argument("--delta", type=float, default=TreatConfig.delta, help="noise range relative to rms(m^r)")
    p.add_argument("--form", choices=["paper", "share"], default=TreatConfig.form,
                   help="paper: raw gradient sums; share: scale-free share of gradient mass")
    p.add_argument("--first", choices=["label", "pred"], default=TreatConfig.first)
    p.add_argument("--competitor", choices=["runner_up", "wrong_top1"], default=TreatConfig.competitor)
    p.add_argument("--competitor-kernels", action="store_true",
                   help="restrict Eq. 5's second term to the competitor's relevant kernels (authors' code)")
    p.add_argument("--relevance", default=None, help="relevant-kernel method of the diagnosis (default: its own)")
    p.add_argument("--expansion", type=int, default=None, help="mask expansion in pixels (default: Table 4 by size)")
    p.add_argument("--mix-annotated", type=int, default=TreatConfig.mix_annotated,
                   help="annotated images appended to every batch (control gets them too)")


def run(args: argparse.Namespace) -> dict:
    model, meta, bundle = load_model_and_data(args.checkpoint, args.data, args.trust_checkpoint)
    out = out_dir(args)
    constraints = tuple(c.strip() for c in args.constraints.split(",") if c.strip())
    space_default, channel_default = default_layers(model)
    cfg = TreatConfig(
        constraints=constraints, space_layers=_names(args.space_layers) or space_default,
        channel_layers=_names(args.channel_layers) or channel_default, lam_space=args.lam_space,
        lam_channel=args.lam_channel, lam_input_gradient=args.lam_input_gradient, noise_draws=args.noise_draws,
        delta=args.delta, form=args.form, first=args.first, competitor=args.competitor,
        competitor_kernels=args.competitor_kernels,
        expansion=args.expansion if args.expansion is not None else default_expansion(bundle.input_size),
        mix_annotated=args.mix_annotated)
    relevant = _relevant(args, cfg.channel_layers) if "channel" in constraints else None
    bank = _mask_bank(args, model, bundle) if {"space", "input-gradient"} & set(constraints) else None
    base_cfg = TrainConfig.from_dict(meta.train_config)
    report: dict[str, Any] = {"checkpoint": str(args.checkpoint), "config": cfg.to_dict(),
                              "annotated": len(bank.pool) if bank else 0,
                              "original": split_metrics(model, bundle.val, bundle.test, bundle.num_classes)}
    arms = ["treated"] if args.no_control else ["control", "treated"]
    runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in arms}
    for seed in range(args.seeds):
        train_cfg = TrainConfig(**{**base_cfg.to_dict(), "epochs": args.epochs, "seed": seed,
                                   "lr": args.lr if args.lr is not None else base_cfg.lr * DEFAULT_LR_SCALE,
                                   "batch_size": args.batch_size or base_cfg.batch_size})
        tuned = treat_and_control(model, bundle, cfg, train_cfg, relevant, bank, control=not args.no_control,
                                  state_dir=out, resume=args.resume)
        suffix = "" if seed == 0 else f"-seed{seed}"
        for arm, (arm_model, metrics) in tuned.items():
            runs[arm].append(metrics)
            arm_cfg = cfg if arm == "treated" else control_config(cfg)
            child = CheckpointMeta(**{**meta.__dict__, "train_config": train_cfg.to_dict() | {"treatment": arm_cfg.to_dict()},
                                      "metrics": metrics, "parent": str(Path(args.checkpoint).resolve())})
            save_checkpoint(out / f"{arm}{suffix}.pt", arm_model, child, protect=(args.checkpoint,))
            print(f"{arm} seed {seed}: val {metrics['val']['accuracy']:.4f} test {metrics['test']['accuracy']:.4f}",
                  file=sys.stderr)
    for arm in arms:
        report[arm] = mean_std(runs[arm]) if args.seeds > 1 else runs[arm][0]
    if args.no_control:
        report["control"] = None
    write_json(out / "treat.json", report)
    return report


def _names(value: str | None) -> list[str] | None:
    return [n.strip() for n in value.split(",") if n.strip()] if value else None


def _relevant(args: argparse.Namespace, layers: list[str]) -> dict[str, torch.Tensor]:
    """Relevant-kernel masks (num_classes, K) per layer from the diagnosis directory."""
    if not args.diagnosis:
        raise UserError("the channel-wise constraint needs a diagnosis; run `modeldoctor diagnose` and pass --diagnosis DIR")

    diagnosis = load_diagnosis(args.diagnosis)
    options = {"method": args.relevance} if args.relevance else {}
    found = {layer: diagnosis.relevant(layer, **options) for layer in layers}
    return found


def _mask_bank(args: argparse.Namespace, model: torch.nn.Module, bundle) -> MaskBank:
    size = bundle.input_size
    ids = bundle.train.ids
    if args.boxes:
        masks = load_boxes(args.boxes, ids, size)
    elif args.masks == "builtin":
        if not bundle.masks:
            raise UserError(f"{bundle.spec} has no built-in masks; pass --masks DIR or --boxes FILE")
        masks = {sid: bundle.masks[sid] for sid in ids if sid in bundle.masks}
    elif args.masks:
        masks = load_masks(args.masks, ids, size)
    else:
        raise UserError("the space-wise constraint needs masks; pass --masks builtin|DIR or --boxes FILE")
    masks = check_masks(masks, size)
    if not masks:
        raise UserError(f"no mask matches a training image id of {bundle.spec} (e.g. {ids[0]}); "
                        "name each mask after its sample id or image file")
    per_class = args.annotate_per_class or None
    chosen = lowest_confidence(model, bundle.train, list(masks), per_class, bundle.num_classes)
    return MaskBank.build(bundle.train, masks, chosen, size)
