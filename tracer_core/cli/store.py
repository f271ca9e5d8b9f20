"""Store commands of the `tracer` CLI: tasks, import, export (mirroring the TraceStore API)."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import click
from rich.table import Table

from tracer_core.errors import TracerError
from tracer_core.report.terminal import plain, plain_console
from tracer_core.serving import versions
from tracer_core.storage.copy_store import copy_tasks
from tracer_core.storage.jsonl import export_jsonl, import_jsonl
from tracer_core.storage.store import DEFAULT_DB, TraceStore
from tracer_core.storage.trace import SOURCES
from tracer_core.store_address import is_postgres_url

db_option = click.option(
    "--db",
    envvar="TRACER_DB",
    default=DEFAULT_DB,
    show_default=True,
    help="Trace store: an SQLite file, or a postgresql:// URL (env TRACER_DB).",
)


adopt_option = click.option(
    "--adopt-foreign-db", is_flag=True,
    help="Add tracer's tables to an SQLite file that already holds another application's tables.",
)


def require_db(db: str) -> None:
    """Reading commands must not create an empty store file by accident (a server store is opened as it is)."""
    if not is_postgres_url(db) and not Path(db).is_file():
        raise click.ClickException(f"trace store {db!r} does not exist")


@contextlib.contextmanager
def open_store(db: str, *, adopt_foreign_db: bool = False) -> Iterator[TraceStore]:
    """Open the store, turning any TracerError into a one-line CLI error (exit 1)."""
    try:
        with TraceStore(db, adopt_foreign_db=adopt_foreign_db) as store:
            yield store
    except TracerError as exc:
        raise click.ClickException(str(exc)) from None


@click.command()
@db_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def tasks(db: str, as_json: bool) -> None:
    """List task versions: fingerprint prefix, what they came from, trace counts."""
    require_db(db)
    with open_store(db) as store:
        rows = store.versions()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=plain(f"Task versions in {store.name}"))
    for column in ("task", "version", "teacher", "surrogate", "last trace", "what it came from"):
        table.add_column(column, justify="right" if column in ("teacher", "surrogate") else "left",
                         no_wrap=column in ("task", "version"))
    for row in rows:
        last = row["last_trace_at"]
        when = datetime.datetime.fromtimestamp(last).isoformat(sep=" ", timespec="seconds") if last else "-"
        table.add_row(plain(row["task"]), versions.label(row), str(row["teacher"]), str(row["surrogate"]), when,
                      plain(versions.origin(row)))
    plain_console(width=160).print(table)


@click.command(name="import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--task", required=True, help="Task the traces belong to.")
@click.option("--skip-bad", is_flag=True, help="Skip bad lines (reported) instead of importing nothing.")
@db_option
@adopt_option
def import_(file: str, task: str, skip_bad: bool, db: str, adopt_foreign_db: bool) -> None:
    """Import traces from a JSONL FILE ({"input", "label"} or {"input", "teacher"} per line)."""
    with open_store(db, adopt_foreign_db=adopt_foreign_db) as store:
        result = import_jsonl(store, file, task, skip_bad=skip_bad)
    for number, reason in result.skipped:
        click.echo(f"skipped line {number}: {reason}", err=True)
    click.echo(f"imported {result.imported} traces into task {task!r} ({len(result.skipped)} skipped)")


@click.command()
@click.option("--task", required=True, help="Task to export.")
@click.option("--source", type=click.Choice(SOURCES), default=None, help="Only traces from this source.")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write here instead of stdout.")
@db_option
def export(task: str, source: str | None, out: str | None, db: str) -> None:
    """Export the traces of a task as JSONL (the traces stored when the export starts)."""
    require_db(db)
    with open_store(db) as store:
        require_task(store, task)
        if out is None:
            count = export_jsonl(store, task, sys.stdout, source=source)
        else:
            count = _export_to_file(store, task, Path(out), source)
    click.echo(f"exported {count} traces of task {task!r}", err=True)


def _export_to_file(store: TraceStore, task: str, out: Path, source: str | None) -> int:
    """Export to `out` through a temporary file beside it, so a failed export leaves `out` untouched."""
    if not out.parent.is_dir():
        raise click.ClickException(f"cannot write {str(out)!r}: directory {str(out.parent)!r} does not exist")
    partial = out.with_name(f".{out.name}.partial")
    try:
        with open(partial, "w", encoding="utf-8") as fh:
            count = export_jsonl(store, task, fh, source=source)
        os.replace(partial, out)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise click.ClickException(f"cannot write {str(out)!r}: {exc.strerror}") from None
    return count


def require_task(store: TraceStore, task: str) -> None:
    """Commands about one task fail (exit 1) when it has no traces, naming the tasks there are."""
    if not any(store.counts(task).values()):
        known = ", ".join(repr(t["task"]) for t in store.tasks()) or "none"
        raise click.ClickException(f"task {task!r} has no traces in {store.name!r} (tasks: {known})")


@click.command(name="copy")
@click.option("--from", "source", required=True, help="Store to copy from: an SQLite file or a postgresql:// URL.")
@click.option("--to", "target", required=True, help="Store to copy into (created if it is a new SQLite file).")
@click.option("--task", default=None, help="Only this task (default: every task).")
def copy(source: str, target: str, task: str | None) -> None:
    """Copy tasks (traces, task versions, policies, suspensions) between stores, ids and all."""
    require_db(source)
    with open_store(source) as src, open_store(target) as dst:
        try:
            counts = copy_tasks(src, dst, task)
        except TracerError as exc:
            raise click.ClickException(str(exc)) from None
        names = src.name, dst.name
    shown = ", ".join(f"{n} {table.replace('_', ' ')}" for table, n in counts.items())
    click.echo(f"copied {shown} from {names[0]} to {names[1]}")


store_commands = [tasks, import_, export, copy]
