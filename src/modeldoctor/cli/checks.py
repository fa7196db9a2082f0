"""Checks on the command line itself, before any work starts: numeric ranges and the ``--out`` path.

One table says what every numeric option may be; a value outside it is one :class:`UserError` line naming the
option, the rule and the value, so a command never runs for minutes and then fails on its arguments.
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass
from pathlib import Path

from modeldoctor.core.errors import UserError


@dataclass(frozen=True)
class Range:
    """``low ≤ value ≤ high`` (strict at an end where ``open_low`` / ``open_high``)."""

    low: float = -math.inf
    high: float = math.inf
    open_low: bool = False
    open_high: bool = False

    def holds(self, value: float) -> bool:
        above = value > self.low if self.open_low else value >= self.low
        below = value < self.high if self.open_high else value <= self.high
        return math.isfinite(value) and above and below

    def __str__(self) -> str:
        if self.high == math.inf:
            return f"{'>' if self.open_low else '≥'} {self.low:g}"
        return f"in {'(' if self.open_low else '['}{self.low:g}, {self.high:g}{')' if self.open_high else ']'}"


AT_LEAST_ONE = Range(1)
NON_NEGATIVE = Range(0)
POSITIVE = Range(0, open_low=True)
PROBABILITY = Range(0, 1)

# Every numeric option of every command, by its argparse dest; an option missing here is not range-checked.
RANGES: dict[str, Range] = {
    **dict.fromkeys(("epochs", "batch_size", "draws", "noise_draws", "samples_per_class", "seeds", "top",
                     "input_size", "in_channels", "num_classes", "max_images", "max_samples", "noise_repeats", "k",
                     "annotate_per_class", "shortcut_per_class"), AT_LEAST_ONE),
    **dict.fromkeys(("lowest", "expansion", "input_grad_reg", "delta", "weight_decay", "mix_annotated", "seed",
                     "label", "retrain_epochs", "workers", "lam_counterfactual", "composites"), NON_NEGATIVE),
    **dict.fromkeys(("lr", "eps", "lam_fraction", "smooth_beta", "min_r_a", "term_cap"), POSITIVE),
    **dict.fromkeys(("min_confidence", "min_iou"), PROBABILITY),
    "holdout_annotated": Range(0, 1, open_high=True),
    "quantile": Range(0, 1, open_low=True, open_high=True),
    "port": Range(0, 65535),
}


def check_ranges(args: argparse.Namespace) -> None:
    """Refuse the first numeric option outside :data:`RANGES` (``None`` = not given, always fine)."""
    for dest, rule in RANGES.items():
        value = getattr(args, dest, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not rule.holds(value):
            flag = "--" + dest.replace("_", "-")
            raise UserError(f"{flag} must be {rule}, got {value:g}; pass a value {rule}")


def check_out(path: str | os.PathLike | None, what: str = "--out") -> None:
    """``path`` can become an output directory: it is one already or does not exist, and the nearest existing
    folder above it is writable.  Nothing is created here; the first atomic write creates the folder."""
    if path is None:
        return
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise UserError(f"{what} {target} exists and is not a directory; choose a directory path")
    existing = next(p for p in (target, *target.parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"{what} {target} lies under the file {existing}; choose a directory path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{what} {target} cannot be created: {existing} is not writable; choose another directory")
