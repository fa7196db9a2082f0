"""Object masks for the space-wise constraint: PNG files, boxes, labelme polygons, COCO instances (polygons /
RLE); expansion and resizing.

A mask is a boolean (H, W) tensor at the model's input size, True on the object.  The background mask of
Eq. 6 is ``I_bg = 1 − expand(mask, E)`` resized to the feature map: the object is first grown by ``E``
input pixels (supplementary Table 4: E = 2 at 28 px, 3 at 32 px, 10 at 96 px, 30 at 224 px) so that the
object's boundary features are never penalised, then a feature cell counts as background only if its
whole footprint in the input is background.
"""

from __future__ import annotations

import csv
import json
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from modeldoctor.core.errors import UserError

EXPANSION_TABLE = ((28, 2), (32, 3), (96, 10), (224, 30))  # supplementary Table 4: input px → expansion px


def default_expansion(input_size: int) -> int:
    """Expansion E for an input size: Table 4 interpolated linearly (and scaled proportionally beyond 224 px)."""
    sizes, pixels = zip(*EXPANSION_TABLE)
    if input_size > sizes[-1]:
        return round(input_size * pixels[-1] / sizes[-1])
    return int(round(float(np.interp(input_size, sizes, pixels))))


def expand_mask(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """Grow the object by ``pixels`` in every direction (square dilation); (..., H, W) bool → same shape."""
    if pixels <= 0:
        return mask.bool()
    flat = mask.float().reshape(-1, 1, *mask.shape[-2:])
    grown = F.max_pool2d(flat, kernel_size=2 * pixels + 1, stride=1, padding=pixels)
    return grown.reshape(mask.shape) > 0.5


def background_mask(mask: torch.Tensor, feature_hw: tuple[int, int], expansion: int) -> torch.Tensor:
    """``I_bg`` of Eq. 6: (B, H, W) object masks → (B, 1, h, w) float, 1 where a feature cell sees only background."""
    obj = expand_mask(mask, expansion).float().unsqueeze(1)
    h, w = feature_hw
    if h >= obj.shape[-2] and w >= obj.shape[-1]:
        covered = F.interpolate(obj, size=(h, w), mode="nearest")
    else:
        covered = F.adaptive_max_pool2d(obj, (h, w))
    return 1.0 - covered


def _resize(mask: np.ndarray, size: int, source: str) -> torch.Tensor:
    h, w = mask.shape
    if abs(h / w - 1.0) > 0.02 and (h, w) != (size, size):
        raise UserError(f"mask {source} is {w}x{h} but images are square ({size}x{size}); "
                        "give masks with the images' aspect ratio")
    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    if (h, w) != (size, size):
        t = F.interpolate(t, size=(size, size), mode="nearest")
    return t[0, 0] > 0.5


def _candidates(directory: Path, sample_id: str, suffix: str) -> list[Path]:
    p = Path(sample_id)
    return [directory / (sample_id + suffix), directory / p.with_suffix(suffix), directory / (p.stem + suffix)]


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("L")) > 0


def _read_labelme(path: Path) -> np.ndarray:
    """Rasterise the polygons and rectangles of one labelme JSON file (any label counts as object)."""
    from PIL import Image, ImageDraw

    try:
        doc = json.loads(path.read_text("utf-8"))
        h, w = int(doc["imageHeight"]), int(doc["imageWidth"])
        shapes = doc.get("shapes", [])
    except (KeyError, ValueError, TypeError) as exc:
        raise UserError(f"{path} is not a labelme JSON file ({type(exc).__name__}); "
                        "it needs imageHeight, imageWidth and shapes") from None
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    for shape in shapes:
        pts = [tuple(map(float, pt)) for pt in shape.get("points", [])]
        if shape.get("shape_type", "polygon") == "rectangle" and len(pts) == 2:
            (x0, y0), (x1, y1) = pts
            draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], fill=1)
        elif len(pts) >= 3:
            draw.polygon(pts, fill=1)
    return np.asarray(canvas) > 0


