"""Discovery 2: feature-map noise moves FGSM adversarials back but not normal samples; AUROC of the noise-flip detector.

For correctly classified test images and their successful FGSM adversarials (ε in raw [0, 1] pixels),
Uniform(−δ, δ) noise is added to --layer's output J times per δ (δ in units of the layer's activation std;
--absolute: the paper's absolute δ).  Reports the Fig. 3 curves, and compares adversarial detectors on the
same adversarials (FGSM or --attack pgd): the feature-noise detector (a logistic regression on flip share, margin
drop, KL and logit spread under noise at four layers and δ ∈ {0.5, 1, 2, 3}·std; and the best single score) and
feature squeezing (Xu et al. 2018), each fit or chosen on --calibration-split (val) adversarials and its AUROC
measured on --split.
With --out: stability.json and stability.png.

Example: modeldoctor stability --checkpoint runs/base/model.pt --data mnist5k --json
"""

from __future__ import annotations

import argparse
from typing import Any

from modeldoctor import api
from modeldoctor.analyses.detectors import RELATIVE_DELTAS
from modeldoctor.analyses.stability import DEFAULT_DELTAS
from modeldoctor.cli.commands.common import add_checkpoint_args, add_out_arg, comma_floats, comma_list, out_dir
from modeldoctor.core.errors import UserError
from modeldoctor.core.files import write_bytes
from modeldoctor.io import names
from modeldoctor.io.documents import STABILITY
from modeldoctor.io.loading import load_model_and_data


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_checkpoint_args(p)
    add_out_arg(p)
    p.add_argument("--layer", default=None, help="layer(s) to perturb, comma-separated (default: the last conv layer)")
    p.add_argument("--eps", type=float, default=0.1, help="FGSM ε in raw [0, 1] pixel units")
    p.add_argument("--deltas", default=None,
                   help=f"noise ranges δ, comma-separated (default {','.join(f'{d:g}' for d in RELATIVE_DELTAS)} "
                        f"relative, {','.join(f'{d:g}' for d in DEFAULT_DELTAS)} with --absolute)")
    p.add_argument("--draws", type=int, default=10, help="noise draws J per sample and δ")
    p.add_argument("--absolute", action="store_true", help="absolute δ as in the paper, not × the layer's std")
    p.add_argument("--attack", choices=["fgsm", "pgd"], default="fgsm", help="adversarials for the detector comparison")
    p.add_argument("--calibration-split", default="val", choices=["train", "val", "test"],
                   help="split whose adversarials choose each detector's settings")
    p.add_argument("--no-detectors", action="store_true", help="only the Fig. 3 curves, no detector comparison")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--max-samples", type=int, default=None, help="use only the first N images of the split")
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> dict[str, Any]:
    deltas = comma_floats(args.deltas, "--deltas", "0,0.1,0.2,0.3")
    if not args.no_detectors and args.calibration_split == args.split:
        raise UserError(f"--calibration-split and --split are both {args.split}; settings must be chosen on other "
                        "data than the AUROC is measured on (e.g. --calibration-split val --split test)")
    out = out_dir(args)
    model, _, bundle = load_model_and_data(args.checkpoint, args.data, args.trust_checkpoint)
    calibration = None if args.no_detectors else bundle.split(args.calibration_split)
    result = {"checkpoint": args.checkpoint, **api.stability(
        model, bundle.split(args.split), eps=args.eps, layers=comma_list(args.layer), deltas=deltas, draws=args.draws,
        relative=not args.absolute, max_samples=args.max_samples, seed=args.seed, calibration=calibration,
        attack=args.attack)}
    if out is not None:
        figure = write_bytes(out / names.STABILITY_FIGURE, api.stability_figure(result))
        result["outputs"] = {"json": str(STABILITY.path(out)), "figure": str(figure)}
        STABILITY.write(out, result)
    return result
