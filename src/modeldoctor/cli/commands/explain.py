"""Explain one image against a diagnosis: prediction, kernels that deviate from the class, derivative map PNG.

The image is a sample of a split (--sample ID) or an image file (--image PATH).  With an object mask
(the dataset's own, or --mask PNG: white = object) it also reports the share of Σ_k |∂ŷ/∂m_k| on the background.

Example: modeldoctor explain --checkpoint runs/base/model.pt --diagnosis runs/base/diagnosis \
    --sample mnist5k-0007 --out runs/explain
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from modeldoctor.cli.commands.common import add_checkpoint_args, out_dir
from modeldoctor.core.errors import UserError
from modeldoctor.data.masks import resize_mask
from modeldoctor.data.sources import _load_image_file
from modeldoctor.doctor.explain import explain_image, save_overlay
from modeldoctor.io.diagnosis_files import load_diagnosis
from modeldoctor.io.loading import load_model_and_data


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


def run(args: argparse.Namespace) -> dict:
    model, meta, bundle = load_model_and_data(args.checkpoint, args.data, args.trust_checkpoint)
    diagnosis = load_diagnosis(args.diagnosis, model)
    size = (meta.input_size, meta.input_size)
    mask = None
    if args.sample is not None:
        split = bundle.split(args.split)
        if args.sample not in split.index_of:
            raise UserError(f"no sample {args.sample!r} in the {args.split} split; ids look like {split.ids[0]!r}")
        i = split.index_of[args.sample]
        image, label, _ = split[i]
        raw, name, seed_index = split.raw(i), args.sample, i
        if args.sample in bundle.masks:
            mask = resize_mask(bundle.masks[args.sample], size)
    else:
        path = Path(args.image)
        if not path.is_file():
            raise UserError(f"image {path} does not exist; pass an image file")
        try:
            raw = _load_image_file(path, meta.input_size, meta.in_channels)
        except OSError as exc:
            raise UserError(f"cannot read image {path} ({exc}); pass a PNG or JPEG file") from None
        image, label, name, seed_index = bundle.normalise(raw.unsqueeze(0))[0], args.label, path.stem, 0
    if args.mask:
        mask = resize_mask(_read_mask(Path(args.mask)), size)
    ex = explain_image(model, image, diagnosis, args.layer, label, mask, args.top, seed_index)
    names = diagnosis.class_names
    out = out_dir(args, args.diagnosis)
    assert out is not None  # --out is required
    title = f"{name}: predicted {names[ex.prediction]} ({ex.confidence:.2f})" + \
        (f", true {names[ex.label]}" if ex.label is not None else "")
    png = save_overlay(out / f"explain-{_safe(name)}.png", raw, ex.derivative_map, mask, title)
    return {"sample": name, "layer": ex.layer, "prediction": names[ex.prediction], "confidence": ex.confidence,
            "runner_up": names[ex.runner_up], "runner_up_confidence": ex.runner_up_confidence,
            "label": names[ex.label] if ex.label is not None else None,
            "kernels_vs_predicted": ex.kernels_vs_predicted, "kernels_vs_true": ex.kernels_vs_true,
            "background_share": ex.background_share, "object_area": ex.object_area, "overlay": str(png)}


def _read_mask(path: Path) -> torch.Tensor:
    from PIL import Image

    if not path.is_file():
        raise UserError(f"mask {path} does not exist; pass a PNG with white object pixels")
    with Image.open(path) as im:
        return torch.from_numpy(np.asarray(im.convert("L")) > 127)


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
