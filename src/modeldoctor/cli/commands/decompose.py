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
import copy
import dataclasses
import sys

from modeldoctor.analyses.decompose import (
    compare_with_diagnosis,
    decompose_model,
    final_linear,
    parse_count,
    swapped_module,
)
from modeldoctor.cli.commands.common import add_checkpoint_args, add_out_arg, out_dir
from modeldoctor.core.files import write_json
from modeldoctor.core.layers import default_layer
from modeldoctor.io import names
from modeldoctor.io.diagnosis_files import load_diagnosis
from modeldoctor.io.loading import load_model_and_data
from modeldoctor.models.checkpoint import save_checkpoint


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


def run(args: argparse.Namespace) -> dict:
    k1 = parse_count(args.k1 or args.k)
    k2 = parse_count(args.k2 or args.k)
    out = out_dir(args)
    model, meta, bundle = load_model_and_data(args.checkpoint, args.data, args.trust_checkpoint)
    result = decompose_model(model, bundle, k1, k2, args.retrain_epochs, lr=args.lr, seed=args.seed,
                             noise_repeats=args.noise_repeats)
    summary = {"checkpoint": args.checkpoint, **result.summary}
    if args.diagnosis:
        diagnosis = load_diagnosis(args.diagnosis, model)
        summary["diagnosis_overlap"] = compare_with_diagnosis(result.mask, diagnosis, default_layer(model))
    print(f"decompose: A_f {summary['accuracy_full']:.4f}  A_d {summary['accuracy_decomposed']:.4f}  "
          f"r_A {summary['r_A']:.4f}  retrained {summary['accuracy_retrained']}", file=sys.stderr)
    if out is not None:
        write_json(out / names.INFLUENTIAL, {"layer": summary["layer"], "k1": k1, "k2": k2,
                                              "classes": bundle.class_names, "influential": summary["influential"],
                                              "histogram": result.histogram.tolist()})
        name, _ = final_linear(model)
        with swapped_module(model, name, result.layer.to_linear()):
            new_meta = dataclasses.replace(copy.deepcopy(meta), parent=args.checkpoint,
                                           metrics={"test": {"accuracy": summary["accuracy_retrained"]
                                                             or summary["accuracy_decomposed"]}})
            save_checkpoint(out / names.DECOMPOSED, model, new_meta, protect=(args.checkpoint,))
        summary["outputs"] = {n: str(out / n) for n in (names.DECOMPOSE, names.INFLUENTIAL, names.DECOMPOSED)}
        write_json(out / names.DECOMPOSE, summary)
    return summary
