"""The SQLite side of TraceStore: one file (WAL), BEGIN IMMEDIATE writes, busy retries, file locks."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import importlib
import logging
import pathlib
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, TYPE_CHECKING, Any, TypeVar

from tracer_core.errors import CorruptStoreError, StoreError
from tracer_core.storage import migrations
from tracer_core.storage._retry import retry_transient
from tracer_core.storage.guard import FileIdentity, refuse_foreign

if TYPE_CHECKING:
    import sqlite_utils

BUSY_TIMEOUT_S = 30.0
T = TypeVar("T")
log = logging.getLogger("tracer.store")


def _locked(exc: Exception) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc))


class SQLiteConnection:
    """One thread's connection; `db` (sqlite-utils, made when a migration step first needs it) is what the
    migration steps use."""

    usable = True  # an SQLite connection does not break

    def __init__(self, raw: sqlite3.Connection) -> None:
        self.raw = raw

    @functools.cached_property
    def db(self) -> sqlite_utils.Database:
        import sqlite_utils

        return sqlite_utils.Database(self.raw, execute_plugins=False)

    def execute(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Cursor:
        return self.raw.execute(sql, tuple(params))

    def executemany(self, sql: str, rows: list[tuple]) -> None:
        self.raw.executemany(sql, rows)

    def close(self) -> None:
        self.raw.close()


class SQLiteBackend:
    """What is particular to a store in one SQLite file."""

    hour_sql = "CAST(created_at / 3600 AS INTEGER)"

    def __init__(self, path: pathlib.Path, *, adopt_foreign_db: bool) -> None:
        # sqlite-utils is loaded when a store is made (as psycopg is for a server), never by `import tracer_core`:
        # the open on the store's reading thread then fits the first call's budget
        importlib.import_module("sqlite_utils")
        self.path = path
        self.name = str(path)
        if path.is_dir():
            raise StoreError(f"cannot open trace store {self.name!r}: it is a directory")
        if not path.parent.is_dir():
            raise StoreError(f"cannot open trace store {self.name!r}: directory {str(path.parent)!r} does not exist")
        refuse_foreign(path, adopt_foreign_db=adopt_foreign_db)
        self._identity = FileIdentity(path)

    @property
    def spill_path(self) -> pathlib.Path:
        return self.path.with_name(self.path.name + ".spill.jsonl")

    @property
    def problem(self) -> str | None:
        """Why the store must not be written any more (its file was deleted or replaced), or None."""
        return None if self._identity.problem is None else f"trace store file {self._identity.problem} while open"

    def connect(self) -> SQLiteConnection:
        try:
            raw = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open trace store {self.name!r}: {exc}") from None
        try:
            self.retry(lambda: raw.execute("PRAGMA journal_mode=WAL").fetchone(), BUSY_TIMEOUT_S)
            raw.execute("PRAGMA synchronous=NORMAL")
        except StoreError:
            raw.close()
            raise
        return SQLiteConnection(raw)

    def opened(self) -> None:
        """The store is open and migrated: remember which file it is."""
        self._identity.capture()

    def check(self, some_conn: Callable[[], SQLiteConnection | None]) -> None:
        """Raise StoreError if the file was deleted or replaced; the first time, move this process's
        WAL frames into the old file and truncate the `-wal` beside the path, so whoever opens the
        new file does not apply them to it."""
        def empty_old_wal() -> None:
            conn = some_conn()
            if conn is not None:
                try:
                    conn.raw.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
                except sqlite3.Error as exc:
                    log.error("could not empty the write-ahead log of the moved store file: %s", exc)

        self._identity.check(empty_old_wal)

    def retry(self, fn: Callable[[], T], budget_s: float) -> T:
        """Run `fn`, retrying while the database is locked; map SQLite errors to StoreErrors."""
        try:
            return retry_transient(fn, budget_s, _locked)
        except sqlite3.OperationalError as exc:
            raise StoreError(f"trace store {self.name!r}: {exc}") from None
        except sqlite3.DatabaseError as exc:
            if "not a database" in str(exc) or "malformed" in str(exc):
                raise CorruptStoreError(f"trace store {self.name!r} is not a usable SQLite database ({exc})") from None
            raise StoreError(f"trace store {self.name!r}: {exc}") from None

    def write(self, conn: SQLiteConnection, fn: Callable[[SQLiteConnection], T], *, budget_s: float,
              serial: bool) -> T:
        """`fn(conn)` in one BEGIN IMMEDIATE transaction (always serial), waiting at most `budget_s` for the lock."""
        raw = conn.raw

        def attempt() -> T:
            raw.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
                raw.execute("COMMIT")
                return result
            except BaseException:
                if raw.in_transaction:
                    raw.execute("ROLLBACK")
                raise

        if budget_s >= BUSY_TIMEOUT_S:
            return self.retry(attempt, budget_s)
        raw.execute(f"PRAGMA busy_timeout = {int(budget_s * 1000)}")
        try:
            return self.retry(attempt, budget_s)
        finally:
            raw.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")

    def migrate(self, conn: SQLiteConnection, budget_s: float) -> None:
        """Apply the missing schema steps; refuse a store of a newer tracer."""
        steps = migrations.MIGRATIONS
        version, applied, recorded = self.retry(lambda: self._applied(conn), budget_s)
        if version > len(steps):
            raise StoreError(
                f"trace store {self.name!r} has schema version {version}, newer than this "
                f"tracer supports ({len(steps)}); upgrade tracer"
            )
        if recorded and not migrations.pending(applied, steps, repr(self.name)):
            return

        def upgrade(tx: SQLiteConnection) -> None:
            _, applied, _ = self._applied(tx)  # re-read under the lock
            tx.execute(f"CREATE TABLE IF NOT EXISTS {migrations.MIGRATIONS_TABLE} "
                       "(name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
            for step in migrations.pending(applied, steps, repr(self.name)):
                step.sqlite(tx.db)
                if step.rows is not None:
                    step.rows(tx)
                applied.append(step.name)
            tx.executemany(f"INSERT OR IGNORE INTO {migrations.MIGRATIONS_TABLE} (name, applied_at) VALUES (?, ?)",
                           [(name, time.time()) for name in applied])
            tx.execute(f"PRAGMA user_version = {len(applied)}")

        self.write(conn, upgrade, budget_s=budget_s, serial=True)

    @staticmethod
    def _applied(conn: SQLiteConnection) -> tuple[int, list[str], bool]:
        """(user_version, names of the steps done, whether they are recorded in the migrations table).
        A store of an earlier release has no table: its user_version counts the first steps."""
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        recorded = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                                (migrations.MIGRATIONS_TABLE,)).fetchone() is not None
        if recorded:
            names = [r[0] for r in conn.execute(f"SELECT name FROM {migrations.MIGRATIONS_TABLE} ORDER BY rowid")]
        else:
            names = [step.name for step in migrations.MIGRATIONS[:version]]
        return version, names, recorded

    def after_explicit_ids(self, conn: SQLiteConnection) -> None:
        """Nothing to do: an INTEGER PRIMARY KEY continues after the highest id."""

    @contextlib.contextmanager
    def refit_lock(self, task: str, fingerprint: str) -> Iterator[bool]:
        """A file lock beside the store: True if this process may refit the task version now."""
        with ProcessLock(lock_path(self.path, task, fingerprint)) as acquired:
            yield acquired


def lock_path(store_path: pathlib.Path, task: str, fingerprint: str) -> pathlib.Path:
    key = hashlib.sha256(f"{task}\0{fingerprint}".encode()).hexdigest()[:16]
    return store_path.with_name(f"{store_path.name}.refit-{key}.lock")


class ProcessLock:
    """A non-blocking exclusive file lock: `with ProcessLock(path) as acquired:`."""

    def __init__(self, path: pathlib.Path):
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
