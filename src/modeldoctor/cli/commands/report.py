"""Build one self-contained HTML report (and a PNG per figure) from the outputs found under a run directory.

Sections appear for what exists: the diagnosis (class × kernel heatmaps, kernels vs depth), where the model
looks (summed derivative maps, background share), the images to annotate, the treatment against its control
(per-class accuracy, before/after maps with Grad-CAM), stability, decomposition and unit deletion.

Example: modeldoctor report runs/demo --json
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from modeldoctor import api
from modeldoctor.cli.checks import check_out
from modeldoctor.core.errors import UserError
from modeldoctor.io import names
from modeldoctor.report.collect import find_outputs


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="directory holding outputs of modeldoctor commands (searched recursively)")
    p.add_argument("--out", dest="html", default=None, help=f"HTML file to write (default: RUN_DIR/{names.REPORT})")
    p.add_argument("--no-images", action="store_true", help="skip figures that re-run the model (overlays, thumbnails)")
    p.add_argument("--max-images", type=int, default=6, help="images per overlay row")


def check_run_dir(run_dir: str) -> None:
    """Refuse a folder without any output a section is built from: an empty report would land in the user's folder."""
    found = find_outputs(run_dir)
    if not (found.documents or found.diagnosis or found.explain_pngs):
        raise UserError(f"{run_dir} holds no Model Doctor output ({names.DIAGNOSIS_JSON}, {names.TREAT}, ...); "
                        "pass the --out directory of diagnose, treat, explain or another modeldoctor command")


def run(args: argparse.Namespace) -> dict[str, Any]:
    check_run_dir(args.run_dir)
    if args.html is not None:
        check_out(Path(args.html).parent, "--out")
    result = api.write_report(args.run_dir, args.html, images=not args.no_images, max_images=args.max_images)
    return {"html": str(result.html), "figures": [str(p) for p in result.figures]}
