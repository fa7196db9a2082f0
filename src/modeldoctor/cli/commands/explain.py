"""Explain one image against a diagnosis: prediction, kernels that deviate from the class, derivative map PNG.

The image is a sample of a split (--sample ID) or an image file (--image PATH).  With an object mask
(the dataset's own, or --mask PNG: white = object) it also reports the share of Σ_k |∂ŷ/∂m_k| on the background.

Example: modeldoctor explain --checkpoint runs/base/model.pt --diagnosis runs/base/diagnosis \
    --sample mnist5k-0007 --out runs/explain
"""

from __future__ import annotations

import argparse
from typing import Any

from modeldoctor import api
from modeldoctor.cli.commands.common import add_checkpoint_args, out_dir
from modeldoctor.io import names
from modeldoctor.io.diagnosis_files import load_diagnosis
from modeldoctor.io.loading import load_model_and_data, read_image, read_mask_image, read_sample


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_checkpoint_args(p)
    p.add_argument("--diagnosis", required=True, help="directory written by `modeldoctor diagnose`")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--sample", default=None, metavar="ID", help="a sample id of --split")
    source.add_argument("--image", default=None, metavar="PATH", help="an image file")
    p.add_argument("--split", choices=["train", "val", "test"], default="train")
    p.add_argument("--label", type=int, default=None, help="true class index for --image (default: unknown)")
    p.add_argument("--mask", default=None, metavar="PNG", help="object mask image (white = object)")
    p.add_argument("--layer", default=None, help="a diagnosed layer (default: the deepest one)")
    p.add_argument("--top", type=int, default=5, help="how many deviating kernels to list")
    p.add_argument("--out", default=None, help="directory for the overlay PNG (default: the diagnosis directory)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    model, meta, bundle = load_model_and_data(args.checkpoint, args.data, args.trust_checkpoint)
    diagnosis = load_diagnosis(args.diagnosis, model)
    sample = read_sample(bundle, args.split, args.sample) if args.sample is not None else \
        read_image(args.image, bundle, args.label)
    mask = read_mask_image(args.mask, (bundle.input_size, bundle.input_size)) if args.mask else sample.mask
    result = api.explain(model, diagnosis, sample.image, sample.name, args.layer, sample.label, mask, args.top,
                         sample.index)
    out = out_dir(args, args.diagnosis)
    assert out is not None  # defaults to the diagnosis directory
    png = api.save_overlay(out / names.explain_overlay(sample.name), sample.raw, result.explanation.derivative_map,
                           mask, result.title())
    return {**result.to_dict(), "overlay": str(png)}
