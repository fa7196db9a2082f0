"""Command line: argparse -> api -> io. Entry point: :func:`main`."""

from modeldoctor.cli.app import main

__all__ = ["main"]
