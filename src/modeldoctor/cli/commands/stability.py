"""Discovery 2: feature-map noise moves FGSM adversarials back but not normal samples; AUROC of the noise-flip detector.

For correctly classified test images and their successful FGSM adversarials (ε in raw [0, 1] pixels),
Uniform(−δ, δ) noise is added to --layer's output J times per δ (absolute δ as in the paper; --relative
multiplies δ by the layer's activation std).  Reports the Fig. 3 curves and the detector score (share of noisy
replays whose prediction changes): δ chosen on a calibration half, AUROC on the held-out half.  With --out:
stability.json and stability.png.

Example: modeldoctor stability --checkpoint runs/base/model.pt --data mnist5k --layer layer3.2.conv2 --json
"""

from __future__ import annotations

import argparse
import sys

from modeldoctor.analyses.stability import DEFAULT_DELTAS, discovery2
from modeldoctor.cli.commands.common import add_checkpoint_args, add_out_arg, out_dir
from modeldoctor.core.errors import UserError
from modeldoctor.core.files import write_bytes, write_json
from modeldoctor.io import names
from modeldoctor.io.loading import load_model_and_data
from modeldoctor.report.figures import stability_curves


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_checkpoint_args(p)
    add_out_arg(p)
    p.add_argument("--layer", default=None, help="layer(s) to perturb, comma-separated (default: the last conv layer)")
    p.add_argument("--eps", type=float, default=0.1, help="FGSM ε in raw [0, 1] pixel units")
    p.add_argument("--deltas", default=",".join(f"{d:g}" for d in DEFAULT_DELTAS), help="noise ranges δ, comma-separated")
    p.add_argument("--draws", type=int, default=10, help="noise draws J per sample and δ")
    p.add_argument("--relative", action="store_true", help="δ in units of the layer's activation std")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--max-samples", type=int, default=None, help="use only the first N images of the split")
    p.add_argument("--seed", type=int, default=0)


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--deltas must be comma-separated numbers, got {text!r}; e.g. 0,0.1,0.2,0.3") from None


def run(args: argparse.Namespace) -> dict:
    deltas = _floats(args.deltas)
    out = out_dir(args)
    model, _, bundle = load_model_and_data(args.checkpoint, args.data, args.trust_checkpoint)
    layers = [v.strip() for v in args.layer.split(",") if v.strip()] if args.layer else None
    result = discovery2(model, bundle.split(args.split), eps=args.eps, layers=layers, deltas=deltas,
                        draws=args.draws, relative=args.relative, max_samples=args.max_samples, seed=args.seed)
    print(f"stability: FGSM ε={args.eps:g} success {result['fgsm']['success_rate']:.3f}; held-out AUROC "
          f"{result['auroc']:.3f} at δ={result['delta']:g} ({result['layer']}); adversarials keeping the false "
          f"label {result['keep_false_at_best']:.3f}", file=sys.stderr)
    result = {"checkpoint": args.checkpoint, **result}
    if out is not None:
        write_bytes(out / names.STABILITY_FIGURE, stability_curves(result).png)
        result["outputs"] = {"json": str(out / names.STABILITY), "figure": str(out / names.STABILITY_FIGURE)}
        write_json(out / names.STABILITY, result)
    return result
