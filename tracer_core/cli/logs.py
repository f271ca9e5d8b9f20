"""What the library logs while a `tracer` command runs: warnings and errors as `note:` lines on stderr, after whatever
the command printed so far (stdout is flushed first, so a note never lands inside a table); nothing below a warning
(the command says what it did). The library's loggers pass nothing to the root logger while the command runs."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from tracer_core.observability.jsonlog import LOGGERS


class _NoteHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stdout.flush()
            sys.stderr.write(f"note: {record.getMessage()}\n")
            sys.stderr.flush()
        except Exception:  # a log line must never fail the command
            self.handleError(record)


def library_logs_as_notes() -> Callable[[], None]:
    """Send the library loggers' warnings and errors to stderr as notes until the returned function is called."""
    saved = []
    for name in LOGGERS:
        logger = logging.getLogger(name)
        handler = _NoteHandler(logging.WARNING)
        saved.append((logger, handler, logger.propagate))
        logger.addHandler(handler)
        logger.propagate = False

    def restore() -> None:
        for logger, handler, propagate in saved:
            logger.removeHandler(handler)
            logger.propagate = propagate

    return restore
