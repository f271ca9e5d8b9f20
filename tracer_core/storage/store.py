"""TraceStore: traces and policies in one SQLite file (sqlite-utils, WAL) or one PostgreSQL database.

One class holds the logic (the SQL is the same on both); opening the store, its per-thread connections
and its reading and writing threads are in `connections`; what differs (connecting, transactions, lock
retries, schema steps, the refit lock, where the spill file goes) is in the backend modules.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import logging
import math
import os
import pathlib
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tracer_core.background import Job
from tracer_core.decision import UNSELECTED, Reason
from tracer_core.errors import PolicyError, StoreError
from tracer_core.shutdown import stop_refits
from tracer_core.storage import migrations
from tracer_core.storage._postgres import PostgresBackend
from tracer_core.storage._sqlite import SQLiteBackend
from tracer_core.storage.connections import LOCK_RETRY_S, Connections
from tracer_core.storage.packed_ids import packed_certificate, unpacked_certificate
from tracer_core.storage.spill import SpillFile
from tracer_core.storage.trace import CACHED, SOURCES, UNPARSED, Trace, validate
from tracer_core.storage.writer import DEFAULT_FLUSH_TIMEOUT_S, BackgroundWriter, FlushReport
from tracer_core.store_address import DEFAULT_DB, resolve_path, store_key

__all__ = ["DEFAULT_DB", "SCHEMA_VERSION", "Evidence", "TraceStore", "input_hash", "resolve_path"]

WRITER_LOCK_BUDGET_S = 2.0  # background writes give up on a locked store this fast (the writer then spills)
ITER_CHUNK = 1_000

T = TypeVar("T")
log = logging.getLogger("tracer.store")

TRACE_COLUMNS = (
    "task", "fingerprint", "input", "input_hash", "label", "source", "model", "latency_ms",
    "prompt_tokens", "completion_tokens", "cost_usd", "created_at", "metadata",
    "route", "policy_version", "predicted", "score",
)
_INSERT_SQL = f"INSERT INTO traces ({', '.join(TRACE_COLUMNS)}) VALUES ({', '.join('?' * len(TRACE_COLUMNS))})"
_POLICY_COLUMNS = "id, task, fingerprint, version, created_at, status, n_traces, certificate"
_EXISTS_SQL = "SELECT 1 FROM traces WHERE task = ? AND created_at = ? AND input_hash = ? AND source = ? LIMIT 1"
CORRUPT_CERTIFICATE = "corrupt_certificate"
# what a copy moves, table by table, every column: ids too (certificates and suspensions refer to trace ids)
COPY_TABLES: dict[str, tuple[str, ...]] = {
    "traces": ("id", *TRACE_COLUMNS),
    "task_versions": ("task", "fingerprint", "origin", "description", "created_at"),
    "policies": ("id", "task", "fingerprint", "version", "created_at", "status", "n_traces", "certificate", "artifact"),
    "suspensions": ("id", "task", "fingerprint", "created_at", "action", "reason", "details"),
    "certification_attempts": ("id", *migrations.ATTEMPT_COLUMNS),
}
SCHEMA_VERSION = len(migrations.MIGRATIONS)


def input_hash(text: str) -> str:
    """Short stable hash of an input text (first 16 hex chars of sha256)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class TraceStore:
    """The one place traces and policies are kept. Safe to share between threads and processes.

    `path` is an SQLite file, or a `postgresql://` URL (several hosts can share one such store).
    A file that is an SQLite database of another application is refused unless `adopt_foreign_db`.
    Traces left in the spill file by an earlier run are replayed when the store opens.

    `background=True` (the integrations' stores) checks the address and returns at once: connecting
    and the schema steps run on the store's own thread, and whatever needs the database waits for
    them there (a failed opening is retried every OPEN_RETRY_S). Calls through tracer only ever
    wait for such work with a budget (`tracer_core.background`).
    """

    def __init__(
        self, path: str | os.PathLike | None = None, *, queue_size: int = 10_000, adopt_foreign_db: bool = False,
        background: bool = False,
    ) -> None:
        address = resolve_path(path)
        self._key = store_key(address)  # a URL's password is kept by the backend alone, never shown
        self._backend: SQLiteBackend | PostgresBackend = (
            PostgresBackend(address) if isinstance(address, str) else SQLiteBackend(address, adopt_foreign_db=adopt_foreign_db)
        )
        self.path: pathlib.Path | str = self._backend.path  # a PostgreSQL URL is shown without its password
        self._queue_size = queue_size
        self._connections = Connections(self._backend)
        self._lock = threading.Lock()  # creates the writer
        self._writer: BackgroundWriter | None = None
        self._pid = os.getpid()
        if background:
            self._connections.background_read(self._open_in_background)
        else:
            try:
                self._connections.ensure_open()
            except BaseException:
                self.close()
                raise
            self._replay_spill_at_start()
        _OPEN_STORES.add(self)

    @property
    def closed(self) -> bool:
        return self._connections.closed

    @property
    def name(self) -> str:
        """The store as messages show it: the file path, or the URL without its password."""
        return self._backend.name

    @property
    def key(self) -> str:
        """What identifies the store within a process: the resolved file, or the URL without its password
        plus a keyed digest of it (`TraceStore(key)` opens the same store again in this process)."""
        return self._key

    @property
    def is_postgres(self) -> bool:
        return isinstance(self._backend, PostgresBackend)

    def __repr__(self) -> str:
        return f"TraceStore({self.name!r})"

    # --- background work and connections (`tracer_core.storage.connections`) ----------------------

    def _open_in_background(self) -> None:
        self._connections.ensure_open()
        self.background_write(self._replay_spill_at_start)

    def background_read(self, fn: Callable[[], T], on_done: Callable[[Job[T]], None] | None = None) -> Job[T]:
        """Queue `fn` (reads) on the store's reading thread, which keeps one connection; `job.result(budget)`
        waits for it. Raises StoreError if the store is closed."""
        return self._connections.background_read(fn, on_done)

    def background_write(self, fn: Callable[[], T], on_done: Callable[[Job[T]], None] | None = None) -> Job[T]:
        """Queue `fn` (a write that may wait for locks) on the store's writing thread, so that reads never
        wait behind it. Raises StoreError if the store is closed."""
        return self._connections.background_write(fn, on_done)

    def _after_fork(self) -> None:
        """A forked child must not reuse the parent's writer thread (the connections renew themselves)."""
        self._lock = threading.Lock()
        self._writer = None
        self._pid = os.getpid()

    def _write(self, fn: Callable[[Any], T], budget_s: float = LOCK_RETRY_S, *, serial: bool = False) -> T:
        return self._connections.write(fn, budget_s, serial=serial)

    def _read(self, sql: str, params: Iterable[Any] = ()) -> list[tuple]:
        return self._connections.read(sql, params)

    # --- traces -------------------------------------------------------------------------------

    def append(self, trace: Trace) -> int:
        """Validate and store one trace now; returns its id."""
        row = _row(validate(trace))
        trace.id = self._write(lambda conn: conn.execute(_INSERT_SQL + " RETURNING id", row).fetchone()[0])
        return trace.id

    def append_many(self, traces: Iterable[Trace]) -> int:
        """Validate all, then store all in one transaction; returns the count stored."""
        rows = [_row(validate(trace)) for trace in traces]
        if rows:
            self._write(lambda conn: conn.executemany(_INSERT_SQL, rows))
        return len(rows)

    def append_new(self, traces: list[Trace]) -> int:
        """Store the traces not already present (same task, source, input, created_at); returns how many."""
        rows = [_row(validate(trace)) for trace in traces]

        def insert(conn: Any) -> int:
            new = [r for r in rows if conn.execute(_EXISTS_SQL, (r[0], r[11], r[3], r[5])).fetchone() is None]
            conn.executemany(_INSERT_SQL, new)
            return len(new)

        return self._write(insert, WRITER_LOCK_BUDGET_S, serial=True)

    def enqueue(self, trace: Trace) -> None:
        """Validate now (raising in the caller), then hand off to the background writer (never blocks)."""
        validate(trace)
        self._background().put(trace)

    @property
    def spill_path(self) -> pathlib.Path:
        """Where traces that cannot reach the store are kept until replayed (JSONL, on this host)."""
        return self._backend.spill_path

    @property
    def degraded(self) -> str | None:
        """Why traces are not being written to the store (they go to the spill file), or None."""
        if self._backend.problem is not None:
            return self._backend.problem
        if self._connections.open_problem is not None:
            return self._connections.open_problem
        writer = self._writer
        return writer.degraded if writer is not None else None

    def flush(self, timeout: float | None = DEFAULT_FLUSH_TIMEOUT_S) -> FlushReport:
        """Wait at most `timeout` s until every queued trace is committed; report what was not."""
        if self._writer is not None and os.getpid() == self._pid:
            return self._writer.flush(timeout)
        return FlushReport(degraded=self.degraded)

    def close(self, timeout: float | None = DEFAULT_FLUSH_TIMEOUT_S) -> FlushReport:
        """Flush queued traces (at most `timeout` s), stop the writer, close connections. Idempotent."""
        if self.closed:
            return FlushReport()
        if os.getpid() != self._pid:
            self._after_fork()
        report = self._writer.stop(timeout) if self._writer is not None else FlushReport(degraded=self.degraded)
        self._connections.close()
        _OPEN_STORES.discard(self)
        return report

    def refit_lock(self, task: str, fingerprint: str) -> contextlib.AbstractContextManager[bool]:
        """`with store.refit_lock(task, fp) as acquired:` one refit at a time per task version, across
        processes (a file lock beside an SQLite file) or hosts (an advisory lock on PostgreSQL)."""
        self._connections.ensure_open()  # the advisory lock's key includes the schema the opening finds
        return self._backend.refit_lock(task, fingerprint)

    def __enter__(self) -> TraceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _background(self) -> BackgroundWriter:
        if self.closed:
            raise StoreError(f"trace store {self.name!r} is closed")
        if os.getpid() != self._pid:
            self._after_fork()
        with self._lock:
            if self._writer is None:
                self._writer = BackgroundWriter(
                    self._append_from_writer,
                    queue_size=self._queue_size,
                    spill_path=self.spill_path,
                    replay=lambda spill: spill.replay(self.append_new),
                    probe=self._probe_write,
                )
            return self._writer

    def _append_from_writer(self, traces: Sequence[Trace]) -> None:
        """The writer thread's commit: like append_many, but gives up on a locked store quickly."""
        rows = [_row(trace) for trace in traces]
        self._write(lambda conn: conn.executemany(_INSERT_SQL, rows), WRITER_LOCK_BUDGET_S)

    def _probe_write(self) -> None:
        """Raise unless a write transaction on `traces` can start (inserts nothing)."""
        self._write(lambda conn: conn.execute("INSERT INTO traces (task) SELECT NULL WHERE false"), WRITER_LOCK_BUDGET_S)

    def _replay_spill_at_start(self) -> None:
        try:
            SpillFile(self.spill_path).replay(self.append_new)
        except Exception as exc:  # noqa: BLE001 - an old spill file must never stop the store from opening
            log.error("could not replay the spill file %s (%s); it is kept for the next start", self.spill_path, exc)

    def iter_traces(
        self,
        task: str,
        *,
        source: str | None = None,
        fingerprint: str | None = None,
        since_id: int = 0,
        until_id: int | None = None,
    ) -> Iterator[Trace]:
        """Traces of `task` with since_id < id <= until_id, ordered by id (read in chunks)."""
        where, params = _trace_filter(task, source, fingerprint)
        if until_id is not None:
            where += " AND id <= ?"
            params.append(until_id)
        sql = f"SELECT id, {', '.join(TRACE_COLUMNS)} FROM traces WHERE {where} AND id > ? ORDER BY id LIMIT {ITER_CHUNK}"
        last = since_id
        while True:
            rows = self._read(sql, [*params, last])
            for row in rows:
                yield _trace(row)
            if len(rows) < ITER_CHUNK:
                return
            last = rows[-1][0]

    def teacher_examples(self, task: str, fingerprint: str | None = None) -> tuple[list[str], list[str], list[int]]:
        """(inputs, labels, ids) of the teacher traces of `task`, ordered by id."""
        where, params = _trace_filter(task, "teacher", fingerprint)
        rows = self._read(f"SELECT input, label, id FROM traces WHERE {where} ORDER BY id", params)
        return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]

    def max_id(self, task: str, *, source: str | None = "teacher", fingerprint: str | None = None) -> int:
        """Highest trace id of `task` and `source` (0 if none)."""
        where, params = _trace_filter(task, source, fingerprint)
        return self._read(f"SELECT max(id) FROM traces WHERE {where}", params)[0][0] or 0

    def counts(self, task: str | None = None) -> dict[str, int]:
        """Trace counts by source (every source present, zeros included)."""
        sql = "SELECT source, count(*) FROM traces"
        params: list[Any] = []
        if task is not None:
            sql += " WHERE task = ?"
            params.append(task)
        counts = dict.fromkeys(SOURCES, 0)
        counts.update(dict(self._read(sql + " GROUP BY source", params)))
        return counts

    def tasks(self) -> list[dict]:
        """One row per task: fingerprints seen, counts by source, time of the last trace."""
        summary: dict[str, dict] = {}
        for task, n_fp in self._read("SELECT task, count(DISTINCT fingerprint) FROM traces GROUP BY task ORDER BY task"):
            summary[task] = {"task": task, "fingerprints": n_fp, **dict.fromkeys(SOURCES, 0), "last_trace_at": 0.0}
        for task, source, n, last in self._read(
            "SELECT task, source, count(*), max(created_at) FROM traces GROUP BY task, source"
        ):
            summary[task][source] = n
            summary[task]["last_trace_at"] = max(summary[task]["last_trace_at"], last)
        return list(summary.values())

    def counts_since(self, task: str, since: float, fingerprint: str | None = None) -> list[dict]:
        """Counts of `task` traces created at or after `since`, by source and routing reason."""
        where, params = _trace_filter(task, None, fingerprint)
        rows = self._read(
            f"SELECT source, route, count(*) FROM traces WHERE {where} AND created_at >= ? GROUP BY 1, 2 ORDER BY 1, 2",
            [*params, since],
        )
        return [{"source": s, "reason": r, "n": n} for s, r, n in rows]

    def hourly_routes(self, task: str, fingerprint: str, since: float) -> list[dict]:
        """Per hour since `since`: calls the policy routed, those out of distribution, those deferred.

        Calls deferred whatever their input (audits, suspended, no policy, a stricter caller) are left out.
        """
        unselected = ", ".join(f"'{r}'" for r in sorted(UNSELECTED))
        rows = self._read(
            f"SELECT {self._backend.hour_sql}, count(*), count(*) FILTER (WHERE route = 'out_of_distribution'), "
            "count(*) FILTER (WHERE source <> 'surrogate') FROM traces WHERE task = ? AND fingerprint = ? "
            f"AND created_at >= ? AND route IS NOT NULL AND route NOT IN ({unselected}) GROUP BY 1 ORDER BY 1",
            [task, fingerprint, since],
        )
        return [{"hour_start": h * 3600.0, "calls": n, "out_of_distribution": ood or 0, "deferred": d or 0}
                for h, n, ood, d in rows]

    def teacher_evidence(self, task: str, fingerprint: str, *, since_id: int = 0) -> Evidence:
        """Teacher traces of one task version (id > since_id), with which of them are unselected and which audits.

        A trace is unselected (a uniform sample of traffic, usable as calibration evidence)
        when the LLM answered it whatever the input was: no policy was in force, it was an
        audit, the task was suspended, or it was recorded without a routing decision.
        """
        unselected = ", ".join(f"'{r}'" for r in sorted(UNSELECTED))
        rows = self._read(
            f"SELECT input, label, id, route IS NULL OR route IN ({unselected}), created_at, "
            f"route = '{Reason.AUDIT}' FROM traces "
            "WHERE task = ? AND fingerprint = ? AND source = 'teacher' AND id > ? ORDER BY id",
            [task, fingerprint, since_id],
        )
        return Evidence([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], [bool(r[3]) for r in rows],
                        [r[4] for r in rows], [bool(r[5]) for r in rows])

    # --- task versions ------------------------------------------------------------------------

    def register_version(self, task: str, fingerprint: str, description: dict, origin: str = "", *,
                         budget_s: float = LOCK_RETRY_S) -> None:
        """Remember what a task version describes (first registration wins); wait at most `budget_s` for locks."""
        body = json.dumps(description, sort_keys=True, ensure_ascii=False, default=str)
        self._write(lambda conn: conn.execute(
            "INSERT INTO task_versions (task, fingerprint, origin, description, created_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING", (task, fingerprint, origin, body, time.time()),
        ), budget_s)

    def versions_by_fingerprint(self, fingerprint: str) -> list[str]:
        """The task names a fingerprint is registered under (by either integration), oldest first."""
        rows = self._read("SELECT task FROM task_versions WHERE fingerprint = ? ORDER BY created_at, task", [fingerprint])
        return [task for (task,) in rows]

    def has_traces(self, task: str, fingerprint: str) -> bool:
        """Whether the task version has any trace."""
        return bool(self._read("SELECT 1 FROM traces WHERE task = ? AND fingerprint = ? LIMIT 1", [task, fingerprint]))

    def move_traces(self, source: str, fingerprint: str, task: str, *, budget_s: float = LOCK_RETRY_S) -> int:
        """Move the traces of task `source` at `fingerprint` to `task` in one transaction; returns how many.

        Only a name with no certification history (no policy, attempt or suspension at the fingerprint)
        gives its traces away: a certified history stays with the name its split was salted with.
        """

        def move(conn: Any) -> int:
            for table in ("policies", "certification_attempts", "suspensions"):
                if conn.execute(f"SELECT 1 FROM {table} WHERE task = ? AND fingerprint = ? LIMIT 1",
                                (source, fingerprint)).fetchall():
                    return 0
            moved = conn.execute("UPDATE traces SET task = ? WHERE task = ? AND fingerprint = ?",
                                 (task, source, fingerprint)).rowcount
            conn.execute("DELETE FROM task_versions WHERE task = ? AND fingerprint = ?", (source, fingerprint))
            return int(moved)

        return self._write(move, budget_s, serial=True)

    def versions(self, task: str | None = None) -> list[dict]:
        """Every (task, fingerprint) with traces, a policy or a description, newest activity first."""
        where, params = ("WHERE task = ?", [task]) if task is not None else ("", [])
        rows = self._read(
            "SELECT task, fingerprint, count(*) FILTER (WHERE source = 'teacher'), "
            f"count(*) FILTER (WHERE source = 'surrogate'), max(created_at) "
            f"FROM traces {where} GROUP BY task, fingerprint", params,
        )
        found: dict[tuple[str, str], dict] = {}
        for t, fp, teacher, surrogate, last in rows:
            found[(t, fp)] = {"task": t, "fingerprint": fp, "teacher": teacher or 0, "surrogate": surrogate or 0,
                              "last_trace_at": last, "origin": "", "description": None}
        for t, fp, origin, body in self._read(
            f"SELECT task, fingerprint, origin, description FROM task_versions {where}", params
        ):
            row = found.setdefault((t, fp), {"task": t, "fingerprint": fp, "teacher": 0, "surrogate": 0,
                                             "last_trace_at": None, "origin": "", "description": None})
            row["origin"], row["description"] = origin, _json_or_none(body)
        for t, fp in self._read(f"SELECT DISTINCT task, fingerprint FROM policies {where}", params):
            found.setdefault((t, fp), {"task": t, "fingerprint": fp, "teacher": 0, "surrogate": 0,
                                       "last_trace_at": None, "origin": "", "description": None})
        return sorted(found.values(), key=lambda r: (r["task"], -(r["last_trace_at"] or 0.0)))

    # --- suspensions --------------------------------------------------------------------------

    def log_suspension(self, task: str, fingerprint: str, *, action: str, reason: str, details: dict) -> int:
        """Append a suspend/resume event of a task version; returns its id."""
        if action not in ("suspend", "resume"):
            raise StoreError(f"suspension action must be 'suspend' or 'resume', got {action!r}")
        body = json.dumps(details, allow_nan=False, default=str)
        return self._write(lambda conn: conn.execute(
            "INSERT INTO suspensions (task, fingerprint, created_at, action, reason, details) VALUES (?, ?, ?, ?, ?, ?) "
            "RETURNING id", (task, fingerprint, time.time(), action, reason, body),
        ).fetchone()[0])

    def suspension(self, task: str, fingerprint: str) -> dict | None:
        """The suspend event in force for a task version (the newest event, if it is a suspend), else None."""
        return self.suspension_state(task, fingerprint)[0]

    def suspension_state(self, task: str, fingerprint: str) -> tuple[dict | None, int]:
        """(`suspension()`, `last_event_trace_id()`) from one read of the newest event, so that they never disagree: a
        monitor restarted at an event is never paired with a state read before that event was written."""
        rows = self._read(
            "SELECT id, created_at, action, reason, details FROM suspensions WHERE task = ? AND fingerprint = ? "
            "ORDER BY id DESC LIMIT 1", [task, fingerprint],
        )
        if not rows:
            return None, 0
        id_, created_at, action, reason, details = rows[0]
        data = _json_or_none(details) or {}
        floor = _event_floor(data)
        if action != "suspend":
            return None, floor
        return {"id": id_, "since": created_at, "reason": reason, "details": data}, floor

    def suspension_floor(self, task: str, fingerprint: str) -> int:
        """Highest trace id at the newest suspension: later fits use only traces after it (0 if never suspended)."""
        return self._event_trace_id(task, fingerprint, "AND action = 'suspend'")

    def last_event_trace_id(self, task: str, fingerprint: str) -> int:
        """Highest trace id at the newest suspend or resume event (0 if none): the monitor starts after it."""
        return self.suspension_state(task, fingerprint)[1]

    def _event_trace_id(self, task: str, fingerprint: str, condition: str) -> int:
        rows = self._read(
            f"SELECT details FROM suspensions WHERE task = ? AND fingerprint = ? {condition} ORDER BY id DESC LIMIT 1",
            [task, fingerprint],
        )
        return _event_floor(_json_or_none(rows[0][0]) or {}) if rows else 0

    def audit_outcomes(self, task: str, fingerprint: str, *, policy_version: int,
                       since_id: int = 0) -> list[tuple[int, bool]]:
        """(id, LLM agreed with the policy) of audits of `policy_version` it would have answered, id > since_id, in order.

        Every audit counts, whatever its answer: one from the caller's cache as recorded, one whose
        answer did not parse as a disagreement.
        """
        rows = self._read(
            f"SELECT id, source <> '{UNPARSED}' AND label = predicted FROM traces WHERE task = ? AND fingerprint = ? "
            f"AND source IN ('teacher', '{CACHED}', '{UNPARSED}') AND route = 'audit' AND predicted IS NOT NULL "
            "AND id > ? AND policy_version = ? ORDER BY id",
            [task, fingerprint, since_id, policy_version],
        )
        return [(r[0], bool(r[1])) for r in rows]

    # --- policies -----------------------------------------------------------------------------

    def save_policy(
        self, task: str, *, fingerprint: str, certificate: dict, artifact: bytes, status: str, n_traces: int,
        check: Callable[[], None] | None = None,
    ) -> int:
        """Store a new policy version of (task, fingerprint); returns the version number.

        `check` runs inside the write transaction, before the row is inserted: if it raises, nothing is written."""
        if not isinstance(artifact, (bytes, bytearray)):
            raise PolicyError(f"policy artifact must be bytes, got {type(artifact).__name__}")
        if not isinstance(status, str) or not status:
            raise PolicyError(f"policy status must be a non-empty string, got {status!r}")
        try:
            cert_json = json.dumps(packed_certificate(certificate), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise PolicyError(f"policy certificate is not JSON-serialisable: {exc}") from None

        def insert(conn: Any) -> int:
            if check is not None:
                check()
            (top,) = conn.execute(
                "SELECT coalesce(max(version), 0) FROM policies WHERE task = ? AND fingerprint = ?",
                (task, fingerprint),
            ).fetchone()
            conn.execute(
                "INSERT INTO policies (task, fingerprint, version, created_at, status, n_traces, certificate, artifact) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (task, fingerprint, top + 1, time.time(), status, int(n_traces), cert_json, bytes(artifact)),
            )
            return top + 1

        return self._write(insert, serial=True)

    def latest_policy(self, task: str, *, fingerprint: str = "", status: str | None = "deployed") -> dict | None:
        """The newest policy (with artifact bytes and parsed certificate), or None."""
        where, params = _policy_filter(task, fingerprint, status)
        rows = self._read(
            f"SELECT {_POLICY_COLUMNS}, artifact FROM policies WHERE {where} ORDER BY version DESC LIMIT 1", params
        )
        return _policy(rows[0], with_artifact=True) if rows else None

    def latest_policy_version(self, task: str, *, fingerprint: str = "", status: str | None = "deployed") -> int | None:
        """Version number of the newest matching policy, or None (reads no blob)."""
        where, params = _policy_filter(task, fingerprint, status)
        return self._read(f"SELECT max(version) FROM policies WHERE {where}", params)[0][0]

    def count_policies(self, task: str, *, fingerprint: str, status: str, after: int, through: int) -> int:
        """How many policy rows of a task version with `status` have after < version <= through (reads no certificate)."""
        where, params = _policy_filter(task, fingerprint, status)
        return self._read(f"SELECT count(*) FROM policies WHERE {where} AND version > ? AND version <= ?",
                          [*params, after, through])[0][0]

    def policies(self, task: str, *, fingerprint: str | None = None) -> list[dict]:
        """Every policy version of `task` (without artifacts), newest first."""
        sql = f"SELECT {_POLICY_COLUMNS} FROM policies WHERE task = ?"
        params: list[Any] = [task]
        if fingerprint is not None:
            sql += " AND fingerprint = ?"
            params.append(fingerprint)
        rows = self._read(sql + " ORDER BY created_at DESC, version DESC", params)
        return [_policy(row, with_artifact=False) for row in rows]

    # --- certification attempts ---------------------------------------------------------------

    def next_attempt(self, task: str, fingerprint: str) -> int:
        """The index the next certification attempt of a task version will get (reserves nothing)."""
        top = self._read("SELECT coalesce(max(attempt), 0) FROM certification_attempts WHERE task = ? AND fingerprint = ?",
                         [task, fingerprint])[0][0]
        return top + 1 if top else len(self._earlier_attempts_of(task, fingerprint)) + 1

    def latest_attempt(self, task: str, fingerprint: str) -> dict | None:
        """The latest certification attempt of a task version: attempt, n_calibration, last_trace_id and certified
        (None while its outcome is not recorded); None if it never attempted."""
        rows = self._read(
            "SELECT attempt, n_calibration, last_trace_id, certified FROM certification_attempts "
            "WHERE task = ? AND fingerprint = ? ORDER BY attempt DESC LIMIT 1", [task, fingerprint],
        )
        if rows:
            attempt, n_calibration, last_id, certified = rows[0]
            return {"attempt": attempt, "n_calibration": n_calibration, "last_trace_id": last_id,
                    "certified": None if certified is None else bool(certified)}
        earlier = self._earlier_attempts_of(task, fingerprint)
        if not earlier:
            return None
        last = earlier[-1]
        return {"attempt": len(earlier), **{k: last[k] for k in ("n_calibration", "last_trace_id", "certified")}}

    def reserve_attempt(
        self, task: str, fingerprint: str, *, alpha: float, delta: float, spend: Callable[[int], float],
        n_calibration: int, last_trace_id: int,
    ) -> tuple[int, float, float]:
        """Take the next attempt index of a task version for good: (index, `spend(index)`, delta spent by
        every attempt up to it). One serial write, so concurrent fits (threads, processes, hosts) get
        distinct indices. The first reservation of a version counts the fits an earlier release made
        with its gate (each at its full delta), conservatively."""

        def insert(conn: Any) -> tuple[int, float, float]:
            rows = conn.execute("SELECT attempt, delta_spent FROM certification_attempts WHERE task = ? AND fingerprint = ? "
                                "ORDER BY attempt", (task, fingerprint)).fetchall()
            now = time.time()
            if not rows:
                policies = conn.execute(f"SELECT {_POLICY_COLUMNS} FROM policies WHERE task = ? AND fingerprint = ? "
                                        "ORDER BY version", (task, fingerprint)).fetchall()
                earlier = _earlier_release_attempts([_policy(r, with_artifact=False) for r in policies], alpha, delta)
                rows = [(i, e["delta"]) for i, e in enumerate(earlier, start=1)]
                conn.executemany(_ATTEMPT_SQL, [
                    (task, fingerprint, i, e["alpha"], e["delta"], e["delta"], now, e["n_calibration"],
                     e["last_trace_id"], int(e["certified"]))
                    for i, e in enumerate(earlier, start=1)
                ])
            attempt = (rows[-1][0] if rows else 0) + 1
            spent = float(spend(attempt))
            conn.execute(_ATTEMPT_SQL, (task, fingerprint, attempt, alpha, delta, spent, now, n_calibration,
                                        last_trace_id, None))
            return attempt, spent, math.fsum([r[1] for r in rows] + [spent])

        return self._write(insert, serial=True)

    def settle_attempt(self, task: str, fingerprint: str, attempt: int, certified: bool) -> None:
        """Record whether a reserved attempt's gate certified a threshold."""
        self._write(lambda conn: conn.execute(
            "UPDATE certification_attempts SET certified = ? WHERE task = ? AND fingerprint = ? AND attempt = ?",
            (int(certified), task, fingerprint, attempt),
        ))

    def _earlier_attempts_of(self, task: str, fingerprint: str) -> list[dict]:
        return _earlier_release_attempts(self.policies(task, fingerprint=fingerprint), 0.0, 0.0)

    # --- whole rows, for copying a task between stores --------------------------------------

    def export_rows(self, table: str, task: str) -> Iterator[list[tuple]]:
        """Every row of `task` in `table` as stored (ids of traces included), in chunks, in id order."""
        columns = COPY_TABLES[table]
        if "id" not in columns:  # task_versions: a few rows per task
            yield self._read(f"SELECT {', '.join(columns)} FROM {table} WHERE task = ? ORDER BY fingerprint", [task])
            return
        sql = f"SELECT {', '.join(columns)} FROM {table} WHERE task = ? AND id > ? ORDER BY id LIMIT {ITER_CHUNK}"
        last = 0
        while True:
            rows = self._read(sql, [task, last])
            if rows:
                yield rows
            if len(rows) < ITER_CHUNK:
                return
            last = rows[-1][0]

    def import_rows(self, chunks: dict[str, Iterable[list[tuple]]]) -> dict[str, int]:
        """Insert rows of `export_rows` (per table) in one transaction; trace ids are kept. Returns counts."""
        counts = dict.fromkeys(chunks, 0)

        def insert(conn: Any) -> None:
            for table, table_chunks in chunks.items():
                columns = COPY_TABLES[table]
                sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
                for rows in table_chunks:
                    conn.executemany(sql, rows)
                    counts[table] += len(rows)
            self._backend.after_explicit_ids(conn)

        self._write(insert, serial=True)
        return counts


def _row(trace: Trace) -> tuple:
    return (
        trace.task, trace.fingerprint, trace.input, input_hash(trace.input), trace.label, trace.source,
        trace.model, trace.latency_ms, trace.prompt_tokens, trace.completion_tokens, trace.cost_usd,
        trace.created_at, json.dumps(trace.metadata, ensure_ascii=False),
        None if trace.route is None else str(trace.route), trace.policy_version, trace.predicted, trace.score,
    )


def _trace(row: tuple) -> Trace:
    (id_, task, fingerprint, text, _hash, label, source, model, latency_ms,
     prompt_tokens, completion_tokens, cost_usd, created_at, metadata, route, policy_version, predicted, score) = row
    return Trace(
        task=task, input=text, label=label, source=source, fingerprint=fingerprint, model=model,
        latency_ms=latency_ms, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
        cost_usd=cost_usd, created_at=created_at, metadata=json.loads(metadata), route=route,
        policy_version=policy_version, predicted=predicted, score=score, id=id_,
    )


def _trace_filter(task: str, source: str | None, fingerprint: str | None) -> tuple[str, list[Any]]:
    where, params = "task = ?", [task]
    if fingerprint is not None:
        where += " AND fingerprint = ?"
        params.append(fingerprint)
    if source is not None:
        where += " AND source = ?"
        params.append(source)
    return where, params


def _policy_filter(task: str, fingerprint: str, status: str | None) -> tuple[str, list[Any]]:
    where, params = "task = ? AND fingerprint = ?", [task, fingerprint]
    if status is not None:
        where += " AND status = ?"
        params.append(status)
    return where, params


def _policy(row: tuple, *, with_artifact: bool) -> dict:
    keys = ["id", "task", "fingerprint", "version", "created_at", "status", "n_traces", "certificate"]
    policy = dict(zip(keys + (["artifact"] if with_artifact else []), row))
    try:
        certificate = json.loads(policy["certificate"])
        problem = None if isinstance(certificate, dict) else f"JSON {type(certificate).__name__}, not an object"
        if problem is None:
            unpacked_certificate(certificate)
    except (json.JSONDecodeError, TypeError, StoreError) as exc:
        problem = str(exc)
    if problem is not None:  # listed with a reason; Policy.from_row refuses to load it
        certificate = {"deployed": False, "reason_code": CORRUPT_CERTIFICATE,
                       "reason": f"policy v{policy['version']} has a corrupt certificate ({problem})"}
    policy["certificate"] = certificate
    return policy


_ATTEMPT_SQL = (f"INSERT INTO certification_attempts ({', '.join(migrations.ATTEMPT_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(migrations.ATTEMPT_COLUMNS))})")


def _earlier_release_attempts(policies: list[dict], alpha: float, delta: float) -> list[dict]:
    """The certification attempts (alpha, delta, n_calibration, last_trace_id, certified) behind the policy rows an
    earlier release wrote after its gate ran (a certificate without `attempt` and with calibration traces, or an
    unreadable one), oldest first; each spent its full delta. `alpha` and `delta` stand in where it does not say."""

    def number(value: Any, default: float) -> float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and 0 < value < 1
        return float(value) if ok else default

    def count(value: Any) -> int:
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0

    found = []
    for row in sorted(policies, key=lambda r: r["version"]):
        cert = row["certificate"]
        if "attempt" in cert:
            continue
        if count(cert.get("n_calibration")) or cert.get("reason_code") == CORRUPT_CERTIFICATE:
            found.append({"alpha": number(cert.get("alpha"), alpha), "delta": number(cert.get("delta"), delta),
                          "n_calibration": count(cert.get("n_calibration")),
                          "last_trace_id": count(cert.get("trace_max_id")), "certified": cert.get("deployed") is True})
    return found


def _event_floor(details: dict) -> int:
    """Highest trace id at a suspend or resume event, from its details (0 if it names none)."""
    return int(details.get("trace_max_id", 0))


def _json_or_none(body: str | None) -> Any:
    try:
        return json.loads(body) if body else None
    except json.JSONDecodeError:
        return None


@dataclass(frozen=True)
class Evidence:
    """Teacher traces of one task version for a fit: texts, labels, ids, and which are unselected."""

    texts: list[str]
    labels: list[str]
    ids: list[int]
    unselected: list[bool]
    created_at: list[float] = field(default_factory=list)
    audit: list[bool] = field(default_factory=list)  # recorded as an audit (calibrates at a higher fraction)


_OPEN_STORES: weakref.WeakSet[TraceStore] = weakref.WeakSet()


@atexit.register
def _close_open_stores() -> None:
    """Flush every store still open when the interpreter exits (after telling running refits to stop)."""
    stop_refits()
    for store in list(_OPEN_STORES):
        store.close()