def load_masks(directory: str | Path, ids: Iterable[str], size: int) -> dict[str, torch.Tensor]:
    """Masks for the ids that have one in ``directory``: ``ID.png`` (or the image file's name with .png;
    foreground = non-zero) or a labelme ``.json`` with polygons.  Returns {id: bool (size, size)}."""
    root = Path(directory)
    if not root.is_dir():
        raise UserError(f"mask directory {root} does not exist; pass --masks DIR with one PNG per sample, or builtin")
    found: dict[str, torch.Tensor] = {}
    for sid in ids:
        for suffix, reader in ((".png", _read_png), (".json", _read_labelme)):
            hit = next((p for p in _candidates(root, sid, suffix) if p.is_file()), None)
            if hit is not None:
                found[sid] = _resize(reader(hit), size, str(hit))
                break
    return found


def _coco_segment(segmentation: object, h: int, w: int, source: str) -> np.ndarray:
    """One COCO ``segmentation``: polygons (a list of flat x, y lists) or run-length encoding (``{"counts",
    "size"}``, compressed or not; decoded by pycocotools)."""
    if isinstance(segmentation, list):
        from PIL import Image, ImageDraw

        canvas = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(canvas)
        for flat in segmentation:
            if len(flat) >= 6:
                draw.polygon([(float(flat[i]), float(flat[i + 1])) for i in range(0, len(flat) - 1, 2)], fill=1)
        return np.asarray(canvas) > 0
    if isinstance(segmentation, dict) and "counts" in segmentation:
        try:
            from pycocotools import mask as coco_mask
        except ImportError:
            raise UserError(f"{source} has RLE masks; run `pip install 'modeldoctor[coco]'` (pycocotools) to read "
                            "them") from None
        rle = segmentation
        if isinstance(rle["counts"], list):  # uncompressed RLE → the compressed form pycocotools decodes
            rle = coco_mask.frPyObjects(rle, *rle["size"])
        return coco_mask.decode(rle).astype(bool)
    raise UserError(f"{source} has a segmentation that is neither polygons nor RLE; export it as COCO instances")


def load_coco(path: str | Path, ids: Iterable[str], size: int) -> dict[str, torch.Tensor]:
    """Masks from a COCO instances file: every annotation of an image (any category) is object.  Images are matched
    to sample ids by ``file_name`` (the id, the id's file name, or its stem), as PNG masks are."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text("utf-8"))
        images = {int(im["id"]): (str(im["file_name"]), int(im["height"]), int(im["width"])) for im in doc["images"]}
        annotations = [(int(a["image_id"]), a["segmentation"]) for a in doc["annotations"] if "segmentation" in a]
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise UserError(f"{p} is not a COCO instances file ({type(exc).__name__}); it needs images (id, file_name, "
                        "height, width) and annotations (image_id, segmentation)") from None
    by_name: dict[str, int] = {}
    for image_id, (file_name, _, _) in images.items():
        for key in (file_name, Path(file_name).name, Path(file_name).stem):
            by_name.setdefault(key, image_id)
    wanted = {sid: by_name.get(sid, by_name.get(Path(sid).name, by_name.get(Path(sid).stem))) for sid in ids}
    union: dict[int, np.ndarray] = {}
    for image_id, segmentation in annotations:
        if image_id in images and image_id in wanted.values():
            _, h, w = images[image_id]
            segment = _coco_segment(segmentation, h, w, str(p))
            union[image_id] = union[image_id] | segment if image_id in union else segment
    return {sid: _resize(union[i], size, f"{p} image {i}") for sid, i in wanted.items() if i in union}


def load_boxes(path: str | Path, ids: Iterable[str], size: int) -> dict[str, torch.Tensor]:
    """Box annotations (CSV with header id,x0,y0,x1,y1, or a JSON list of such objects) in input pixels."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"box file {p} does not exist; pass --boxes FILE (CSV or JSON: id, x0, y0, x1, y1)")
    try:
        rows = json.loads(p.read_text("utf-8")) if p.suffix.lower() == ".json" else list(csv.DictReader(p.open()))
        boxes = [(str(r["id"]), tuple(float(r[k]) for k in ("x0", "y0", "x1", "y1"))) for r in rows]
    except (KeyError, ValueError, TypeError) as exc:
        raise UserError(f"{p} is not a box file ({type(exc).__name__}: {exc}); "
                        "give id,x0,y0,x1,y1 per row in input pixels") from None
    wanted = set(ids)
    found: dict[str, torch.Tensor] = {}
    for sid, (x0, y0, x1, y1) in boxes:
        if sid not in wanted:
            continue
        if not (0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size):
            raise UserError(f"box for {sid} ({x0}, {y0}, {x1}, {y1}) is empty or outside the {size}x{size} image; "
                            "give 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size")
        m = found.setdefault(sid, torch.zeros(size, size, dtype=torch.bool))
        m[int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))] = True
    return found


