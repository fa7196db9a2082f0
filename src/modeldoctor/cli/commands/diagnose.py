"""Diagnose a trained classifier: per class, how much each kernel of each chosen layer matters (Eq. 3–4).

Writes DIR/diagnosis.safetensors (ā, sums, counts, single-sample profiles, relevant-kernel masks per layer)
and DIR/diagnosis.json (model, weights hash, options, classes, Discovery-1 statistics); with --lowest K also
DIR/annotate.json, the K lowest-confidence training images per class (the ones worth an object mask).

With object masks (--masks builtin|DIR|FILE.json or --boxes FILE) also the shortcut check on the model alone:
masked objects pasted on other masked images' erased backgrounds vs the same objects on their own restored
backgrounds; per class the swap accuracy, the share of predictions that follow the background's class, the
donor confusion, background reliance (activation and Grad-CAM shares outside the object, the probability drop)
and a one-line verdict ("reads the background" / "not detectably") with its 95% interval.  It is kept in
diagnosis.json under "shortcut", and its worst classes lead annotate.json.

Example: modeldoctor diagnose --checkpoint runs/base/model.pt --layers all --out runs/base/diagnosis --lowest 10
         modeldoctor diagnose --checkpoint runs/base/model.pt --masks builtin --json
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from modeldoctor import api
from modeldoctor.cli.checks import check_out
from modeldoctor.cli.commands.common import add_checkpoint_args, comma_list
from modeldoctor.core import distributed
from modeldoctor.doctor.diagnosis import DiagnosisOptions
from modeldoctor.io import names
from modeldoctor.io.diagnosis_files import save_diagnosis
from modeldoctor.io.documents import ANNOTATION_LIST
from modeldoctor.io.loading import load_model_and_data, read_object_masks


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_checkpoint_args(p)
    p.add_argument("--layers", default=None, metavar="NAME[,NAME...]|all",
                   help="dotted layer names (`modeldoctor layers` lists them); 'all' = every conv; default: the last conv "
                        "(transformers: the deepest layer whose patches reach the logits)")
    p.add_argument("--noise-draws", type=int, default=10, metavar="J", help="noise draws per sample (default 10)")
    p.add_argument("--samples-per-class", type=int, default=100, metavar="T",
                   help="most confident correct training samples per class (default 100)")
    p.add_argument("--delta", type=float, default=0.1, help="noise range δ (default 0.1, relative to the layer's RMS)")
    p.add_argument("--delta-mode", choices=["relative", "absolute"], default="relative",
                   help="relative: δ × RMS activation of each layer over the training split (default); absolute: δ")
    p.add_argument("--output", choices=["logit", "prob"], default="logit",
                   help="ŷ = logit (default) or softmax probability")
    p.add_argument("--target", choices=["predicted", "label"], default="predicted",
                   help="explain the predicted class (default) or the ground-truth class")
    p.add_argument("--reduce", choices=["abs", "relu"], default="abs",
                   help="|∂ŷ/∂m| as in Eq. 3 (default) or max(∂ŷ/∂m, 0) as in the authors' code")
    p.add_argument("--min-confidence", type=float, default=None,
                   help="only samples at least this confident (paper: 0.90)")
    p.add_argument("--include-wrong", action="store_true", help="also use misclassified samples")
    p.add_argument("--split", choices=["train", "val", "test"], default="train")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0, help="seed of the noise draws")
    p.add_argument("--lowest", type=int, default=0, metavar="K",
                   help=f"also write {names.ANNOTATE}: the K lowest-confidence images of each class")
    p.add_argument("--out", default=None,
                   help=f"output directory (default: {names.DIAGNOSIS_DIR}/ next to the checkpoint)")
    p.add_argument("--masks", default=None,
                   help="object masks for the shortcut check: builtin (the dataset's own), DIR of PNG/labelme files, "
                        "or a COCO instances FILE.json")
    p.add_argument("--boxes", default=None, help="CSV or JSON file of boxes (id, x0, y0, x1, y1) for the shortcut check")
    p.add_argument("--shortcut-per-class", type=int, default=20, metavar="N",
                   help="masked images per class the shortcut check uses (default 20; 3 backgrounds each)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out) if args.out else Path(args.checkpoint).parent / names.DIAGNOSIS_DIR
    check_out(out, "the diagnosis directory")
    model, meta, bundle = load_model_and_data(args.checkpoint, args.data, args.trust_checkpoint)
    options = DiagnosisOptions(noise_draws=args.noise_draws, samples_per_class=args.samples_per_class,
                               delta=args.delta, delta_mode=args.delta_mode, output=args.output, target=args.target,
                               reduce=args.reduce, min_confidence=args.min_confidence,
                               require_correct=not args.include_wrong, seed=args.seed)
    layers = args.layers if args.layers in (None, "all") else comma_list(args.layers)
    masks = read_object_masks(bundle, args.masks, args.split, args.boxes) if args.masks or args.boxes else None
    result = api.diagnose_model(model, bundle, layers, options, split=args.split, lowest=args.lowest,
                                batch_size=args.batch_size, class_names=meta.class_names, model_spec=meta.model,
                                progress=True, masks=masks, shortcut_per_class=args.shortcut_per_class)
    files = {"diagnosis": str(out)}
    if distributed.is_main():  # under torchrun every rank holds the same result; rank 0 writes it
        save_diagnosis(result.diagnosis, out, result.shortcut)
        if result.annotation is not None:
            files["annotate"] = str(ANNOTATION_LIST.write(out, result.annotation))
    return {**files, **result.to_dict()}
