"""Logs a machine can read: one JSON object per line for tracer's loggers, opt-in by
`use_json_logs()` or TRACER_LOG_FORMAT=json. A line that reports an event carries the event's fields."""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys
from typing import TextIO

LOGGERS = ("tracer", "tracer_litellm", "tracer_langchain")
FORMAT_ENV = "TRACER_LOG_FORMAT"
EVENT_ATTRIBUTE = "tracer_event"  # the `extra` key of a log record that reports an event


class JsonLogFormatter(logging.Formatter):
    """`{"time", "level", "logger", "message"}` (+ `exception`, + an event's fields) as one JSON line."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, object] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        event = getattr(record, EVENT_ATTRIBUTE, None)
        if isinstance(event, dict):
            data.update({key: value for key, value in event.items() if key not in data})
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str, ensure_ascii=False)


class _JsonHandler(logging.StreamHandler):
    """The handler `use_json_logs` installs (a second call replaces it)."""


def use_json_logs(stream: TextIO | None = None, level: int = logging.INFO) -> None:
    """Write the records of tracer's loggers (`tracer`, `tracer_litellm`, `tracer_langchain`) from `level`
    on as JSON lines to `stream` (default stderr), instead of passing them to the root logger."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if isinstance(h, _JsonHandler)]:
            logger.removeHandler(old)
        handler = _JsonHandler(stream if stream is not None else sys.stderr)
        handler.setFormatter(JsonLogFormatter())
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False


def apply_log_format_from_env() -> None:
    """TRACER_LOG_FORMAT=json turns JSON logs on; `text` (or unset) leaves logging as configured."""
    value = os.environ.get(FORMAT_ENV, "").strip().lower()
    if value == "json":
        use_json_logs()
    elif value not in ("", "text"):
        logging.getLogger("tracer").warning("%s must be json or text, got %r; logs stay as configured", FORMAT_ENV, value)
