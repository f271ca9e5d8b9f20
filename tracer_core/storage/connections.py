"""A store's connections: opening it (connect and migrate, once), one connection per thread, transactions
with lock retries, and the store's reading and writing threads. The SQL is `TraceStore`'s; what differs
between SQLite and PostgreSQL is the backend's."""

from __future__ import annotations

import contextlib
import copy
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from tracer_core.background import Job, Worker
from tracer_core.errors import StoreError
from tracer_core.storage._postgres import PostgresBackend
from tracer_core.storage._sqlite import SQLiteBackend

LOCK_RETRY_S = 60.0
OPEN_RETRY_S = 2.0  # a store that could not be opened is tried again this often (by background threads)

T = TypeVar("T")


class Connections:
    """The connections of one store, safe to share between threads; a forked child opens its own."""

    def __init__(self, backend: SQLiteBackend | PostgresBackend) -> None:
        self._backend = backend
        self._local = threading.local()
        self._conns: list[Any] = []
        self._lock = threading.Lock()
        self.closed = False
        self._pid = os.getpid()
        self._opened = threading.Event()
        self._open_lock = threading.Lock()
        self._open_error: StoreError | None = None
        self._open_failed_at = 0.0
        self._reads, self._writes = Worker("tracer-store-read"), Worker("tracer-store-write")

    @property
    def open_problem(self) -> str | None:
        """Why the store could not be opened (until it opens), or None."""
        if self._open_error is not None and not self._opened.is_set():
            return str(self._open_error)
        return None

    def ensure_open(self) -> None:
        """Return once the store is connected and migrated: wait for the thread opening it, or open it
        here (again, if the last attempt failed at least OPEN_RETRY_S ago; before that, raise why)."""
        if self._opened.is_set():
            return
        with self._open_lock:
            if self._opened.is_set():
                return
            if self._open_error is not None and time.monotonic() - self._open_failed_at < OPEN_RETRY_S:
                raise copy.copy(self._open_error)
            try:
                self._backend.migrate(self._conn(), LOCK_RETRY_S)
                self._backend.opened()
            except Exception as exc:
                self._open_failed_at = time.monotonic()
                self._open_error = exc if isinstance(exc, StoreError) else StoreError(
                    f"cannot open trace store {self._backend.name!r}: {type(exc).__name__}: {exc}")
                raise
            self._open_error = None
            self._opened.set()

    def background_read(self, fn: Callable[[], T], on_done: Callable[[Job[T]], None] | None = None) -> Job[T]:
        """Queue `fn` on the reading thread; see `TraceStore.background_read`."""
        if os.getpid() != self._pid:
            self._after_fork()
        return self._reads.submit(fn, on_done)

    def background_write(self, fn: Callable[[], T], on_done: Callable[[Job[T]], None] | None = None) -> Job[T]:
        """Queue `fn` on the writing thread; see `TraceStore.background_write`."""
        if os.getpid() != self._pid:
            self._after_fork()
        return self._writes.submit(fn, on_done)

    def _db(self) -> Any:
        """This thread's connection to the opened store (waits for the opening; see `ensure_open`)."""
        if self.closed:
            raise StoreError(f"trace store {self._backend.name!r} is closed")
        self.ensure_open()
        return self._conn()

    def _conn(self) -> Any:
        """This thread's connection (each thread, and the writer thread, gets its own)."""
        if self.closed:
            raise StoreError(f"trace store {self._backend.name!r} is closed")
        if os.getpid() != self._pid:
            self._after_fork()
        self._backend.check(self._some_conn)
        conn = getattr(self._local, "conn", None)
        if conn is not None and not conn.usable:
            self._drop(conn)
            conn = None
        if conn is None:
            conn = self._backend.connect()
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    def _some_conn(self) -> Any:
        conn = getattr(self._local, "conn", None)
        with self._lock:
            return conn if conn is not None else (self._conns[0] if self._conns else None)

    def _drop(self, conn: Any) -> None:
        """Forget a broken connection (the server restarted, or the network failed)."""
        with self._lock:
            if conn in self._conns:
                self._conns.remove(conn)
        if getattr(self._local, "conn", None) is conn:
            self._local.conn = None
        with contextlib.suppress(Exception):
            conn.close()

    def _after_fork(self) -> None:
        """A forked child must not reuse the parent's connections or threads."""
        self._local = threading.local()
        self._conns = []
        self._lock = threading.Lock()
        self._reads, self._writes = Worker("tracer-store-read"), Worker("tracer-store-write")
        self._open_lock = threading.Lock()
        self._pid = os.getpid()

    def _on_conn(self, op: Callable[[Any], T]) -> T:
        """`op(conn)` on this thread's connection; once more on a new one if that connection broke."""
        conn = self._db()
        try:
            return op(conn)
        except StoreError:
            if conn.usable:
                raise
            self._drop(conn)
            return op(self._db())

    def write(self, fn: Callable[[Any], T], budget_s: float = LOCK_RETRY_S, *, serial: bool = False) -> T:
        """Run `fn(conn)` in one transaction, waiting at most `budget_s` for locks. `serial` writes
        (those that read what they then write) never overlap another serial write."""
        return self._on_conn(lambda conn: self._backend.write(conn, fn, budget_s=budget_s, serial=serial))

    def read(self, sql: str, params: Iterable[Any] = ()) -> list[tuple]:
        values = tuple(params)
        return self._on_conn(lambda conn: self._backend.retry(lambda: conn.execute(sql, values).fetchall(), LOCK_RETRY_S))

    def close(self) -> None:
        """Stop the store's threads and close every connection; later use raises StoreError."""
        if os.getpid() != self._pid:
            self._after_fork()
        self.closed = True
        self._reads.stop()
        self._writes.stop()
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(Exception):  # a broken server connection closes anyway
                    conn.close()
            self._conns.clear()
