"""``modeldoctor`` command line: one subcommand per module in :mod:`modeldoctor.cli.commands`.

Every command returns a dict; ``--json`` prints it as exactly one JSON object on stdout, otherwise a short
human summary.  Progress and logs go to stderr.  A :class:`UserError` becomes one line and exit code 2.
Every command takes ``--device`` (and ``--workers``; train / evaluate / diagnose also ``--amp``); under
``torchrun`` the process group is joined here and only rank 0 prints.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import keyword
import logging
import os
import pkgutil
import sys
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

from modeldoctor.cli import commands
from modeldoctor.cli.checks import check_out, check_ranges
from modeldoctor.cli.relaunch import peer_lost_line
from modeldoctor.core import device, distributed
from modeldoctor.core.errors import UserError
from modeldoctor.core.tokens import LAYOUT_HELP, token_layouts
from modeldoctor.data.bundle import loader_workers
from modeldoctor.io.diagnosis_files import finite

# Shown first in --help, in workflow order; any other module in modeldoctor.cli.commands follows.
ORDER = ["demo", "train", "import", "evaluate", "layers", "diagnose", "explain", "treat", "report"]
# Commands whose forward passes may run in bf16 (--amp): attribution gradients and the treatment stay fp32.
AMP_COMMANDS = {"train", "evaluate", "diagnose"}


def command_names() -> list[str]:
    found = {m.name.removesuffix("_") for m in pkgutil.iter_modules(commands.__path__)
             if m.name != "common" and not m.name.startswith("_")}
    return [n for n in ORDER if n in found] + sorted(found - set(ORDER))


def module_of(command: str) -> str:
    """The module of a command: ``import`` lives in ``import_`` (a module cannot be named after a keyword)."""
    return f"modeldoctor.cli.commands.{command}{'_' if keyword.iskeyword(command) else ''}"


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one line (no usage block) with exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="modeldoctor", description="Diagnose and treat trained CNN classifiers.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)
    for name in command_names():
        module = importlib.import_module(module_of(name))
        doc = module.__doc__ or name
        p = sub.add_parser(name, help=doc.strip().splitlines()[0], description=doc)
        module.add_arguments(p)
        p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
        p.add_argument("--quiet", action="store_true", help="only warnings and errors on stderr")
        p.add_argument("--token-layout", default=None, metavar="LAYOUT",
                       help=f"how layer outputs are read as channels × positions: {LAYOUT_HELP} (default: auto, "
                            "found from each output's shape and the input size)")
        add_scale_arguments(p, amp=name in AMP_COMMANDS)
        p.set_defaults(run=module.run)
    return parser


def add_scale_arguments(p: argparse.ArgumentParser, amp: bool) -> None:
    """``--device``, ``--workers`` and (forward-only commands) ``--amp``, the same on every command."""
    p.add_argument("--device", default="auto", metavar="auto|cpu|cuda|cuda:N|mps",
                   help="where to compute (default auto: CUDA when present, else CPU); torchrun: cuda = cuda:LOCAL_RANK")
    p.add_argument("--workers", type=int, default=0, metavar="N",
                   help="DataLoader worker processes decoding images (default 0: in the main process)")
    if amp:
        p.add_argument("--amp", choices=device.AMP_CHOICES, default="off",
                       help="bf16: autocast forward passes (training, evaluation, the diagnosis's scoring pass)")


def _human(result: dict[str, Any], indent: str = "") -> str:
    lines = []
    for key, value in result.items():
        if isinstance(value, dict):
            lines.append(f"{indent}{key}:")
            lines.append(_human(value, indent + "  "))
        elif isinstance(value, list) and len(value) > 12:
            lines.append(f"{indent}{key}: [{len(value)} items]")
        elif isinstance(value, float):
            lines.append(f"{indent}{key}: {value:.4f}")
        else:
            lines.append(f"{indent}{key}: {value}")
    return "\n".join(lines)


@contextlib.contextmanager
def _stderr_reporting(command: str, level: int = logging.INFO) -> Iterator[None]:
    """What the library logs (``level`` and up) and warns reaches stderr as one plain line each, for this command
    only."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"modeldoctor {command}: %(message)s"))
    package = logging.getLogger("modeldoctor")
    previous, propagate = package.level, package.propagate
    package.addHandler(handler)
    package.setLevel(level)
    package.propagate = False
    shown = warnings.showwarning

    def show(message: Warning | str, category: type[Warning], *rest: Any, **kwargs: Any) -> None:
        print(f"modeldoctor {command}: warning: {message}", file=sys.stderr)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown
        package.removeHandler(handler)
        package.setLevel(previous)
        package.propagate = propagate


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit code (0, 2 for bad input, 130 on Ctrl-C, 1 when a torchrun peer failed)."""
    code = _command(argv)
    if distributed.launched():
        # A finished torchrun rank leaves without interpreter teardown: gloo's threads, torn down there, have aborted
        # ranks whose work and files were complete ("terminate called without an active exception").
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _command(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    prefix = f"modeldoctor {args.command}" + (f" (rank {os.environ.get('RANK', '?')})" if distributed.launched() else "")
    speaker = True  # rank 0 (or the only process) prints the result
    peers_lost = False
    try:
        check_ranges(args)
        check_out(getattr(args, "out", None))
        chosen = distributed.init_from_env(device.resolve_device(args.device))
        speaker = distributed.is_main()
        quiet = args.quiet or not speaker
        with _stderr_reporting(args.command, logging.WARNING if quiet else logging.INFO), \
                device.using(chosen, getattr(args, "amp", "off")), loader_workers(args.workers), \
                token_layouts(args.token_layout):
            result = args.run(args)
            distributed.barrier()  # every rank leaves together, after rank 0's files are written
    except UserError as exc:
        print(f"{prefix}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted; outputs already written are complete", file=sys.stderr)
        return 130
    except (RuntimeError, distributed.Stopped) as exc:  # another rank died, or a collective timed out
        if not distributed.is_peer_failure(exc):
            raise
        distributed.ignore_stops()
        peers_lost = True  # a group with a dead member is left alone: tearing it down can block
        print(f"{prefix}: error: {peer_lost_line(exc, argv, hasattr(args, 'resume'))}", file=sys.stderr)
        return 1
    finally:
        if not peers_lost:
            distributed.shutdown()
    if not speaker:
        return 0
    result = finite(result)  # JSON has no NaN: every consumer can parse the output
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        print(_human(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
