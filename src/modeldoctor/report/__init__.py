"""The HTML report: figures from saved outputs, assembled into one self-contained page (see :func:`write_report`)."""

from modeldoctor.report.build import ReportResult, report, write_report

__all__ = ["ReportResult", "report", "write_report"]
