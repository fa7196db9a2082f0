"""List a model's candidate layers (every Conv2d; token / channels-last norms and blocks) with layout, feature-map
shape, depth index, and which are spatial (> 1×1) and on the main path; `default` names the layer the commands use
when none is given (a transformer's: the deepest layer whose patch positions reach the logits).

Example: modeldoctor layers --model resnet20 --input-size 32 --in-channels 1 --json
"""

from __future__ import annotations

import argparse
from typing import Any

from modeldoctor import api
from modeldoctor.core.errors import UserError
from modeldoctor.models.checkpoint import load_checkpoint
from modeldoctor.models.zoo import build_model, min_input_size


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="model spec (or use --checkpoint)")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--trust-checkpoint", action="store_true")
    p.add_argument("--input-size", type=int, default=None,
                   help="probe input side in pixels (default: 32, or the model's minimum if larger)")
    p.add_argument("--in-channels", type=int, default=3)
    p.add_argument("--num-classes", type=int, default=10)


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.checkpoint:
        model, meta = load_checkpoint(args.checkpoint, trust=args.trust_checkpoint)
        shape = (meta.in_channels, meta.input_size, meta.input_size)
    elif args.model:
        size = args.input_size or max(32, min_input_size(args.model, args.in_channels))
        model = build_model(args.model, args.num_classes, args.in_channels, size)
        shape = (args.in_channels, size, size)
    else:
        raise UserError("give --model NAME or --checkpoint PATH")
    return api.list_layers(model, shape)
