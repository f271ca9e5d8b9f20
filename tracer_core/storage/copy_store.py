"""Copy tasks (traces, task versions, policies, suspensions) from one store to another, e.g. SQLite to PostgreSQL.

Rows are copied as stored, ids included (certificates and suspensions refer to trace ids), so the
target routes exactly as the source did. A task the target already holds is refused, never merged.
"""

from __future__ import annotations

from tracer_core.errors import StoreError
from tracer_core.storage.store import COPY_TABLES, TraceStore


def copy_tasks(source: TraceStore, target: TraceStore, task: str | None = None) -> dict[str, int]:
    """Copy `task` (default: every task of `source`) into `target`; returns the rows copied per table."""
    tasks = sorted({v["task"] for v in source.versions()}) if task is None else [task]
    if task is not None and not source.versions(task):
        raise StoreError(f"task {task!r} has no traces or policies in {source.name!r}")
    held = sorted(t for t in tasks if target.versions(t))
    if held:
        raise StoreError(f"{target.name!r} already holds task {', '.join(map(repr, held))}; "
                         "tracer copy does not merge tasks: copy into another store, or delete them there first")
    totals = dict.fromkeys(COPY_TABLES, 0)
    for name in tasks:
        try:
            counts = target.import_rows({table: source.export_rows(table, name) for table in COPY_TABLES})
        except StoreError as exc:
            raise StoreError(f"copying task {name!r} to {target.name!r} failed, nothing of it was copied: {exc} "
                             "(rows with the same ids already there? copy into an empty store)") from None
        for table, n in counts.items():
            totals[table] += n
    return totals
