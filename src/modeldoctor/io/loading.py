"""Inputs read from disk: a checkpoint and the data it was trained on (normalised as the checkpoint was), the
data for a new model, object masks and single image files."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from modeldoctor.core.device import place
from modeldoctor.core.errors import UserError
from modeldoctor.data.bundle import DataBundle
from modeldoctor.data.masks import LazyMasks, load_boxes, load_coco, load_masks, resize_mask
from modeldoctor.data.sources import _load_image_file, load_data
from modeldoctor.models.checkpoint import CheckpointMeta, load_checkpoint
from modeldoctor.models.zoo import min_input_size


def data_for(meta: CheckpointMeta, spec: str | None) -> DataBundle:
    """Load the data at the checkpoint's input size, normalised with the checkpoint's own statistics."""
    bundle = load_data(spec or meta.dataset, input_size=meta.input_size)
    if bundle.num_classes != meta.num_classes or bundle.in_channels != meta.in_channels:
        raise UserError(f"data {bundle.spec} has {bundle.num_classes} classes / {bundle.in_channels} channels but the "
                        f"checkpoint expects {meta.num_classes} / {meta.in_channels}; use the data it was trained on")
    bundle.set_normalisation(meta.mean, meta.std)
    return bundle


def load_model_and_data(checkpoint: str | Path, data_spec: str | None = None,
                        trust: bool = False) -> tuple[nn.Module, CheckpointMeta, DataBundle]:
    """The model of ``checkpoint`` (read onto the CPU, then moved to the current device) and its data
    (``data_spec`` or the checkpoint's own)."""
    model, meta = load_checkpoint(checkpoint, trust=trust)
    return place(model), meta, data_for(meta, data_spec)


def data_for_model(spec: str, model: str, input_size: int | None = None) -> DataBundle:
    """The data at ``input_size``, else at its own size enlarged (never shrunk) to the model's minimum input."""
    if input_size:
        return load_data(spec, input_size=input_size)
    bundle = load_data(spec)
    need = min_input_size(model)
    return bundle if bundle.input_size >= need else load_data(spec, input_size=need)


def read_object_masks(bundle: DataBundle, source: str | None, split: str = "train",
                      boxes: str | None = None) -> Mapping[str, torch.Tensor]:
    """Object masks ``{sample id of split: bool (size, size)}`` from a box file (CSV or JSON: id, x0, y0, x1, y1),
    ``source="builtin"`` (the data's own masks), a COCO instances ``.json`` file, or a folder of PNG / labelme
    files named after the sample ids.  Files, boxes and COCO segments are read when an id is looked up
    (:class:`~modeldoctor.data.masks.LazyMasks`), never all at once.

    Returned as found: whoever uses them decides what an empty or full mask means (the treatment drops them)."""
    size, ids = bundle.input_size, bundle.split(split).ids
    if boxes:
        masks = load_boxes(boxes, ids, size)
    elif source == "builtin":
        if not bundle.masks:
            raise UserError(f"{bundle.spec} has no built-in masks; pass --masks DIR (one PNG per sample id)")
        masks = LazyMasks([sid for sid in ids if sid in bundle.masks], bundle.masks.__getitem__)
    elif source and Path(source).suffix.lower() == ".json":
        masks = load_coco(source, ids, size)
    elif source:
        masks = load_masks(source, ids, size)
    else:
        raise UserError("object masks are needed; pass --masks builtin|DIR or --boxes FILE")
    if not masks:
        raise UserError(f"no mask in {boxes or source} matches a {split} image id of {bundle.spec} (e.g. {ids[0]}); "
                        "name each mask after its sample id or image file")
    return masks


@dataclass
class Sample:
    """One image to explain: normalised for the model, raw for display, and what is known about it."""

    name: str
    image: torch.Tensor  # (C, H, W), normalised as the model's data
    raw: torch.Tensor  # (C, H, W) in [0, 1]
    label: int | None
    index: int  # split index (seeds the noise draws); 0 for an image file
    mask: torch.Tensor | None  # bool (H, W) object mask, when the data has one


def read_sample(bundle: DataBundle, split: str, sample_id: str) -> Sample:
    """Sample ``sample_id`` of ``split``, with the data's own object mask if it has one."""
    images = bundle.split(split)
    if sample_id not in images.index_of:
        raise UserError(f"no sample {sample_id!r} in the {split} split; ids look like {images.ids[0]!r}")
    i = images.index_of[sample_id]
    image, label, _ = images[i]
    size = (bundle.input_size, bundle.input_size)
    mask = resize_mask(bundle.masks[sample_id], size) if sample_id in bundle.masks else None
    return Sample(sample_id, image, images.raw(i), int(label), i, mask)


def read_image(path: str | Path, bundle: DataBundle, label: int | None = None) -> Sample:
    """An image file at the data's input size and channels, normalised as the data; named after the file."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"image {p} does not exist; pass an image file")
    try:
        raw = _load_image_file(p, bundle.input_size, bundle.in_channels)
    except OSError as exc:
        raise UserError(f"cannot read image {p} ({exc}); pass a PNG or JPEG file") from None
    return Sample(p.stem, bundle.normalise(raw.unsqueeze(0))[0], raw, label, 0, None)


def read_mask_image(path: str | Path, size: tuple[int, int]) -> torch.Tensor:
    """An object mask image (white = object, grey level > 127), resized to ``size``; bool (H, W)."""
    from PIL import Image

    p = Path(path)
    if not p.is_file():
        raise UserError(f"mask {p} does not exist; pass a PNG with white object pixels")
    with Image.open(p) as im:
        return resize_mask(torch.from_numpy(np.asarray(im.convert("L")) > 127), size)
