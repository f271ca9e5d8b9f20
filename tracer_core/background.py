"""Store work off the caller's path: jobs on a store's reading and writing threads, waited for at most a budget.

A call through tracer (`Tracer.route`, `Tracer.record`, either integration) never waits on the
store for more than CALLER_BUDGET_S: what it needs from the store runs as a `Job` on another
thread, and the call takes the result only if it is ready in time. Otherwise the job finishes in
the background and the call defers to the LLM meanwhile.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from tracer_core.errors import StoreError

T = TypeVar("T")

# A call through tracer waits at most 50 ms on the store (beyond the embedding): 25 ms for the
# work, the rest for the waiting thread to wake up and take the GIL back on a busy machine.
CALLER_BUDGET_S = 0.025


class Late(StoreError):
    """The store did not answer within a caller's budget; the work goes on in the background."""


class Job(Generic[T]):
    """One piece of store work running on another thread; callers wait for its result at most a budget."""

    def __init__(self, fn: Callable[[], T], on_done: Callable[[Job[T]], None] | None = None,
                 ahead: Callable[[], Job | None] = lambda: None) -> None:
        self.started = time.monotonic()
        self.finished: float | None = None
        self.value: T | None = None
        self.error: BaseException | None = None
        self.overdue = False  # a caller gave up waiting for it
        self._fn, self._on_done, self._ahead = fn, on_done, ahead
        self._done = threading.Event()

    @property
    def age(self) -> float:
        return time.monotonic() - self.started

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def run(self) -> None:
        try:
            self.value = self._fn()
        except BaseException as exc:  # handed to the callers waiting for this job
            self.error = exc
        finally:
            self.finished = time.monotonic()
            if self._on_done is not None:
                self._on_done(self)
            self._done.set()

    def result(self, budget_s: float | None) -> T:
        """The job's value, waiting at most `budget_s` (None: as long as it takes); raises its error,
        or `Late` when it is not done in time (the job goes on). A caller on the call path does not
        wait at all for a job queued behind one that a caller already gave up on."""
        ahead = self._ahead()
        stuck = ahead is not None and ahead is not self and ahead.overdue
        if not self._done.wait(0.0 if stuck and budget_s is not None and budget_s <= CALLER_BUDGET_S else budget_s):
            self.overdue = True
            raise Late(f"the trace store did not answer within {budget_s} s")
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]  # set by run() when error is None


class Worker:
    """One daemon thread that runs jobs in order, so that they share its store connection (a store has
    one for reads and one for writes that may wait for locks)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._running: Job | None = None

    def submit(self, fn: Callable[[], T], on_done: Callable[[Job[T]], None] | None = None) -> Job[T]:
        """Queue `fn`; the returned job says when it is done."""
        job = Job(fn, on_done, lambda: self._running)
        with self._lock:
            if self._stopped:
                raise StoreError("the trace store is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
            self._queue.put(job)
        return job

    def stop(self) -> None:
        """Run no more jobs after those queued (a job stuck on the store is left to its daemon thread)."""
        with self._lock:
            if not self._stopped:
                self._stopped = True
                self._queue.put(None)

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            self._running = job
            job.run()
            self._running = None
