"""The one retry rule of both store backends: retry a transient failure, backing off, until a time budget is spent."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def retry_transient(fn: Callable[[], T], budget_s: float, transient: Callable[[Exception], bool]) -> T:
    """Run `fn`; while it raises an exception `transient` accepts and `budget_s` is not spent, wait
    (10 ms, doubling up to 0.5 s) and run it again. Any other exception, or the last one, is raised."""
    deadline = time.monotonic() + budget_s
    delay = 0.01
    while True:
        try:
            return fn()
        except Exception as exc:
            if not transient(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.5)
