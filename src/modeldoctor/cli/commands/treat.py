"""Treat a trained classifier that reads the background, against a matched control, and say whether it helped.

The treatment fine-tunes the given weights (never a restart) with the checkpoint's own optimiser settings.  By
default (``--constraints auto``) it tries counterfactual backgrounds and a last-layer re-fit and keeps the better on
held-out background swaps; ``--constraints space,channel`` runs the paper's Eq. 5-7.  The same fine-tune without the
treatment's terms (same data order, epochs, optimiser, seed) runs too; original / control / treated are reported on
validation, test and swap composites of held-out annotated objects on held-out backgrounds, and the verdict says
whether the treated arm beat the control by more than its noise.

Example: modeldoctor treat --checkpoint runs/base/model.pt --data shortcut-mnist --masks builtin --out runs/treat --json
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from modeldoctor import api
from modeldoctor.cli.commands.common import add_checkpoint_args, comma_list, out_dir
from modeldoctor.core import distributed
from modeldoctor.core.errors import UserError
from modeldoctor.data.swap import PLACES
from modeldoctor.doctor.search import CANDIDATES, DEFAULT_CANDIDATES
from modeldoctor.doctor.treatment import CONSTRAINTS, MASKED, TreatConfig
from modeldoctor.io import names
from modeldoctor.io.checkpoints import write_arm
from modeldoctor.io.diagnosis_files import load_diagnosis
from modeldoctor.io.documents import TREATMENT
from modeldoctor.io.loading import load_model_and_data, read_object_masks
from modeldoctor.training import TrainConfig

logger = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_checkpoint_args(p)
    p.add_argument("--diagnosis", default=None, help="directory written by `modeldoctor diagnose` (channel-wise)")
    p.add_argument("--constraints", default="auto",
                   help=f"auto (try --candidates, keep the best on held-out background swaps) or a comma list of "
                        f"{', '.join(CONSTRAINTS)}")
    p.add_argument("--candidates", type=comma_list, default=None,
                   help=f"with --constraints auto: comma list of {', '.join(CANDIDATES)} "
                        f"(default {','.join(DEFAULT_CANDIDATES)})")
    p.add_argument("--lam-counterfactual", type=float, default=TreatConfig.lam_counterfactual,
                   help="weight of the counterfactual composites' cross-entropy")
    p.add_argument("--composites", type=int, default=TreatConfig.composites,
                   help="counterfactual composites (annotated objects on other images' backgrounds) per batch")
    p.add_argument("--paste-at", choices=[*PLACES, "auto"], default=TreatConfig.paste_at,
                   help="where a pasted object sits in the composites that train: where it was in its own image, "
                        "centred where the background image's own object was, or auto (donor when the shortcut "
                        "check finds the model reading its background)")
    p.add_argument("--swap-paste-at", choices=[*PLACES, "auto"], default=TreatConfig.swap_paste_at,
                   help="the same for the swap meter's composites")
    p.add_argument("--term-cap", type=float, default=None,
                   help="trust region: each penalty's λ·term at most this × the batch cross-entropy per step")
    p.add_argument("--masks", default=None,
                   help="builtin (the dataset's own object masks), DIR of PNG/labelme files, or a COCO instances "
                        "FILE.json (polygons/RLE)")
    p.add_argument("--boxes", default=None, help="CSV or JSON file of boxes: id, x0, y0, x1, y1 (input pixels)")
    p.add_argument("--refine-masks", action="store_true",
                   help="cut each mask (e.g. a box) down to the object with GrabCut before treating (needs OpenCV)")
    p.add_argument("--annotate-per-class", type=int, default=20,
                   help="use the N lowest-confidence training images per class that have masks (0: all masks)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=None,
                   help="fine-tuning learning rate (default: the checkpoint's, the original optimiser settings)")
    p.add_argument("--batch-size", type=int, default=None, help="default: the checkpoint's")
    p.add_argument("--seeds", type=int, default=1, help="repeat with seeds 0..N-1 and report mean ± std")
    p.add_argument("--no-control", action="store_true", help="skip the matched fine-tuning control")
    p.add_argument("--out", required=True, help=f"output directory ({names.TREAT}, {names.arm_checkpoint('treated')}, "
                                                 f"{names.arm_checkpoint('control')})")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--space-layers", type=comma_list, default=None,
                   help="comma list (default: the deepest conv whose receptive field is at most 1/4 of the input)")
    p.add_argument("--channel-layers", type=comma_list, default=None, help="comma list (default: the last conv layer)")
    p.add_argument("--lam", type=_lam, default=None,
                   help="auto or a number: sets --lam-space/--lam-channel/--lam-input-gradient")
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
    p.add_argument("--early-stop-margin", type=_margin, default=TreatConfig.early_stop_margin,
                   help="stop a counterfactual fine-tune after epoch e of E when it trails the re-fit head on select "
                        "swaps by more than this × (E − e) / E, and run its low-lr fallback; off: never stop")
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


def run(args: argparse.Namespace) -> dict[str, Any]:
    model, meta, bundle = load_model_and_data(args.checkpoint, args.data, args.trust_checkpoint)
    out = out_dir(args)
    assert out is not None  # --out is required
    constraints: tuple[str, ...] | str = "auto" if args.constraints == "auto" else tuple(comma_list(args.constraints) or ())
    if "channel" in constraints and not args.diagnosis:
        raise UserError("the channel-wise constraint needs a diagnosis; run `modeldoctor diagnose` and pass --diagnosis DIR")
    diagnosis = load_diagnosis(args.diagnosis) if args.diagnosis else None
    needs_masks = constraints == "auto" or set(MASKED) & set(constraints) or args.masks or args.boxes
    masks = read_object_masks(bundle, args.masks, boxes=args.boxes) if needs_masks else {}

    def save(result: api.TreatmentResult) -> None:
        for arm in result.arms() if distributed.is_main() else ():  # under torchrun rank 0 writes
            write_arm(out, arm.name, result.train_config.seed, arm.model, meta, args.checkpoint, arm.recipe, arm.metrics)

    results = api.treat_seeds(
        model, diagnosis, bundle, range(args.seeds), on_result=save, masks=masks,
        annotate_per_class=args.annotate_per_class or None, constraints=constraints, epochs=args.epochs, lr=args.lr,
        batch_size=args.batch_size, train_config=TrainConfig.from_dict(meta.train_config), relevance=args.relevance,
        control=not args.no_control, state_dir=out, resume=args.resume, candidates=args.candidates,
        refine=args.refine_masks, **_options(args))
    document = api.treatment_document(results, str(args.checkpoint))
    for result in results:
        logger.warning("seed %d: %s", result.train_config.seed, result.verdict.get("message", ""))
    if distributed.is_main():
        TREATMENT.write(out, document)
    return document


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """Every TreatConfig field given on the command line (a flag named after the field is enough; the rest keep
    TreatConfig's defaults); ``--lam`` sets all three λ."""
    options = {f.name: getattr(args, f.name) for f in dataclasses.fields(TreatConfig)
               if f.name != "constraints" and getattr(args, f.name, None) is not None}
    if args.lam is not None:
        options.update(lam_space=args.lam, lam_channel=args.lam, lam_input_gradient=args.lam)
    if options.get("early_stop_margin") == "off":
        options["early_stop_margin"] = None
    return options


def _number_or(word: str) -> Callable[[str], float | str]:
    """An option's type: the word ``word`` or a number >= 0."""
    def parse(value: str) -> float | str:
        if value == word:
            return word
        try:
            number = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {word} or a number >= 0, got {value!r}") from None
        if not number >= 0:
            raise argparse.ArgumentTypeError(f"expected {word} or a number >= 0, got {value!r}")
        return number
    return parse


_lam, _margin = _number_or("auto"), _number_or("off")