def check_masks(masks: dict[str, torch.Tensor], size: int) -> dict[str, torch.Tensor]:
    """Refuse wrong sizes; drop (with one warning) empty masks and masks covering the whole image.

    An empty mask would mark the entire image as background, one covering everything penalises nothing.
    """
    kept, empty, full = {}, [], []
    for sid, m in masks.items():
        if tuple(m.shape) != (size, size):
            raise UserError(f"mask for {sid} is {tuple(m.shape)}, images are ({size}, {size}); "
                            "resize the masks or pass them through load_masks")
        if not m.any():
            empty.append(sid)
        elif m.all():
            full.append(sid)
        else:
            kept[sid] = m.bool()
    for what, bad in (("empty", empty), ("covering the whole image", full)):
        if bad:
            warnings.warn(f"ignoring {len(bad)} mask(s) {what} (e.g. {bad[0]})", UserWarning, stacklevel=2)
    if masks and not kept:
        raise UserError("no usable mask: every mask is empty or covers the whole image; foreground must be non-zero")
    return kept


def stack_masks(masks: dict[str, torch.Tensor], ids: Sequence[str], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, size, size) masks for ``ids`` and an (N,) flag telling which ids have one (others: all False)."""
    has = torch.tensor([sid in masks for sid in ids], dtype=torch.bool)
    out = torch.zeros(len(ids), size, size, dtype=torch.bool)
    for i, sid in enumerate(ids):
        if sid in masks:
            out[i] = masks[sid]
    return out, has


def resize_mask(mask: torch.Tensor | np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """A 2-D object/concept mask as a bool tensor of ``size`` (nearest-neighbour when it differs)."""
    m = torch.as_tensor(np.asarray(mask)).bool()
    if m.dim() != 2:
        raise UserError(f"an object mask must be 2-D (height, width), got shape {tuple(m.shape)}")
    if tuple(m.shape) != size:
        m = F.interpolate(m[None, None].float(), size=size, mode="nearest")[0, 0].bool()
    return m


def receptive_background(mask: torch.Tensor, feature_hw: tuple[int, int], expansion: int, field: int,
                         threshold: float = 0.5) -> torch.Tensor:
    """``I_bg`` that respects the receptive field: (B, H, W) object masks → (B, 1, h, w) float.

    A feature cell counts as background where at least ``threshold`` of the input pixels in its receptive
    field (side ``field``, centred on the cell) are background; :func:`background_mask` instead calls a cell
    background only where the object does not touch the cell's own footprint, which at deep layers says
    nothing about what the cell sees.
    """
    background = (~expand_mask(mask, expansion)).float().unsqueeze(1)
    side = max(1, min(field, 2 * min(background.shape[-2:]) - 1)) | 1  # odd, so the window is centred
    share = F.avg_pool2d(background, side, stride=1, padding=side // 2, count_include_pad=False)
    share = F.interpolate(share, size=feature_hw, mode="bilinear", align_corners=False)
    return (share >= threshold).float()
