"""When to refit in the background, and the lock that lets one process refit a task version at a time."""

from __future__ import annotations

import fcntl
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from tracer_core.shutdown import register_refit

log = logging.getLogger("tracer")


class RefitScheduler:
    """Starts `refit` in a background thread after `every` new teacher traces, or `interval_s` with any new one."""

    def __init__(self, refit: Callable[[], None], *, every: int, interval_s: float, enabled: bool, name: str,
                 paused: Callable[[], bool] = lambda: False) -> None:
        self._refit, self.every, self.interval_s, self.enabled, self.name = refit, every, interval_s, enabled, name
        self._paused = paused  # e.g. while the store cannot be written
        self._lock = threading.Lock()
        self._pending = 0
        self._last_fit_at = time.time()
        self._thread: threading.Thread | None = None

    def count(self, n: int) -> None:
        with self._lock:
            self._pending += n
        self.maybe_start()

    def fitted(self) -> None:
        with self._lock:
            self._last_fit_at = time.time()

    def maybe_start(self) -> None:
        if not self.enabled or self._paused():
            return
        with self._lock:
            due = self._pending >= self.every or (
                self._pending > 0 and time.time() - self._last_fit_at >= self.interval_s
            )
            if not due or self.running:
                return
            self._pending = 0
            self._thread = threading.Thread(target=self._refit, name=self.name, daemon=True)
            self._thread.start()
            register_refit(self._thread)  # stopped cleanly at interpreter exit

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a running refit; True when none is running any more."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return not self.running


def lock_path(store_path: Path, task: str, fingerprint: str) -> Path:
    key = hashlib.sha256(f"{task}\0{fingerprint}".encode()).hexdigest()[:16]
    return store_path.with_name(f"{store_path.name}.refit-{key}.lock")


class ProcessLock:
    """A non-blocking exclusive file lock: `with ProcessLock(path) as acquired:`."""

    def __init__(self, path: Path):
        self.path = path
        self._fh: IO[str] | None = None

    def __enter__(self) -> bool:
        fh = open(self.path, "a+")  # noqa: SIM115 - held until __exit__
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            return False
        self._fh = fh
        return True

    def __exit__(self, *exc: object) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
