"""A bounded queue drained by one daemon thread: what delivers events off the caller's path."""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger("tracer.observability")

QUEUE_SIZE = 1_000
T = TypeVar("T")


class Outbox(Generic[T]):
    """Hands items to `deliver` on one daemon thread. `put` never blocks: when the queue is full the
    item is dropped (logged once); `drain` waits, at most a timeout, until every item put is delivered."""

    def __init__(self, deliver: Callable[[T], None], name: str, size: int = QUEUE_SIZE) -> None:
        self._deliver, self.name, self._size = deliver, name, size
        self._done = threading.Condition()
        self._pid: int | None = None
        self._queue: queue.Queue[T] = queue.Queue(size)
        self._put = self._finished = self.dropped = 0

    def put(self, item: T) -> None:
        self._started()
        with self._done:
            try:
                self._queue.put_nowait(item)
            except queue.Full:
                self.dropped += 1
                if self.dropped == 1:
                    log.warning("%s: %d items wait already; later ones are dropped until it catches up",
                                self.name, self._size)
                return
            self._put += 1

    def drain(self, timeout: float) -> bool:
        """Wait at most `timeout` s for every item put so far; True when all were delivered."""
        with self._done:
            target = self._put
            return self._done.wait_for(lambda: self._finished >= target, timeout)

    def _started(self) -> None:
        """Start the thread on first use, and again in a forked child (which has no threads)."""
        if self._pid == os.getpid():
            return
        with self._done:
            if self._pid != os.getpid():
                self._queue = queue.Queue(self._size)
                self._put = self._finished = 0
                threading.Thread(target=self._run, name=self.name, daemon=True).start()
                self._pid = os.getpid()

    def _run(self) -> None:
        items = self._queue
        while True:
            item = items.get()
            try:
                self._deliver(item)
            except Exception:  # noqa: BLE001 - `deliver` logs its own failures; the thread must live on
                log.exception("%s: delivering an item failed", self.name)
            with self._done:
                self._finished += 1
                self._done.notify_all()
