"""Observability never breaks tracer: a failure in it is logged once per function and swallowed."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import ParamSpec

log = logging.getLogger("tracer.observability")

P = ParamSpec("P")
_failed: set[str] = set()


def never_raises(fn: Callable[P, None]) -> Callable[P, None]:
    """`fn`, except that an exception is logged (the first time for `fn`) instead of raised."""

    @functools.wraps(fn)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - metrics and events must never fail a call
            if fn.__qualname__ not in _failed:
                _failed.add(fn.__qualname__)
                log.warning("tracer observability: %s failed (%s: %s); metrics or events may be incomplete",
                            fn.__qualname__, type(exc).__name__, exc)

    return guarded
