"""When to refit in the background."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

from tracer_core.shutdown import EXITING, STOP_BOUND_S, FitCancelled, cancellable, register_refit

log = logging.getLogger("tracer")


class RefitScheduler:
    """Starts `refit` in a background thread after `every` new teacher traces, or `interval_s` with any new one.

    `abandon()` (at `close()`) asks a running refit to stop at its next step; it then writes nothing
    more, and the traces it would have fitted count towards the next refit.
    """

    def __init__(self, refit: Callable[[], None], *, every: int, interval_s: float, enabled: bool, name: str,
                 paused: Callable[[], bool] = lambda: False) -> None:
        self._refit, self.every, self.interval_s, self.enabled, self.name = refit, every, interval_s, enabled, name
        self._paused = paused  # e.g. while the store cannot be written
        self._lock = threading.Lock()
        self._pending = 0
        self._last_fit_at = time.time()
        self._thread: threading.Thread | None = None
        self._cancel = threading.Event()
        self._abandoned = False  # the last refit stopped because it was asked to

    def count(self, n: int) -> None:
        with self._lock:
            self._pending += n
        self.maybe_start()

    def fitted(self) -> None:
        with self._lock:
            self._last_fit_at = time.time()

    def maybe_start(self) -> None:
        if not self.enabled or self._paused() or EXITING.is_set():
            return
        with self._lock:
            due = self._pending >= self.every or (
                self._pending > 0 and time.time() - self._last_fit_at >= self.interval_s
            )
            if not due or self.running:
                return
            taken, self._pending = self._pending, 0
            self._cancel = threading.Event()
            self._thread = threading.Thread(target=self._run, args=(taken, self._cancel), name=self.name, daemon=True)
            self._thread.start()
            register_refit(self._thread)  # stopped at interpreter exit

    def _run(self, taken: int, cancel: threading.Event) -> None:
        self._abandoned = False
        with cancellable(cancel):
            try:
                self._refit()
            except FitCancelled:
                self._abandoned = True
                with self._lock:
                    self._pending += taken
                log.debug("%s abandoned (%s)", self.name, "closed" if cancel.is_set() else "exit")

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a running refit; True when none is running any more."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return not self.running

    def cancel(self) -> bool:
        """Ask a running refit to stop at its next step; True if one was running."""
        with self._lock:
            self._cancel.set()
            return self.running

    @property
    def abandoned(self) -> bool:
        """Whether the last refit was stopped before it finished (or is still stopping)."""
        return self.running or self._abandoned


def abandon(schedulers: Iterable[RefitScheduler], timeout: float = STOP_BOUND_S) -> int:
    """Stop the running refits of `schedulers`, waiting for them together at most `timeout` s;
    returns how many were abandoned (a refit that finished meanwhile is not)."""
    running = [scheduler for scheduler in schedulers if scheduler.cancel()]
    deadline = time.monotonic() + timeout
    for scheduler in running:
        scheduler.wait(max(deadline - time.monotonic(), 0.0))
    return sum(scheduler.abandoned for scheduler in running)
