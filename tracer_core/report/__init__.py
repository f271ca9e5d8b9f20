"""Explanations of a task's routing: facts, HTML report and terminal status."""

from tracer_core.report.build import ReportError, build_report

__all__ = ["ReportError", "build_report"]
