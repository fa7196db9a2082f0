"""Object masks for the space-wise constraint: PNG files, boxes, labelme polygons, COCO instances (polygons /
RLE); expansion and resizing.

A mask is a boolean (H, W) tensor at the model's input size, True on the object.  The readers return a
:class:`LazyMasks` mapping: which ids have a mask is known up front, each mask is read (or rasterised) when it is
looked up, so a large annotated set is never held in memory at once.  The background mask of
Eq. 6 is ``I_bg = 1 − expand(mask, E)`` resized to the feature map: the object is first grown by ``E``
input pixels (supplementary Table 4: E = 2 at 28 px, 3 at 32 px, 10 at 96 px, 30 at 224 px) so that the
object's boundary features are never penalised, then a feature cell counts as background only if its
whole footprint in the input is background.
"""

from __future__ import annotations

import csv
import json
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from modeldoctor.core.errors import UserError

EXPANSION_TABLE = ((28, 2), (32, 3), (96, 10), (224, 30))  # supplementary Table 4: input px → expansion px


class LazyMasks(Mapping[str, torch.Tensor]):
    """``{sample id: bool (size, size) mask}`` whose keys are known and whose values are read on each lookup."""

    def __init__(self, ids: Iterable[str], read: Callable[[str], torch.Tensor]) -> None:
        self._ids = list(dict.fromkeys(ids))
        self._known = set(self._ids)
        self._read = read

    def __getitem__(self, sid: str) -> torch.Tensor:
        if sid not in self._known:
            raise KeyError(sid)
        return self._read(sid)

    def __contains__(self, sid: object) -> bool:
        return sid in self._known

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def restricted(self, ids: Iterable[str]) -> LazyMasks:
        """The same reader over only those of ``ids`` that have a mask."""
        return LazyMasks([sid for sid in ids if sid in self._known], self._read)


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


def _check_shape(h: int, w: int, size: int, source: str) -> None:
    if abs(h / w - 1.0) > 0.02 and (h, w) != (size, size):
        raise UserError(f"mask {source} is {w}x{h} but images are square ({size}x{size}); "
                        "give masks with the images' aspect ratio")


def _resize(mask: np.ndarray, size: int, source: str) -> torch.Tensor:
    h, w = mask.shape
    _check_shape(h, w, size, source)
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


def _png_shape(path: Path) -> tuple[int, int]:
    """(height, width) from the file's header, without decoding the pixels."""
    from PIL import Image

    with Image.open(path) as im:
        return im.height, im.width


def _labelme_shape(path: Path) -> tuple[int, int]:
    doc = _labelme_document(path)
    return int(doc["imageHeight"]), int(doc["imageWidth"])


def _labelme_document(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text("utf-8"))
        int(doc["imageHeight"]), int(doc["imageWidth"])
        return doc
    except (KeyError, ValueError, TypeError) as exc:
        raise UserError(f"{path} is not a labelme JSON file ({type(exc).__name__}); "
                        "it needs imageHeight, imageWidth and shapes") from None


def _read_labelme(path: Path) -> np.ndarray:
    """Rasterise the polygons and rectangles of one labelme JSON file (any label counts as object)."""
    from PIL import Image, ImageDraw

    doc = _labelme_document(path)
    h, w = int(doc["imageHeight"]), int(doc["imageWidth"])
    shapes = doc.get("shapes", [])
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


