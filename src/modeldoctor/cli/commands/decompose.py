"""Find each class's influential final-layer features and decompose the final layer (Badola et al., Algorithm 1).

k₁ / k₂ not given are chosen on the validation split over a grid (r_A and accuracy vs k are in decompose.json).
Reports test accuracy of the full (A_f) and decomposed (A_d) final layer, r_A = A_d / A_f, the agreement of their
predictions, the accuracy after retraining the decomposed network (the paper's protocol: every parameter, one
epoch; --retrain layer: only the decomposed layer; epoch chosen on val; --control: the full network retrained the
same way), the Gaussian-noise essentiality test (Table 8), the final-layer multiply-adds, and with --diagnosis the
overlap with Model Doctor's relevant kernels.  With --out: decompose.json, influential.json (per-class indices and
the histogram) and decomposed.pt (a normal checkpoint whose final weights are zero outside each class's features).

Example: modeldoctor decompose --checkpoint runs/base/model.pt --data mnist5k --k 5 --retrain-epochs 1 --json
"""

from __future__ import annotations

import argparse
from typing import Any

from modeldoctor import api
from modeldoctor.analyses.decompose import parse_count
from modeldoctor.cli.commands.common import add_checkpoint_args, add_out_arg, out_dir
from modeldoctor.io import names
from modeldoctor.io.checkpoints import write_decomposed
from modeldoctor.io.diagnosis_files import load_diagnosis
from modeldoctor.io.documents import DECOMPOSITION, INFLUENTIAL
from modeldoctor.io.loading import load_model_and_data


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_checkpoint_args(p)
    add_out_arg(p)
    p.add_argument("--k", default=None, help="k₂, the features kept per class (integer, or a mass fraction in (0, 1) "
                   "such as 0.9); k₁ is then chosen on val unless --k1 is given.  Default: both chosen on val")
    p.add_argument("--k1", default=None, help="top-k₁ features per training instance (default: chosen on val)")
    p.add_argument("--k2", default=None, help="same as --k (overrides it)")
    p.add_argument("--min-r-a", type=float, default=0.95,
                   help="with k₂ chosen on val: the smallest k₂ whose validation r_A reaches this")
    p.add_argument("--retrain", choices=["all", "layer"], default="all",
                   help="retrain every parameter with the decomposed layer in place (the paper) or only that layer")
    p.add_argument("--retrain-epochs", type=int, default=1, help="retraining epochs (0: none; the paper: 1 on CIFAR-10)")
    p.add_argument("--lr", type=float, default=0.01, help="SGD learning rate for the retraining (the paper gives none)")
    p.add_argument("--control", action="store_true",
                   help="also retrain the full (undecomposed) network the same way: accuracy_control, the matched control")
    p.add_argument("--noise-repeats", type=int, default=5, help="noise draws for the essentiality test")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--diagnosis", default=None, metavar="DIR",
                   help="a `modeldoctor diagnose` output of this model: compare its relevant kernels of the last "
                        "conv layer with the influential features (overlap, Jaccard)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    k2_text = args.k2 or args.k
    k1 = parse_count(args.k1) if args.k1 else None
    k2 = parse_count(k2_text) if k2_text else None
    out = out_dir(args)
    model, meta, bundle = load_model_and_data(args.checkpoint, args.data, args.trust_checkpoint)
    diagnosis = load_diagnosis(args.diagnosis, model) if args.diagnosis else None
    result = api.decompose(model, bundle, k1, k2, args.retrain_epochs, lr=args.lr, retrain=args.retrain,
                           control=args.control, min_r_a=args.min_r_a, seed=args.seed,
                           noise_repeats=args.noise_repeats, diagnosis=diagnosis)
    summary = {"checkpoint": args.checkpoint, **result.to_dict()}
    if out is not None:
        INFLUENTIAL.write(out, result.influential())
        write_decomposed(out, model, meta, args.checkpoint, result.decomposition)
        summary["outputs"] = {n: str(out / n) for n in (names.DECOMPOSE, names.INFLUENTIAL, names.DECOMPOSED)}
        DECOMPOSITION.write(out, summary)
    return summary
