"""Background writer: a bounded queue drained by one thread that commits traces in batches.

Nothing on the caller's path waits on the store: `put` never blocks (a full queue sends the
trace to the spill file), `flush` and `stop` take a timeout and report what they could not write.
A batch that still fails after a few quick attempts is spilled and the writer turns *degraded*:
later batches go straight to the spill file, and every `PROBE_EVERY_S` the writer tries to replay
the spill file into the store; the first replay that succeeds ends the degraded mode.
"""

from __future__ import annotations

import logging
import pathlib
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tracer_core.errors import StoreError
from tracer_core.observability import observe
from tracer_core.storage.spill import SpillFile
from tracer_core.storage.trace import Trace

log = logging.getLogger("tracer.store")

BATCH_SIZE = 1_000
ATTEMPTS = 3
RETRY_DELAYS_S = (0.05, 0.2)
IDLE_WAKE_S = 0.2
PROBE_EVERY_S = 2.0
DEFAULT_FLUSH_TIMEOUT_S = 10.0
WARN_EVERY_S = 10.0
_STOP = object()


@dataclass(frozen=True)
class FlushReport:
    """What a flush or close could not write to the store, and what it gave up.

    `pending`: still queued when the timeout ran out; `spilled`: in the spill file, waiting to be
    replayed (automatically when the store recovers, or at the next start: not lost); `lost`:
    neither stored nor spilled (the spill file could not be written, or no store could be opened
    or it was closed); `degraded`: why the store is not being written, or None;
    `abandoned_refits`: background refits that `close()` stopped before they finished (they wrote
    nothing; the next refit fits their traces).
    """

    pending: int = 0
    spilled: int = 0
    lost: int = 0
    degraded: str | None = None
    abandoned_refits: int = 0

    @property
    def ok(self) -> bool:
        """True only when every trace this process handed over so far is in the store: False while
        any is pending or spilled (not yet recorded, though a spilled one is not lost) or lost."""
        return not (self.pending or self.spilled or self.lost)

    def __add__(self, other: FlushReport) -> FlushReport:
        return FlushReport(
            self.pending + other.pending, self.spilled + other.spilled, self.lost + other.lost,
            self.degraded or other.degraded, self.abandoned_refits + other.abandoned_refits,
        )


