"""The HTML report: figures from saved outputs, assembled into one self-contained page (see :func:`report`)."""

from modeldoctor.report.build import report

__all__ = ["report"]
