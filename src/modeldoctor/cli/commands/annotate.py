"""Draw object masks in the browser: a local page (127.0.0.1) shows each listed image large; drag boxes (several
per image) or paint a coarse mask, with keyboard next/previous, undo and "no object".  Every image is saved at
once to OUT/boxes.json (treat --boxes) and OUT/masks/ID.png (treat --masks); OUT/annotations.json resumes a session.

DIR is a folder with annotate.json, or one whose diagnosis/ subfolder has it (the demo's OUT).  The images are
shown from the data of the checkpoint the diagnosis was made for: the model.pt beside DIR or one folder down
from DIR's parent (the demo's OUT/baseline/model.pt) whose weights hash is the one diagnosis.json records.

Example: modeldoctor annotate runs/base/diagnosis            (the images of its annotate.json; data from ../model.pt)
         modeldoctor annotate runs/demo                      (the demo's folders: diagnosis/ and baseline/model.pt)
         modeldoctor annotate --ids mnist5k-0007,mnist5k-0042 --checkpoint runs/base/model.pt --out runs/masks
"""

from __future__ import annotations

import argparse
import logging
import sys
import webbrowser
from pathlib import Path
from typing import Any

from modeldoctor.annotator.server import AnnotationServer, Item
from modeldoctor.annotator.store import AnnotationStore
from modeldoctor.cli.commands.common import comma_list, out_dir
from modeldoctor.core.errors import UserError
from modeldoctor.core.files import read_json
from modeldoctor.data.bundle import DataBundle
from modeldoctor.data.sources import load_data
from modeldoctor.io import names
from modeldoctor.io.documents import ANNOTATION_LIST
from modeldoctor.io.loading import load_model_and_data
from modeldoctor.models.checkpoint import load_checkpoint

logger = logging.getLogger("modeldoctor.annotate")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("diagnosis", nargs="?", default=None, help=f"a folder with {names.ANNOTATE} (diagnose --lowest K)")
    p.add_argument("--ids", default=None, metavar="ID[,ID...]", help="annotate these sample ids instead")
    p.add_argument("--checkpoint", default=None, help="model.pt whose data to show (default: DIR/../model.pt)")
    p.add_argument("--trust-checkpoint", action="store_true")
    p.add_argument("--data", default=None, help="dataset spec (default: the checkpoint's)")
    p.add_argument("--input-size", type=int, default=None, help="with --data and no checkpoint: image size")
    p.add_argument("--split", choices=["train", "val", "test"], default="train")
    p.add_argument("--out", default=None, help=f"output folder (default: DIR/{names.ANNOTATION_DIR})")
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free one)")
    p.add_argument("--no-browser", action="store_true", help="only print the address; open it yourself")


def listing_folder(directory: str | Path) -> Path:
    """The folder holding annotate.json: ``directory`` itself, else its ``diagnosis/`` subfolder (the demo's OUT)."""
    d = Path(directory)
    for folder in (d, d / names.DIAGNOSIS_DIR):
        if (folder / names.ANNOTATE).is_file():
            return folder
    return d  # the reader names what is missing


def find_checkpoint(folder: str | Path) -> Path | None:
    """The checkpoint a diagnosis folder was made for: ``../model.pt``, ``../baseline/model.pt`` or any
    ``../*/model.pt``, the first whose weights hash equals diagnosis.json's (without diagnosis.json: the first found)."""
    parent = Path(folder).parent
    candidates = [parent / names.MODEL, parent / names.BASELINE_DIR / names.MODEL, *sorted(parent.glob(f"*/{names.MODEL}"))]
    found = [p for p in dict.fromkeys(candidates) if p.is_file()]
    meta = Path(folder) / names.DIAGNOSIS_JSON
    wanted = read_json(meta).get("weights_sha256") if meta.is_file() else None
    if not wanted:
        return found[0] if found else None
    for path in found:
        try:
            if load_checkpoint(path)[1].weights_sha256 == wanted:
                return path
        except UserError:
            continue
    return None


def _bundle(args: argparse.Namespace) -> DataBundle:
    checkpoint = args.checkpoint
    if checkpoint is None and args.diagnosis:
        checkpoint = find_checkpoint(args.diagnosis)
    if checkpoint is not None:
        return load_model_and_data(checkpoint, args.data, args.trust_checkpoint)[2]
    if args.data:
        return load_data(args.data, input_size=args.input_size)
    raise UserError("say which images these are: pass --checkpoint model.pt or --data SPEC (no model.pt for this "
                    "diagnosis was found beside it)")


def _items(args: argparse.Namespace, bundle: DataBundle) -> list[Item]:
    split = bundle.split(args.split)
    if args.ids:
        ids = comma_list(args.ids) or []
        unknown = [sid for sid in ids if sid not in split.index_of]
        if unknown:
            raise UserError(f"no {args.split} image {unknown[0]!r}; ids look like {split.ids[0]!r}")
        return [Item(sid, bundle.class_names[int(split.labels[split.index_of[sid]])]) for sid in ids]
    if not args.diagnosis:
        raise UserError(f"give a diagnosis folder with {names.ANNOTATE} or --ids ID,ID,...")
    listed = ANNOTATION_LIST.read(args.diagnosis)["per_class"]
    items = [Item(row["id"], label, row.get("confidence")) for label, rows in listed.items() for row in rows]
    missing = [item.id for item in items if item.id not in split.index_of]
    if missing:
        raise UserError(f"{names.ANNOTATE} names {missing[0]!r}, which is not a {args.split} image of {bundle.spec}; "
                        "pass the --data and --split it was made from")
    return items


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.diagnosis:
        args.diagnosis = str(listing_folder(args.diagnosis))
    out = out_dir(args, Path(args.diagnosis) / names.ANNOTATION_DIR if args.diagnosis else None)
    if out is None:
        raise UserError("with --ids, pass --out DIR for the masks")
    bundle = _bundle(args)
    items = _items(args, bundle)
    split = bundle.split(args.split)
    store = AnnotationStore(out, bundle.input_size)
    with AnnotationServer(items, lambda i: split.raw(split.index_of[items[i].id]), store, args.port) as server:
        print(f"modeldoctor annotate: {len(items)} images at {server.url} (finish on the page or Ctrl-C)",
              file=sys.stderr)
        if not args.no_browser:
            webbrowser.open(server.url)
        try:
            server.wait()
        except KeyboardInterrupt:
            logger.info("stopped; every image annotated so far is saved")
    records = store.records
    return {"out": str(out), "boxes": str(out / names.BOXES), "masks": str(out / names.MASKS_DIR),
            "images": len(items), "annotated": sum(1 for r in records.values() if r.boxes or r.paint),
            "no_object": sum(1 for r in records.values() if r.no_object)}
