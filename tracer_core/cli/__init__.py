"""The `tracer` command: tasks, status, fit, route, suspend and resume, export and import, report, suspects."""

from tracer_core.cli.commands import main

__all__ = ["main"]
