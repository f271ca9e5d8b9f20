"""TraceStore: traces and policies in one SQLite file (sqlite-utils, WAL, versioned schema)."""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import pathlib
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import sqlite_utils

from tracer_core.decision import UNSELECTED
from tracer_core.errors import CorruptStoreError, PolicyError, StoreError
from tracer_core.spill import SpillFile
from tracer_core.store_guard import FileIdentity, refuse_foreign
from tracer_core.trace import SOURCES, Trace, validate
from tracer_core.writer import DEFAULT_FLUSH_TIMEOUT_S, BackgroundWriter, FlushReport

DEFAULT_DB = "tracer.db"
BUSY_TIMEOUT_S = 30.0
LOCK_RETRY_S = 60.0
WRITER_LOCK_BUDGET_S = 2.0  # the background writer gives up on a locked store this fast, then spills
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


def input_hash(text: str) -> str:
    """Short stable hash of an input text (first 16 hex chars of sha256)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def resolve_path(path: str | os.PathLike | None) -> pathlib.Path:
    """The store path: the argument, else $TRACER_DB, else `tracer.db`."""
    return pathlib.Path(path if path is not None else os.environ.get("TRACER_DB") or DEFAULT_DB)


# --- schema migrations: named steps, run in order; PRAGMA user_version counts the steps done ---

MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = []


def migration(step: Callable[[sqlite_utils.Database], None]) -> Callable[[sqlite_utils.Database], None]:
    """Register a schema step (the order of definition is the order of application)."""
    MIGRATIONS.append(step)
    return step


@migration
def m001_traces_and_policies(db: sqlite_utils.Database) -> None:
    db.create_table(
        "traces",
        {
            "id": int, "task": str, "fingerprint": str, "input": str, "input_hash": str,
            "label": str, "source": str, "model": str, "latency_ms": float,
            "prompt_tokens": int, "completion_tokens": int, "cost_usd": float,
            "created_at": float, "metadata": str,
        },
        pk="id",
        not_null=["task", "fingerprint", "input", "input_hash", "label", "source", "created_at", "metadata"],
        defaults={"fingerprint": "", "metadata": "{}"},
    )
    traces = db.table("traces")
    traces.create_index(["task", "source", "id"], index_name="idx_traces_task_source_id")
    traces.create_index(["task", "fingerprint", "source", "id"], index_name="idx_traces_task_fp_source_id")
    traces.create_index(["task", "created_at"], index_name="idx_traces_task_created")
    db.create_table(
        "policies",
        {
            "id": int, "task": str, "fingerprint": str, "version": int, "created_at": float,
            "status": str, "n_traces": int, "certificate": str, "artifact": bytes,
        },
        pk="id",
        not_null=["task", "fingerprint", "version", "created_at", "status", "n_traces", "certificate"],
    )
    db.table("policies").create_index(
        ["task", "fingerprint", "version"], index_name="idx_policies_task_fp_version", unique=True
    )


@migration
def m002_routing_context(db: sqlite_utils.Database) -> None:
    """Each trace keeps how it was routed; task versions keep what they describe; suspensions are logged."""
    traces = db.table("traces")
    for name, kind in (("route", str), ("policy_version", int), ("predicted", str), ("score", float)):
        traces.add_column(name, kind)
    # traces of the previous release kept the routing reason and policy in their metadata
    db.execute(
        "UPDATE traces SET route = json_extract(metadata, '$.deferred_reason'), "
        "policy_version = json_extract(metadata, '$.policy_version') "
        "WHERE json_extract(metadata, '$.deferred_reason') IS NOT NULL"
    )
    db.execute("UPDATE traces SET route = 'handled', policy_version = json_extract(metadata, '$.policy_version'), "
               "score = json_extract(metadata, '$.score') WHERE source = 'surrogate'")
    db.execute("UPDATE traces SET route = 'not_routable' WHERE route IN "
               "('not_ending_with_user_message', 'tool_conversation', 'no_user_message')")
    db.execute("UPDATE traces SET route = NULL WHERE route = 'not_checked'")
    db.create_table(
        "task_versions",
        {"task": str, "fingerprint": str, "origin": str, "description": str, "created_at": float},
        pk=("task", "fingerprint"),
        not_null=["task", "fingerprint", "description", "created_at"],
    )
    db.create_table(
        "suspensions",
        {"id": int, "task": str, "fingerprint": str, "created_at": float, "action": str, "reason": str, "details": str},
        pk="id",
        not_null=["task", "fingerprint", "created_at", "action", "reason", "details"],
    )
    db.table("suspensions").create_index(["task", "fingerprint", "id"], index_name="idx_suspensions_task_fp_id")
    traces.create_index(["task", "fingerprint", "route", "id"], index_name="idx_traces_task_fp_route_id")


SCHEMA_VERSION = len(MIGRATIONS)


class TraceStore:
    """The one place traces and policies are kept. Safe to share between threads and processes.

    A file that is an SQLite database of another application is refused unless `adopt_foreign_db`.
    Traces left in the spill file by an earlier run are replayed when the store opens.
    """

    def __init__(
        self, path: str | os.PathLike | None = None, *, queue_size: int = 10_000, adopt_foreign_db: bool = False
    ) -> None:
        self.path = resolve_path(path)
        self._queue_size = queue_size
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._writer: BackgroundWriter | None = None
        self._closed = False
        self._pid = os.getpid()
        self._check_path()
        refuse_foreign(self.path, adopt_foreign_db=adopt_foreign_db)
        self._identity = FileIdentity(self.path)
        self._migrate(self._db())
        self._identity.capture()
        self._replay_spill_at_start()
        _OPEN_STORES.add(self)

    @property
    def closed(self) -> bool:
        return self._closed

    # --- connections ------------------------------------------------------------------------

    def _check_path(self) -> None:
        if self.path.is_dir():
            raise StoreError(f"cannot open trace store {str(self.path)!r}: it is a directory")
        parent = self.path.parent
        if not parent.is_dir():
            raise StoreError(f"cannot open trace store {str(self.path)!r}: directory {str(parent)!r} does not exist")

    def _db(self) -> sqlite_utils.Database:
        """This thread's connection (each thread, and the writer thread, gets its own)."""
        if self._closed:
            raise StoreError(f"trace store {str(self.path)!r} is closed")
        if os.getpid() != self._pid:
            self._after_fork()
        self._identity.check(self._empty_old_wal)
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._connect()
            self._local.db = db
        return db

    def _connect(self) -> sqlite_utils.Database:
        try:
            conn = sqlite3.connect(
                str(self.path), timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open trace store {str(self.path)!r}: {exc}") from None
        try:
            self._retry_locked(lambda: conn.execute("PRAGMA journal_mode=WAL").fetchone())
            conn.execute("PRAGMA synchronous=NORMAL")
            db = sqlite_utils.Database(conn, execute_plugins=False)
        except StoreError:
            conn.close()
            raise
        with self._lock:
            self._conns.append(conn)
        return db

    def _empty_old_wal(self) -> None:
        """The file was deleted or replaced: move this process's WAL frames into the old file and
        truncate the `-wal` beside the path, so whoever opens the new file does not apply them to it."""
        db = getattr(self._local, "db", None)
        with self._lock:
            conn = db.conn if db is not None else (self._conns[0] if self._conns else None)
        if conn is not None:
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except sqlite3.Error as exc:
                log.error("could not empty the write-ahead log of the moved store file: %s", exc)

    def _after_fork(self) -> None:
        """A forked child must not reuse the parent's connections or writer thread."""
        self._local = threading.local()
        self._conns = []
        self._lock = threading.Lock()
        self._writer = None
        self._pid = os.getpid()

    def _retry_locked(self, fn: Callable[[], T], budget_s: float = LOCK_RETRY_S) -> T:
        """Run `fn`, retrying while the database is locked; map SQLite errors to StoreErrors."""
        deadline = time.monotonic() + budget_s
        delay = 0.01
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                message = str(exc)
                if ("locked" in message or "busy" in message) and time.monotonic() < deadline:
                    time.sleep(delay)
                    delay = min(delay * 2, 0.5)
                    continue
                raise StoreError(f"trace store {str(self.path)!r}: {message}") from None
            except sqlite3.DatabaseError as exc:
                if "not a database" in str(exc) or "malformed" in str(exc):
                    raise CorruptStoreError(
                        f"trace store {str(self.path)!r} is not a usable SQLite database ({exc})"
                    ) from None
                raise StoreError(f"trace store {str(self.path)!r}: {exc}") from None

    def _write(self, fn: Callable[[sqlite3.Connection], T], budget_s: float = LOCK_RETRY_S) -> T:
        """Run `fn(conn)` in one BEGIN IMMEDIATE transaction, retrying while locked (for `budget_s`)."""
        conn = self._db().conn

        def attempt() -> T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
                conn.execute("COMMIT")
                return result
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

        return self._retry_locked(attempt, budget_s)

    def _read(self, sql: str, params: Iterable[Any] = ()) -> list[tuple]:
        conn = self._db().conn
        return self._retry_locked(lambda: conn.execute(sql, tuple(params)).fetchall())

    def _migrate(self, db: sqlite_utils.Database) -> None:
        version = self._retry_locked(lambda: db.conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"trace store {str(self.path)!r} has schema version {version}, newer than this "
                f"tracer supports ({SCHEMA_VERSION}); upgrade tracer"
            )
        if version == SCHEMA_VERSION:
            return

        def upgrade(conn: sqlite3.Connection) -> None:
            current = conn.execute("PRAGMA user_version").fetchone()[0]  # re-read under the lock
            for step in MIGRATIONS[current:]:
                step(db)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

        self._write(upgrade)

    # --- traces -------------------------------------------------------------------------------

    def append(self, trace: Trace) -> int:
        """Validate and store one trace now; returns its id."""
        row = _row(validate(trace))
        trace.id = self._write(lambda conn: conn.execute(_INSERT_SQL, row).lastrowid)
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

        def insert(conn: sqlite3.Connection) -> int:
            new = [r for r in rows if conn.execute(_EXISTS_SQL, (r[0], r[11], r[3], r[5])).fetchone() is None]
            conn.executemany(_INSERT_SQL, new)
            return len(new)

        return self._write_bounded(insert)

    def enqueue(self, trace: Trace) -> None:
        """Validate now (raising in the caller), then hand off to the background writer (never blocks)."""
        validate(trace)
        self._background().put(trace)

    @property
    def spill_path(self) -> pathlib.Path:
        """Where traces that cannot reach the store are kept until replayed (JSONL)."""
        return self.path.with_name(self.path.name + ".spill.jsonl")

    @property
    def degraded(self) -> str | None:
        """Why traces are not being written to the store (they go to the spill file), or None."""
        if self._identity.problem is not None:
            return f"trace store file {self._identity.problem} while open"
        writer = self._writer
        return writer.degraded if writer is not None else None

    def flush(self, timeout: float | None = DEFAULT_FLUSH_TIMEOUT_S) -> FlushReport:
        """Wait at most `timeout` s until every queued trace is committed; report what was not."""
        if self._writer is not None and os.getpid() == self._pid:
            return self._writer.flush(timeout)
        return FlushReport(degraded=self.degraded)

    def close(self, timeout: float | None = DEFAULT_FLUSH_TIMEOUT_S) -> FlushReport:
        """Flush queued traces (at most `timeout` s), stop the writer, close connections. Idempotent."""
        if self._closed:
            return FlushReport()
        if os.getpid() != self._pid:
            self._after_fork()
        report = self._writer.stop(timeout) if self._writer is not None else FlushReport(degraded=self.degraded)
        self._closed = True
        with self._lock:
            for conn in self._conns:
                conn.close()
            self._conns.clear()
        _OPEN_STORES.discard(self)
        return report

    def __enter__(self) -> TraceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _background(self) -> BackgroundWriter:
        if self._closed:
            raise StoreError(f"trace store {str(self.path)!r} is closed")
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

    def _append_from_writer(self, traces: list[Trace]) -> None:
        """The writer thread's commit: like append_many, but gives up on a locked store quickly."""
        rows = [_row(trace) for trace in traces]
        self._write_bounded(lambda conn: conn.executemany(_INSERT_SQL, rows))

    def _probe_write(self) -> None:
        """Raise unless a write transaction on `traces` can start (inserts nothing)."""
        self._write_bounded(lambda conn: conn.execute("INSERT INTO traces (task) SELECT NULL WHERE 0"))

    def _write_bounded(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """`_write` that waits for a locked store at most about 2 x WRITER_LOCK_BUDGET_S."""
        conn = self._db().conn
        conn.execute(f"PRAGMA busy_timeout = {int(WRITER_LOCK_BUDGET_S * 1000)}")
        try:
            return self._write(fn, WRITER_LOCK_BUDGET_S)
        finally:
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")

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
        """Per hour since `since`: routed calls, those out of distribution, those deferred (audits excluded)."""
        rows = self._read(
            "SELECT CAST(created_at / 3600 AS INTEGER), count(*), sum(route = 'out_of_distribution'), "
            "sum(source = 'teacher') FROM traces WHERE task = ? AND fingerprint = ? AND created_at >= ? "
            "AND route IS NOT NULL AND route NOT IN ('audit', 'suspended', 'no_policy') GROUP BY 1 ORDER BY 1",
            [task, fingerprint, since],
        )
        return [{"hour_start": h * 3600.0, "calls": n, "out_of_distribution": ood or 0, "deferred": d or 0}
                for h, n, ood, d in rows]

    def teacher_evidence(self, task: str, fingerprint: str, *, since_id: int = 0) -> Evidence:
        """Teacher traces of one task version (id > since_id), with which of them are unselected.

        A trace is unselected (a uniform sample of traffic, usable as calibration evidence)
        when the LLM answered it whatever the input was: no policy was in force, it was an
        audit, the task was suspended, or it was recorded without a routing decision.
        """
        unselected = ", ".join(f"'{r}'" for r in sorted(UNSELECTED))
        rows = self._read(
            f"SELECT input, label, id, route IS NULL OR route IN ({unselected}) FROM traces "
            "WHERE task = ? AND fingerprint = ? AND source = 'teacher' AND id > ? ORDER BY id",
            [task, fingerprint, since_id],
        )
        return Evidence([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], [bool(r[3]) for r in rows])

    # --- task versions ------------------------------------------------------------------------

    def register_version(self, task: str, fingerprint: str, description: dict, origin: str = "") -> None:
        """Remember what a task version describes (first registration wins)."""
        body = json.dumps(description, sort_keys=True, ensure_ascii=False, default=str)
        self._write(lambda conn: conn.execute(
            "INSERT OR IGNORE INTO task_versions (task, fingerprint, origin, description, created_at) "
            "VALUES (?, ?, ?, ?, ?)", (task, fingerprint, origin, body, time.time()),
        ))

    def versions(self, task: str | None = None) -> list[dict]:
        """Every (task, fingerprint) with traces, a policy or a description, newest activity first."""
        where, params = ("WHERE task = ?", [task]) if task is not None else ("", [])
        rows = self._read(
            f"SELECT task, fingerprint, sum(source = 'teacher'), sum(source = 'surrogate'), max(created_at) "
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
            "INSERT INTO suspensions (task, fingerprint, created_at, action, reason, details) VALUES (?, ?, ?, ?, ?, ?)",
            (task, fingerprint, time.time(), action, reason, body),
        ).lastrowid)

    def suspension(self, task: str, fingerprint: str) -> dict | None:
        """The suspend event in force for a task version (the newest event, if it is a suspend), else None."""
        rows = self._read(
            "SELECT id, created_at, action, reason, details FROM suspensions WHERE task = ? AND fingerprint = ? "
            "ORDER BY id DESC LIMIT 1", [task, fingerprint],
        )
        if not rows or rows[0][2] != "suspend":
            return None
        id_, created_at, _, reason, details = rows[0]
        return {"id": id_, "since": created_at, "reason": reason, "details": _json_or_none(details) or {}}

    def suspension_floor(self, task: str, fingerprint: str) -> int:
        """Highest trace id at the newest suspension: later fits use only traces after it (0 if never suspended)."""
        return self._event_trace_id(task, fingerprint, "AND action = 'suspend'")

    def last_event_trace_id(self, task: str, fingerprint: str) -> int:
        """Highest trace id at the newest suspend or resume event (0 if none): the monitor starts after it."""
        return self._event_trace_id(task, fingerprint, "")

    def _event_trace_id(self, task: str, fingerprint: str, condition: str) -> int:
        rows = self._read(
            f"SELECT details FROM suspensions WHERE task = ? AND fingerprint = ? {condition} ORDER BY id DESC LIMIT 1",
            [task, fingerprint],
        )
        return int((_json_or_none(rows[0][0]) or {}).get("trace_max_id", 0)) if rows else 0

    def audit_outcomes(self, task: str, fingerprint: str, *, since_id: int = 0) -> list[tuple[int, bool]]:
        """(id, LLM agreed with the policy) of audits the policy would have answered, id > since_id, in order."""
        rows = self._read(
            "SELECT id, label = predicted FROM traces WHERE task = ? AND fingerprint = ? AND source = 'teacher' "
            "AND route = 'audit' AND predicted IS NOT NULL AND id > ? ORDER BY id",
            [task, fingerprint, since_id],
        )
        return [(r[0], bool(r[1])) for r in rows]

    # --- policies -----------------------------------------------------------------------------

    def save_policy(
        self, task: str, *, fingerprint: str, certificate: dict, artifact: bytes, status: str, n_traces: int
    ) -> int:
        """Store a new policy version of (task, fingerprint); returns the version number."""
        if not isinstance(artifact, (bytes, bytearray)):
            raise PolicyError(f"policy artifact must be bytes, got {type(artifact).__name__}")
        if not isinstance(status, str) or not status:
            raise PolicyError(f"policy status must be a non-empty string, got {status!r}")
        try:
            cert_json = json.dumps(certificate, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise PolicyError(f"policy certificate is not JSON-serialisable: {exc}") from None

        def insert(conn: sqlite3.Connection) -> int:
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

        return self._write(insert)

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

    def policies(self, task: str, *, fingerprint: str | None = None) -> list[dict]:
        """Every policy version of `task` (without artifacts), newest first."""
        sql = f"SELECT {_POLICY_COLUMNS} FROM policies WHERE task = ?"
        params: list[Any] = [task]
        if fingerprint is not None:
            sql += " AND fingerprint = ?"
            params.append(fingerprint)
        rows = self._read(sql + " ORDER BY created_at DESC, version DESC", params)
        return [_policy(row, with_artifact=False) for row in rows]


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
    except (json.JSONDecodeError, TypeError) as exc:
        problem = str(exc)
    if problem is not None:  # listed with a reason; Policy.from_row refuses to load it
        certificate = {"deployed": False, "reason_code": CORRUPT_CERTIFICATE,
                       "reason": f"policy v{policy['version']} has a corrupt certificate ({problem})"}
    policy["certificate"] = certificate
    return policy


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


_OPEN_STORES: weakref.WeakSet[TraceStore] = weakref.WeakSet()


@atexit.register
def _close_open_stores() -> None:
    """Flush every store still open when the interpreter exits."""
    for store in list(_OPEN_STORES):
        store.close()
