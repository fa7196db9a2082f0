"""Find each class's influential final-layer features and decompose the final layer (Badola et al., Algorithm 1).

Reports test accuracy of the full (A_f) and decomposed (A_d) final layer, r_A = A_d / A_f, the accuracy after
retraining only the decomposed layer (epoch chosen on val), the Gaussian-noise essentiality test (Table 8), the
final-layer multiply-adds, and with --diagnosis the overlap with Model Doctor's relevant kernels.  With --out:
decompose.json, influential.json (per-class indices and the histogram) and decomposed.pt (a normal checkpoint
whose final weights are zero outside each class's features).

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
    p.add_argument("--k", default="5", help="k₁ = k₂: features per instance and per class (integer), "
                   "or a mass fraction in (0, 1) such as 0.9")
    p.add_argument("--k1", default=None, help="top-k₁ features per training instance (overrides --k)")
    p.add_argument("--k2", default=None, help="top-k₂ histogram indices per class (overrides --k)")
    p.add_argument("--retrain-epochs", type=int, default=1, help="epochs retraining only the decomposed layer (0: none)")
    p.add_argument("--lr", type=float, default=0.01, help="SGD learning rate for the retraining")
    p.add_argument("--noise-repeats", type=int, default=5, help="noise draws for the essentiality test")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--diagnosis", default=None, metavar="DIR",
                   help="a `modeldoctor diagnose` output of this model: compare its relevant kernels of the last "
                        "conv layer with the influential features (overlap, Jaccard)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    k1 = parse_count(args.k1 or args.k)
    k2 = parse_count(args.k2 or args.k)
    out = out_dir(args)
    model, meta, bundle = load_model_and_data(args.checkpoint, args.data, args.trust_checkpoint)
    diagnosis = load_diagnosis(args.diagnosis, model) if args.diagnosis else None
    result = api.decompose(model, bundle, k1, k2, args.retrain_epochs, lr=args.lr, seed=args.seed,
                           noise_repeats=args.noise_repeats, diagnosis=diagnosis)
    summary = {"checkpoint": args.checkpoint, **result.to_dict()}
    if out is not None:
        INFLUENTIAL.write(out, result.influential())
        write_decomposed(out, model, meta, args.checkpoint, result.decomposition)
        summary["outputs"] = {n: str(out / n) for n in (names.DECOMPOSE, names.INFLUENTIAL, names.DECOMPOSED)}
        DECOMPOSITION.write(out, summary)
    return summary