class BackgroundWriter:
    """Hands traces from request threads to one writer thread, never blocking the caller."""

    def __init__(
        self,
        write_batch: Callable[[Sequence[Trace]], object],
        *,
        queue_size: int,
        spill_path: pathlib.Path,
        replay: Callable[[SpillFile], int],
        probe: Callable[[], object],
        name: str = "tracer-writer",
    ) -> None:
        if queue_size < 1:
            raise StoreError(f"queue_size must be at least 1, got {queue_size}")
        self._write_batch = write_batch
        self._replay = replay
        self._probe = probe
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._batch_size = min(BATCH_SIZE, queue_size)
        self.spill = SpillFile(spill_path)
        self._done = threading.Condition()
        self._enqueued = 0
        self._finished = 0
        self._spilled = 0  # spilled by this process and not yet replayed
        self.spilled_total = 0  # every trace this writer ever sent to the spill file
        self._lost = 0
        self._stopping = False
        self._degraded: str | None = None
        self._next_probe = 0.0
        self._last_warning: dict[str, float] = {}
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def degraded(self) -> str | None:
        """Why traces are not reaching the store (they are spilled), or None when healthy."""
        return self._degraded

    def put(self, trace: Trace) -> None:
        """Queue one trace; a full queue (or a stopped writer) spills it instead. Never blocks."""
        with self._done:
            self._enqueued += 1
        observe.writer_queue(self.spill.path, self._enqueued - self._finished)
        if not self._stopping:
            try:
                self._queue.put_nowait(trace)
                return
            except queue.Full:
                self._warn("full", "trace queue is full (%d traces); spilling to %s until the writer catches up",
                           self._queue.maxsize, self.spill.path)
        self._spill_now([trace], "the trace queue is full" if not self._stopping else "the store is closing")
        self._finish(1)

    def flush(self, timeout: float | None = DEFAULT_FLUSH_TIMEOUT_S) -> FlushReport:
        """Wait (at most `timeout` s) until every trace queued before this call is committed or spilled;
        traces a full queue spilled are then replayed into a healthy store."""
        with self._done:
            target = self._enqueued
            self._done.wait_for(lambda: self._finished >= target, timeout)
        if self._spilled and self._degraded is None and self._finished >= target:
            self._replay_spill()
        with self._done:
            return self._report(max(target - self._finished, 0))

    def stop(self, timeout: float | None = DEFAULT_FLUSH_TIMEOUT_S) -> FlushReport:
        """Write what is queued (at most `timeout` s), then end the writer thread."""
        if not self._stopping:
            self._stopping = True
            try:
                self._queue.put_nowait(_STOP)
            except queue.Full:
                pass  # the writer checks `_stopping` once the queue is drained
        self._thread.join(timeout)
        if self._spilled and self._degraded is None and not self._thread.is_alive():
            self._replay_spill()
        with self._done:
            return self._report(max(self._enqueued - self._finished, 0))

    def _report(self, pending: int) -> FlushReport:
        return FlushReport(pending=pending, spilled=self._spilled, lost=self._lost, degraded=self._degraded)

    # -- the writer thread ------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=IDLE_WAKE_S)
            except queue.Empty:
                if self._stopping:
                    return
                self._on_idle()
                continue
            batch = [] if item is _STOP else [item]
            while len(batch) < self._batch_size:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not _STOP:
                    batch.append(item)
            if batch:
                self._commit(batch)
            if self._stopping and self._queue.empty():
                return

    def _commit(self, batch: list[Trace]) -> None:
        if self._degraded is not None and not self._try_recover():
            self._spill_now(batch, self._degraded)
        else:
            for attempt in range(ATTEMPTS):
                try:
                    self._write_batch(batch)
                    break
                except Exception as exc:  # noqa: BLE001 - the writer thread must survive any failure
                    if attempt + 1 < ATTEMPTS:
                        log.warning("writing %d traces failed (%s); retrying", len(batch), exc)
                        time.sleep(RETRY_DELAYS_S[min(attempt, len(RETRY_DELAYS_S) - 1)])
                        continue
                    self._enter_degraded(exc)
                    self._spill_now(batch, str(exc))
        self._finish(len(batch))

    def _on_idle(self) -> None:
        """While idle: probe a failing store; replay a spill file (a full queue's, or another process's)."""
        if self._degraded is not None:
            self._try_recover()
        elif time.monotonic() >= self._next_probe:
            self._next_probe = time.monotonic() + PROBE_EVERY_S
            if self._spilled or self.spill.waiting():
                self._replay_spill()

    def _try_recover(self) -> bool:
        """At most every PROBE_EVERY_S: probe the store and replay the spill file; True if healthy again."""
        now = time.monotonic()
        if now < self._next_probe:
            return False
        self._next_probe = now + PROBE_EVERY_S
        try:
            self._probe()
        except Exception:  # noqa: BLE001 - still failing; stay degraded
            return False
        if not self._replay_spill():
            return False
        log.warning("trace store is writable again; recording resumed (%s)", self.spill.path.name)
        self._degraded = None
        observe.store_recovered(self.spill.path)
        return True

    def _replay_spill(self) -> bool:
        try:
            self._replay(self.spill)
        except Exception as exc:  # noqa: BLE001
            self._warn("replay", "replaying the spill file %s failed (%s); will retry", self.spill.path, exc)
            return False
        with self._done:
            self._spilled = 0
        observe.spill_changed(self.spill.path)
        return True

    def _enter_degraded(self, exc: Exception) -> None:
        self._degraded = f"trace store write failed: {exc}"
        self._next_probe = time.monotonic() + PROBE_EVERY_S
        log.error(
            "trace store cannot be written (%s); saved them to %s (replayed when the store accepts writes "
            "again, or at the next start); tracer is degraded: every call goes to the LLM until then",
            exc, self.spill.path,
        )
        observe.store_degraded(self.spill.path, self._degraded)

    def _spill_now(self, traces: list[Trace], why: str) -> None:
        try:
            self.spill.append(traces)
        except OSError as exc:
            with self._done:
                self._lost += len(traces)
            log.error("LOST %d traces: %s and the spill file %s cannot be written (%s)",
                      len(traces), why, self.spill.path, exc)
            return
        with self._done:
            self._spilled += len(traces)
            self.spilled_total += len(traces)
        self._warn("spill", "saved %d traces to %s (%s); they are replayed into the store when it accepts "
                   "writes, or at the next start", len(traces), self.spill.path, why)

    def _finish(self, n: int) -> None:
        with self._done:
            self._finished += n
            self._done.notify_all()
        observe.writer_done(self.spill.path, self._enqueued - self._finished)

    def _warn(self, key: str, message: str, *args: object) -> None:
        """Log a warning at most once per WARN_EVERY_S per kind (a failing store must not flood the log)."""
        now = time.monotonic()
        if now - self._last_warning.get(key, -WARN_EVERY_S) >= WARN_EVERY_S:
            self._last_warning[key] = now
            log.warning(message, *args)
