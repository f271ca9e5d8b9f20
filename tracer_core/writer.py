"""Background writer: a bounded queue drained by one thread that commits traces in batches."""

from __future__ import annotations

import json
import logging
import pathlib
import queue
import threading
import time
from dataclasses import asdict
from typing import Callable, Sequence

from tracer_core.errors import StoreError
from tracer_core.trace import Trace

log = logging.getLogger("tracer.store")

BATCH_SIZE = 1_000
RETRY_BACKOFF_MAX_S = 2.0
FINAL_ATTEMPTS = 3
FULL_WARNING_EVERY_S = 10.0
_STOP = object()


class BackgroundWriter:
    """Hands traces from request threads to one writer thread.

    `enqueue` never drops a trace: when the queue is full it logs a warning and blocks until
    the writer catches up. A batch that cannot be written is retried with backoff; if it still
    fails when the writer stops, it is spilled to `spill_path` (JSONL) and an error is logged.
    """

    def __init__(
        self,
        write_batch: Callable[[Sequence[Trace]], object],
        *,
        queue_size: int,
        spill_path: pathlib.Path,
        name: str = "tracer-writer",
    ) -> None:
        if queue_size < 1:
            raise StoreError(f"queue_size must be at least 1, got {queue_size}")
        self._write_batch = write_batch
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._spill_path = spill_path
        self._done = threading.Condition()
        self._enqueued = 0
        self._finished = 0
        self._stopping = False
        self._blocked = 0
        self._last_full_warning = -FULL_WARNING_EVERY_S
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, trace: Trace) -> None:
        """Queue one trace; blocks (and logs a warning) only if the queue is full."""
        with self._done:
            self._enqueued += 1
        try:
            self._queue.put_nowait(trace)
        except queue.Full:
            self._warn_full()
            self._queue.put(trace)

    def _warn_full(self) -> None:
        """Log that callers are blocking on a full queue (at most once per FULL_WARNING_EVERY_S)."""
        self._blocked += 1
        now = time.monotonic()
        if now - self._last_full_warning >= FULL_WARNING_EVERY_S:
            log.warning(
                "trace queue is full (%d traces); blocked %d caller(s) until the writer catches up",
                self._queue.maxsize, self._blocked,
            )
            self._last_full_warning, self._blocked = now, 0

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every trace queued before this call is committed (or spilled)."""
        with self._done:
            target = self._enqueued
            if not self._done.wait_for(lambda: self._finished >= target, timeout):
                pending = target - self._finished
                raise StoreError(f"flush timed out after {timeout} s with {pending} traces still queued")

    def stop(self, timeout: float | None = None) -> None:
        """Flush, then end the writer thread."""
        if self._stopping:
            return
        self._stopping = True
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            batch: list[Trace] = []
            stop = item is _STOP
            if not stop:
                batch.append(item)
            while not stop and len(batch) < BATCH_SIZE:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                else:
                    batch.append(item)
            if batch:
                self._commit(batch)
            if stop:
                return

    def _commit(self, batch: list[Trace]) -> None:
        attempt = 0
        while True:
            attempt += 1
            try:
                self._write_batch(batch)
                break
            except Exception as exc:  # noqa: BLE001 - the writer thread must survive any failure
                if self._stopping and attempt >= FINAL_ATTEMPTS:
                    self._spill(batch, exc)
                    break
                delay = min(RETRY_BACKOFF_MAX_S, 0.05 * 2**attempt)
                log.warning("writing %d traces failed (%s); retrying in %.2f s", len(batch), exc, delay)
                time.sleep(delay)
        with self._done:
            self._finished += len(batch)
            self._done.notify_all()

    def _spill(self, batch: list[Trace], exc: Exception) -> None:
        try:
            with open(self._spill_path, "a", encoding="utf-8") as fh:
                for trace in batch:
                    fh.write(json.dumps(asdict(trace), ensure_ascii=False) + "\n")
            log.error(
                "could not write %d traces to the store (%s); saved them to %s "
                "(load them with `tracer import %s --task TASK`)",
                len(batch), exc, self._spill_path, self._spill_path,
            )
        except OSError as spill_exc:
            log.error("LOST %d traces: store write failed (%s) and spill failed (%s)", len(batch), exc, spill_exc)