def load_masks(directory: str | Path, ids: Iterable[str], size: int) -> LazyMasks:
    """Masks for the ids that have one in ``directory``: ``ID.png`` (or the image file's name with .png;
    foreground = non-zero) or a labelme ``.json`` with polygons.  Returns {id: bool (size, size)}; each file's
    shape is checked now (PNG header, labelme document), its pixels read when its id is looked up."""
    root = Path(directory)
    if not root.is_dir():
        raise UserError(f"mask directory {root} does not exist; pass --masks DIR with one PNG per sample, or builtin")
    files: dict[str, tuple[Path, Callable[[Path], np.ndarray]]] = {}
    for sid in ids:
        for suffix, reader, shape in ((".png", _read_png, _png_shape), (".json", _read_labelme, _labelme_shape)):
            hit = next((p for p in _candidates(root, sid, suffix) if p.is_file()), None)
            if hit is not None:
                _check_shape(*shape(hit), size, str(hit))
                files[sid] = (hit, reader)
                break

    def read(sid: str) -> torch.Tensor:
        path, reader = files[sid]
        return _resize(reader(path), size, str(path))

    return LazyMasks(files, read)


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


def load_coco(path: str | Path, ids: Iterable[str], size: int) -> LazyMasks:
    """Masks from a COCO instances file: every annotation of an image (any category) is object.  Images are matched
    to sample ids by ``file_name`` (the id, the id's file name, or its stem), as PNG masks are; an image's
    segments are rasterised when its id is looked up."""
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
    segments: dict[int, list[object]] = {}
    for image_id, segmentation in annotations:
        if image_id in images:
            segments.setdefault(image_id, []).append(segmentation)

    def read(sid: str) -> torch.Tensor:
        image_id = wanted[sid]
        assert image_id is not None
        _, h, w = images[image_id]
        union = np.zeros((h, w), dtype=bool)
        for segmentation in segments[image_id]:
            union |= _coco_segment(segmentation, h, w, str(p))
        return _resize(union, size, f"{p} image {image_id}")

    return LazyMasks([sid for sid, i in wanted.items() if i in segments], read)


def load_boxes(path: str | Path, ids: Iterable[str], size: int) -> LazyMasks:
    """Box annotations (CSV with header id,x0,y0,x1,y1, or a JSON list of such objects) in input pixels; an id's
    boxes are rasterised when it is looked up."""
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
    found: dict[str, list[tuple[float, float, float, float]]] = {}
    for sid, (x0, y0, x1, y1) in boxes:
        if sid not in wanted:
            continue
        if not (0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size):
            raise UserError(f"box for {sid} ({x0}, {y0}, {x1}, {y1}) is empty or outside the {size}x{size} image; "
                            "give 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size")
        found.setdefault(sid, []).append((x0, y0, x1, y1))

    def read(sid: str) -> torch.Tensor:
        m = torch.zeros(size, size, dtype=torch.bool)
        for x0, y0, x1, y1 in found[sid]:
            m[int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))] = True
        return m

    return LazyMasks(found, read)


def check_masks(masks: Mapping[str, torch.Tensor], size: int) -> Mapping[str, torch.Tensor]:
    """Refuse wrong sizes; drop (with one warning) empty masks and masks covering the whole image.

    An empty mask would mark the entire image as background, one covering everything penalises nothing.
    A :class:`LazyMasks` is read one mask at a time and comes back lazy (restricted to the usable ids).
    """
    kept: list[str] = []
    empty: list[str] = []
    full: list[str] = []
    for sid, m in masks.items():
        if tuple(m.shape) != (size, size):
            raise UserError(f"mask for {sid} is {tuple(m.shape)}, images are ({size}, {size}); "
                            "resize the masks or pass them through load_masks")
        if not m.any():
            empty.append(sid)
        elif m.all():
            full.append(sid)
        else:
            kept.append(sid)
    for what, bad in (("empty", empty), ("covering the whole image", full)):
        if bad:
            warnings.warn(f"ignoring {len(bad)} mask(s) {what} (e.g. {bad[0]})", UserWarning, stacklevel=2)
    if masks and not kept:
        raise UserError("no usable mask: every mask is empty or covers the whole image; foreground must be non-zero")
    return masks.restricted(kept) if isinstance(masks, LazyMasks) else {sid: masks[sid].bool() for sid in kept}


def stack_masks(masks: Mapping[str, torch.Tensor], ids: Sequence[str], size: int) -> tuple[torch.Tensor, torch.Tensor]:
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
