"""Checks that keep the trace store honest about its file: not another application's database,
and still the file that was opened (not deleted or replaced while the process runs)."""

from __future__ import annotations

import logging
import os
import pathlib
import sqlite3
from collections.abc import Callable

from tracer_core.errors import StoreError

log = logging.getLogger("tracer.store")

TRACER_TABLES = frozenset({"traces", "policies"})


def refuse_foreign(path: pathlib.Path, *, adopt_foreign_db: bool) -> None:
    """Raise if `path` is an SQLite database with tables but no tracer schema (unless adopting it).

    Opens the file read-only, so a refused file is left exactly as it was (no tables, no WAL).
    """
    if adopt_foreign_db or not path.is_file() or path.stat().st_size == 0:
        return
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            conn.close()
    except sqlite3.Error:
        return  # not readable as SQLite: opening the store reports it as corrupt
    ours = TRACER_TABLES <= tables or (version >= 1 and tables & TRACER_TABLES)
    if tables and not ours:
        shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        raise StoreError(
            f"{str(path)!r} is an SQLite database of another application (tables: {shown}); tracer "
            "will not add its tables to it. Use another file, or pass adopt_foreign_db=True "
            "(CLI: --adopt-foreign-db) to add tracer's tables to this one"
        )


class FileIdentity:
    """The (device, inode) of the store file when it was opened; notices deletion or replacement."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = pathlib.Path(os.path.abspath(path))
        self._identity: tuple[int, int] | None = None
        self.problem: str | None = None

    def capture(self) -> None:
        st = os.stat(self.path)
        self._identity = (st.st_dev, st.st_ino)

    def check(self, on_change: Callable[[], None]) -> None:
        """Raise StoreError (logging loudly, once) if the file at the path is not the opened one;
        `on_change` runs once, when the change is first noticed."""
        if self.problem is None and self._identity is not None:
            try:
                st = os.stat(self.path)
                if (st.st_dev, st.st_ino) != self._identity:
                    self.problem = "was replaced by another file"
            except FileNotFoundError:
                self.problem = "was deleted"
            if self.problem is not None:
                log.error(
                    "trace store file %s %s while this process had it open: tracer stops writing to it, "
                    "later traces go to the spill file and every call to the LLM; restart the process to "
                    "open (or create) the file now at that path, which replays the spill file",
                    self.path, self.problem,
                )
                on_change()
        if self.problem is not None:
            raise StoreError(f"trace store file {str(self.path)!r} {self.problem} while open; restart to reopen it")
