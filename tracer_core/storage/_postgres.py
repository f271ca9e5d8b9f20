"""The PostgreSQL side of TraceStore (psycopg 3): connections by URL, serial writes and refit locks
through advisory locks, retries of serialization failures, and every server message without secrets."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import pathlib
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from tracer_core.errors import StoreError
from tracer_core.storage import migrations
from tracer_core.storage._retry import retry_transient
from tracer_core.store_address import Secret, redact, split_url

CONNECT_TIMEOUT_S = 5
TCP_USER_TIMEOUT_MS = 10_000
T = TypeVar("T")
log = logging.getLogger("tracer.store")

_RETRYABLE = ("40001", "40P01", "55P03")  # serialization failure, deadlock, lock timeout
_SECRET_KEYS = ("password", "sslpassword")


@functools.lru_cache(maxsize=256)
def _pg_sql(sql: str) -> str:
    """The store's SQL uses `?` placeholders (SQLite's style); psycopg's are `%s`."""
    return sql.replace("?", "%s")


class PostgresConnection:
    """One thread's connection (autocommit; writes open an explicit transaction)."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw

    @property
    def usable(self) -> bool:
        return not (self.raw.closed or self.raw.broken)

    def execute(self, sql: str, params: Iterable[Any] = ()) -> Any:
        return self.raw.execute(_pg_sql(sql), tuple(params))

    def executemany(self, sql: str, rows: list[tuple]) -> None:
        with self.raw.cursor() as cursor:
            cursor.executemany(_pg_sql(sql), rows)

    def close(self) -> None:
        self.raw.close()


class PostgresBackend:
    """What is particular to a store in a PostgreSQL database (the tables of the URL's search_path)."""

    hour_sql = "floor(created_at / 3600)::bigint"
    problem: str | None = None  # a server store has no file to lose

    def __init__(self, url: str) -> None:
        parts = split_url(url)
        self.name = parts.shown
        self._secrets = parts.secrets
        if parts.problem is not None:  # libpq would read it otherwise than shown: it never sees it
            raise StoreError(f"trace store {self.name!r} is not a valid PostgreSQL URL: {parts.problem}")
        try:
            import psycopg  # imported when a PostgreSQL store is opened, never by `import tracer_core`
        except ImportError:
            raise StoreError(
                f"trace store {self.name!r} is a PostgreSQL URL but psycopg is not installed "
                "(pip install 'tracer-router[postgres]')"
            ) from None
        conninfo, problem = self._parse(parts.url)
        if problem is not None:
            raise StoreError(f"trace store {self.name!r} is not a valid PostgreSQL URL: {problem}")
        self._secrets = Secret((*self._secrets.reveal(), *(str(conninfo[k]) for k in _SECRET_KEYS if conninfo.get(k))))
        conninfo.setdefault("connect_timeout", CONNECT_TIMEOUT_S)
        # a server that vanishes from the network (no reset) fails a call within seconds, not minutes
        conninfo.setdefault("keepalives_idle", 10)
        conninfo.setdefault("tcp_user_timeout", TCP_USER_TIMEOUT_MS)
        conninfo.setdefault("application_name", "tracer")
        self._dsn = Secret(psycopg.conninfo.make_conninfo("", **conninfo))
        self._conninfo = {k: v for k, v in conninfo.items() if k not in _SECRET_KEYS}  # what may be shown
        self._schema = ""

    def _parse(self, url: Secret[str]) -> tuple[dict[str, Any], str | None]:
        """libpq's reading of the URL, or why it has none (raised by the caller: no libpq error is chained)."""
        import psycopg

        try:
            return psycopg.conninfo.conninfo_to_dict(url.reveal()), None
        except psycopg.Error as exc:
            return {}, self._clean(exc)
        except UnicodeDecodeError:  # psycopg reads libpq's percent-decoded values as UTF-8
            return {}, "a percent-escape in it does not decode to UTF-8 text"

    @property
    def path(self) -> str:
        """The URL without its password (what `TraceStore.path` shows for a server store)."""
        return self.name

    @property
    def spill_path(self) -> pathlib.Path:
        """Spilled traces stay on this host: $TRACER_SPILL_DIR or ~/.cache/tracer/spill, one file per database."""
        where = os.environ.get("TRACER_SPILL_DIR") or pathlib.Path.home() / ".cache" / "tracer" / "spill"
        info = self._conninfo
        key = "\0".join(str(info.get(k, "")) for k in ("host", "hostaddr", "port", "dbname", "user", "options"))
        name = f"{info.get('dbname') or info.get('user') or 'postgres'}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
        return pathlib.Path(where) / f"{name}.spill.jsonl"

    def _clean(self, exc: BaseException) -> str:
        """A server or driver message on one line, every secret of the URL hidden."""
        return " ".join(redact(str(exc), self._secrets.reveal()).split())

    def _raw_connect(self) -> Any:
        import psycopg

        try:
            return psycopg.connect(self._dsn.reveal(), autocommit=True)
        except psycopg.Error as exc:
            problem = self._clean(exc)
        raise StoreError(f"cannot reach trace store {self.name!r}: {problem}")  # outside `except`: nothing chained

    def connect(self) -> PostgresConnection:
        return PostgresConnection(self._raw_connect())

    def opened(self) -> None:
        try:
            self.spill_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # the store works without it; a trace that must be spilled is then logged as lost
            log.error("cannot create the spill directory %s (%s); set TRACER_SPILL_DIR", self.spill_path.parent, exc)

    def check(self, some_conn: Callable[[], PostgresConnection | None]) -> None:
        """Nothing to check before each use (a broken connection is replaced by the store)."""

    def retry(self, fn: Callable[[], T], budget_s: float) -> T:
        """Run `fn`, retrying serialization failures, deadlocks and lock timeouts; map errors to StoreErrors."""
        import psycopg
        from psycopg import errors as pg_errors

        try:
            return retry_transient(fn, budget_s, lambda exc: getattr(exc, "sqlstate", None) in _RETRYABLE)
        except psycopg.Error as exc:
            unreachable = isinstance(exc, psycopg.OperationalError) and not isinstance(exc, pg_errors.LockNotAvailable)
            problem = self._clean(exc)
        # raised outside `except`, so no server error (which may quote the URL) is chained to it
        raise StoreError(f"trace store {self.name!r}{' is unreachable' if unreachable else ''}: {problem}")

    def _key(self, *parts: str) -> int:
        """A 64-bit advisory lock key for `parts` in this database and schema."""
        digest = hashlib.sha256("\0".join((self._schema, *parts)).encode()).digest()
        return int.from_bytes(digest[:8], "big", signed=True)

    def write(self, conn: PostgresConnection, fn: Callable[[PostgresConnection], T], *, budget_s: float,
              serial: bool) -> T:
        """`fn(conn)` in one transaction; `serial` ones run one at a time (a transaction advisory lock),
        as SQLite's BEGIN IMMEDIATE does for every write. Waits at most `budget_s` for locks."""
        raw = conn.raw

        def attempt() -> T:
            with raw.transaction():
                raw.execute(f"SET LOCAL lock_timeout = {max(int(budget_s * 1000), 1)}")
                if serial:
                    raw.execute("SELECT pg_advisory_xact_lock(%s)", (self._key("write"),))
                return fn(conn)

        return self.retry(attempt, budget_s)

    def migrate(self, conn: PostgresConnection, budget_s: float) -> None:
        """Apply the missing schema steps under the write lock; refuse tables tracer did not create."""
        self._schema = self.retry(lambda: conn.execute("SELECT current_schema()").fetchone()[0] or "", budget_s)
        steps = migrations.MIGRATIONS
        table = migrations.MIGRATIONS_TABLE

        def upgrade(tx: PostgresConnection) -> None:
            ours = tx.execute("SELECT to_regclass(?) IS NOT NULL", (table,)).fetchone()[0]
            if not ours:
                taken = [t for t in ("traces", "policies") if tx.execute("SELECT to_regclass(?)", (t,)).fetchone()[0]]
                if taken:
                    raise StoreError(
                        f"trace store {self.name!r} already has tables tracer did not create ({', '.join(taken)}); "
                        "use another database, or another schema (add ?options=-csearch_path%3Dtracer to the URL)"
                    )
                tx.execute(f"CREATE TABLE {table} (name TEXT PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)")
            applied = [r[0] for r in tx.execute(f"SELECT name FROM {table} ORDER BY applied_at, name").fetchall()]
            for step in migrations.pending(applied, steps, repr(self.name)):
                for ddl in step.postgres:
                    tx.execute(ddl)
                if step.rows is not None:
                    step.rows(tx)
                tx.execute(f"INSERT INTO {table} (name, applied_at) VALUES (?, ?)", (step.name, time.time()))

        self.write(conn, upgrade, budget_s=budget_s, serial=True)

    def after_explicit_ids(self, conn: PostgresConnection) -> None:
        """After rows were inserted with their ids (a copy), new rows must get higher ones."""
        for table in ("traces", "policies", "suspensions", "certification_attempts"):
            conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                         f"(SELECT coalesce(max(id), 0) + 1 FROM {table}), false)")

    @contextlib.contextmanager
    def refit_lock(self, task: str, fingerprint: str) -> Iterator[bool]:
        """A session advisory lock held on its own connection: True if this process (on any host)
        may refit the task version now. Closing the connection (or losing it) releases the lock."""
        raw = self._raw_connect()
        try:
            acquired = self.retry(
                lambda: raw.execute("SELECT pg_try_advisory_lock(%s)", (self._key("refit", task, fingerprint),)).fetchone()[0],
                1.0,
            )
            yield bool(acquired)
        finally:
            raw.close()
