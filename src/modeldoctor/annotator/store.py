"""What the annotation page saves: one record per image, written after every image, in the files ``treat`` reads.

``OUT/annotations.json`` — every image's boxes, painted layer and "no object" flag (what the page reloads);
``OUT/boxes.json`` — a list of ``{"id", "x0", "y0", "x1", "y1"}`` rows in input pixels (``treat --boxes``);
``OUT/masks/ID.png`` — the union of the image's boxes and painted pixels, white = object (``treat --masks``).
Each write is atomic, so a closed browser tab or a killed server never leaves half a file.
"""

from __future__ import annotations

import base64
import io
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modeldoctor.core.errors import UserError
from modeldoctor.core.files import read_json, write_bytes, write_json
from modeldoctor.io import names


@dataclass
class Record:
    """One image's annotation; boxes are ``[x0, y0, x1, y1]`` in input pixels, ``x1``/``y1`` exclusive."""

    boxes: list[list[float]] = field(default_factory=list)
    paint: str | None = None  # the painted layer as a PNG data URL (what the page restores), None if unpainted
    no_object: bool = False


def _check_box(box: Any, size: int) -> list[float]:
    if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
        raise UserError(f"a box must be [x0, y0, x1, y1], got {box!r}")
    x0, y0, x1, y1 = (float(max(0, min(size, v))) for v in box)
    if not (x0 < x1 and y0 < y1):
        raise UserError(f"box {box!r} is empty inside the {size}x{size} image")
    return [x0, y0, x1, y1]


def _png_mask(data_url: str, size: int) -> np.ndarray:
    """A painted layer sent by the page (``data:image/png;base64,...``; any opaque pixel = object)."""
    from PIL import Image

    try:
        raw = base64.b64decode(data_url.split(",", 1)[1], validate=True)
        with Image.open(io.BytesIO(raw)) as im:
            alpha = np.asarray(im.convert("RGBA").resize((size, size), Image.Resampling.BOX))[..., 3]
    except (IndexError, ValueError, OSError) as exc:
        raise UserError(f"the painted mask is not a PNG data URL ({type(exc).__name__})") from None
    return alpha >= 128


class AnnotationStore:
    """The annotation files of one output folder for images of ``size`` pixels; resumes from what is there."""

    def __init__(self, out: str | Path, size: int) -> None:
        self.out, self.size = Path(out), size
        path = self.out / names.ANNOTATIONS
        known = read_json(path) if path.is_file() else {}
        try:
            self.records = {sid: Record(**rec) for sid, rec in known.get("images", {}).items()}
        except TypeError as exc:
            raise UserError(f"{path} is not an annotation file written by `modeldoctor annotate` ({exc}); "
                            "move it away or choose another --out") from None

    def mask_path(self, sample_id: str) -> Path:
        return self.out / names.MASKS_DIR / f"{sample_id}.png"

    def save(self, sample_id: str, boxes: list[Any], painted: str | None, no_object: bool) -> Record:
        """Record one image (replacing what it had) and rewrite the three outputs."""
        from PIL import Image

        record = Record([] if no_object else [_check_box(b, self.size) for b in boxes], None, no_object)
        mask = np.zeros((self.size, self.size), dtype=bool)
        if painted and not no_object:
            layer = _png_mask(painted, self.size)
            if layer.any():
                mask |= layer
                record.paint = painted
        for x0, y0, x1, y1 in record.boxes:
            mask[int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))] = True
        png = self.mask_path(sample_id)
        if mask.any():
            buf = io.BytesIO()
            Image.fromarray(mask.astype(np.uint8) * 255).save(buf, format="PNG")
            write_bytes(png, buf.getvalue())
        elif png.is_file():
            png.unlink()  # cleared or "no object": no mask, so treat does not use the image
        self.records[sample_id] = record
        self._write_lists()
        return record

    def _write_lists(self) -> None:
        rows = [{"id": sid, "x0": b[0], "y0": b[1], "x1": b[2], "y1": b[3]}
                for sid, rec in self.records.items() for b in rec.boxes]
        write_json(self.out / names.BOXES, rows)
        write_json(self.out / names.ANNOTATIONS, {"size": self.size,
                                                  "images": {sid: asdict(r) for sid, r in self.records.items()}})
