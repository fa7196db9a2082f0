"""Arguments shared by several commands."""

from __future__ import annotations

import argparse
from pathlib import Path

from modeldoctor.cli.checks import check_out
from modeldoctor.core.errors import UserError


def add_checkpoint_args(p: argparse.ArgumentParser, data_required: bool = False) -> None:
    p.add_argument("--checkpoint", required=True, help="model.pt written by `modeldoctor train`")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow pickled Python objects in the checkpoint (only for files you trust)")
    p.add_argument("--data", required=data_required, default=None,
                   help="dataset spec (default: the one the checkpoint was trained on)")


def add_out_arg(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--out", required=required, default=None, help="output directory")


def out_dir(args: argparse.Namespace, default: str | Path | None = None) -> Path | None:
    """``--out`` (or ``default``) as a directory path, checked but not created (the first write creates it, so a
    failed command leaves no empty folder); ``None`` when neither is given."""
    value = args.out or default
    if value is None:
        return None
    check_out(value)
    return Path(value)


def comma_floats(text: str | None, flag: str, example: str) -> list[float] | None:
    """``"0.1, 0.2"`` → ``[0.1, 0.2]``; ``None`` when nothing is given; anything else is one line naming ``flag``."""
    items = comma_list(text)
    try:
        return [float(v) for v in items] if items else None
    except ValueError:
        raise UserError(f"{flag} takes numbers separated by commas (e.g. {example}), got {text!r}") from None


def comma_list(text: str | None) -> list[str] | None:
    """``"a, b,"`` → ``["a", "b"]``; ``None`` or nothing but commas → ``None``."""
    items = [item.strip() for item in (text or "").split(",") if item.strip()]
    return items or None
