"""Treat a trained classifier with the channel- and space-wise constraints (Eq. 7), against a matched control.

The treatment fine-tunes the given weights (never a restart) with the checkpoint's own optimiser settings.
By default the same fine-tune without the constraints (same data order, epochs, optimiser, seed) runs too;
original / control / treated are reported on validation, test and background-swap composites of held-out
annotated images (a shortcut meter), and both arms keep the epoch with the best swap accuracy.

Example: modeldoctor treat --checkpoint runs/base/model.pt --data shortcut-mnist --masks builtin --out runs/treat --json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from modeldoctor import api
from modeldoctor.cli.commands.common import add_checkpoint_args, out_dir
from modeldoctor.core.errors import UserError
from modeldoctor.core.layers import conv_layer_names
from modeldoctor.data.bundle import DataBundle
from modeldoctor.data.masks import check_masks, load_boxes, load_masks
from modeldoctor.doctor.treatment import CONSTRAINTS, TreatConfig, control_config
from modeldoctor.io import names
from modeldoctor.io.diagnosis_files import load_diagnosis
from modeldoctor.io.documents import write_treatment
from modeldoctor.io.loading import load_model_and_data
from modeldoctor.models.checkpoint import CheckpointMeta, save_checkpoint
from modeldoctor.training import TrainConfig

DEFAULT_LR_SCALE = 1.0  # fine-tuning lr = the checkpoint's training lr: the original optimiser settings (Eq. 7 text)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_checkpoint_args(p)
    p.add_argument("--diagnosis", default=None, help="directory written by `modeldoctor diagnose` (channel-wise)")
    p.add_argument("--constraints", default=",".join(TreatConfig.constraints),
                   help=f"comma list of {', '.join(CONSTRAINTS)}")
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
    p.add_argument("--space-layers", default=None,
                   help="comma list (default: the deepest conv whose receptive field is at most 1/4 of the input)")
    p.add_argument("--channel-layers", default=None, help="comma list (default: the last conv layer)")
    p.add_argument("--lam", default=None, help="auto or a number: sets --lam-space/--lam-channel/--lam-input-gradient")
    p.add_argument("--lam-space", type=_lam, default=TreatConfig.lam_space, help="auto or a number >= 0")
    p.add_argument("--lam-channel", type=_lam, default=TreatConfig.lam_channel, help="auto or a number >= 0")
    p.add_argument("--lam-input-gradient", type=_lam, default=TreatConfig.lam_input_gradient, help="auto or a number >= 0")
    p.add_argument("--lam-fraction", type=float, default=TreatConfig.lam_fraction,
                   help="auto λ: each term equals this × the annotated images' cross-entropy at the start")
    p.add_argument("--noise-draws", type=int, default=TreatConfig.noise_draws, help="J")
    p.add_argument("--delta", type=float, default=TreatConfig.delta, help="noise range relative to rms(m^r)")
    p.add_argument("--form", choices=["activation", "share", "paper"], default=TreatConfig.form,
                   help="activation: background share of |Σ_k m_k ∂ŷ/∂m_k|; share: of Σ_k|∂ŷ/∂m_k|; paper: raw sums")
    p.add_argument("--smooth-beta", type=float, default=None,
                   help="constraint pass backward through softplus_β instead of ReLU (forward unchanged)")
    p.add_argument("--receptive-field", action="store_true",
                   help="a feature cell is background where most of its receptive field is background")
    p.add_argument("--holdout-annotated", type=float, default=TreatConfig.holdout_annotated,
                   help="share of annotated images kept out of training for the background-swap test")
    p.add_argument("--select", choices=["swap", "val", "last"], default=TreatConfig.select,
                   help="checkpoint: best background-swap accuracy, best validation accuracy, or the last epoch")
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
    assert out is not None  # --out is required
    constraints = tuple(c.strip() for c in args.constraints.split(",") if c.strip())
    lams: dict[str, Any] = {k: _lam(args.lam) if args.lam is not None else getattr(args, k)
                            for k in ("lam_space", "lam_channel", "lam_input_gradient")}
    options = dict(
        space_layers=_names(args.space_layers), channel_layers=_names(args.channel_layers), **lams,
        lam_fraction=args.lam_fraction, noise_draws=args.noise_draws, delta=args.delta, form=args.form,
        first=args.first, competitor=args.competitor, competitor_kernels=args.competitor_kernels,
        receptive_field=args.receptive_field, smooth_beta=args.smooth_beta, mix_annotated=args.mix_annotated,
        holdout_annotated=args.holdout_annotated, select=args.select)
    if args.expansion is not None:
        options["expansion"] = args.expansion
    options = {k: v for k, v in options.items() if v is not None}
    masks = _masks(args, bundle) if {"space", "input-gradient"} & set(constraints) or args.masks or args.boxes else {}
    base_cfg = TrainConfig.from_dict(meta.train_config)
    results = []
    for seed in range(args.seeds):
        result = api.treat(
            model, None, bundle, masks=masks, annotate_per_class=args.annotate_per_class or None,
            constraints=constraints, epochs=args.epochs, seed=seed, control=not args.no_control,
            lr=args.lr if args.lr is not None else base_cfg.lr * DEFAULT_LR_SCALE,
            batch_size=args.batch_size or base_cfg.batch_size, train_config=base_cfg,
            relevant=_relevant(args, model, bundle) if "channel" in constraints else None,
            state_dir=out, resume=args.resume, **options)
        for arm, tuned, metrics in (("treated", result.treated, result.treated_metrics),
                                    ("control", result.control, result.control_metrics)):
            if tuned is None or metrics is None:
                continue
            recipe = result.train_config.to_dict() | {
                "treatment": (result.config if arm == "treated" else control_config(result.config)).to_dict()}
            child = CheckpointMeta(**{**meta.__dict__, "train_config": recipe, "metrics": metrics,
                                      "parent": str(Path(args.checkpoint).resolve())})
            save_checkpoint(out / names.arm_checkpoint(arm, seed), tuned, child, protect=(args.checkpoint,))
            print(f"{arm} seed {seed}: val {metrics['val']['accuracy']:.4f} test {metrics['test']['accuracy']:.4f}",
                  file=sys.stderr)
        results.append(result)
    document = api.treatment_document(results, str(args.checkpoint))
    write_treatment(out, document)
    return document


def _lam(value: str) -> float | str:
    if value == "auto":
        return "auto"
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or a number >= 0, got {value!r}") from None
    if not number >= 0:
        raise argparse.ArgumentTypeError(f"expected auto or a number >= 0, got {value!r}")
    return number


def _names(value: str | None) -> list[str] | None:
    return [n.strip() for n in value.split(",") if n.strip()] if value else None


def _relevant(args: argparse.Namespace, model: torch.nn.Module, bundle: DataBundle) -> dict[str, torch.Tensor]:
    """Relevant-kernel masks (num_classes, K) per channel-wise layer, from the diagnosis directory."""
    if not args.diagnosis:
        raise UserError("the channel-wise constraint needs a diagnosis; run `modeldoctor diagnose` and pass --diagnosis DIR")
    diagnosis = load_diagnosis(args.diagnosis)
    options = {"method": args.relevance} if args.relevance else {}
    layers = _names(args.channel_layers) or conv_layer_names(model)[-1:]
    return {layer: diagnosis.relevant(layer, **options) for layer in layers}


def _masks(args: argparse.Namespace, bundle: DataBundle) -> dict[str, torch.Tensor]:
    """Object masks by training-sample id from --boxes, --masks builtin or --masks DIR."""
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
    return masks
