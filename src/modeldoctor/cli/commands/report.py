"""Build one self-contained HTML report (and a PNG per figure) from the outputs found under a run directory.

Sections appear for what exists: the diagnosis (class × kernel heatmaps, kernels vs depth), where the model
looks (summed derivative maps, background share), the images to annotate, the treatment against its control
(per-class accuracy, before/after maps with Grad-CAM), stability, decomposition and unit deletion.

Example: modeldoctor report runs/demo --json
"""

from __future__ import annotations

import argparse
from typing import Any

from modeldoctor import api
from modeldoctor.io import names


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="directory holding outputs of modeldoctor commands (searched recursively)")
    p.add_argument("--out", dest="html", default=None, help=f"HTML file to write (default: RUN_DIR/{names.REPORT})")
    p.add_argument("--no-images", action="store_true", help="skip figures that re-run the model (overlays, thumbnails)")
    p.add_argument("--max-images", type=int, default=6, help="images per overlay row")


def run(args: argparse.Namespace) -> dict[str, Any]:
    result = api.write_report(args.run_dir, args.html, images=not args.no_images, max_images=args.max_images)
    return {"html": str(result.html), "figures": [str(p) for p in result.figures]}
