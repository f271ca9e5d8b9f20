"""The `tracer` command line: a mirror of the Python API."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator

import click

from tracer_core.cli.logs import library_logs_as_notes
from tracer_core.cli.report import report_commands
from tracer_core.cli.store import db_option, require_db, store_commands
from tracer_core.cli.suspects import suspect_commands
from tracer_core.errors import TracerError
from tracer_core.identity import label
from tracer_core.serving.guarantee import attempt_statement, outcome_statement


@click.group()
@click.version_option(package_name="tracer-router")
def main() -> None:
    """Record LLM classification traces, certify a surrogate, route inputs."""
    click.get_current_context().call_on_close(library_logs_as_notes())


@contextlib.contextmanager
def task_tracer(db: str, task: str, fingerprint: str | None, alpha: float | None = None, delta: float | None = None,
                *, doing: tuple[str, str] | None = None, err: bool = False) -> Iterator:
    """A Tracer of the task version the options name, at the version's own alpha and delta unless they are given.

    With `doing` (what it does at the version's level, what at another), the level and why it was
    chosen are printed first (to stderr with `err`). Every TracerError becomes a one-line CLI error.
    """
    from tracer_core.serving.binding import choose_level
    from tracer_core.serving.tracer import Tracer
    from tracer_core.serving.versions import resolve_version
    from tracer_core.storage.store import TraceStore

    require_db(db)
    try:
        with TraceStore(db) as store:
            version = resolve_version(store, task, fingerprint)
            chosen = choose_level(store, task, version, alpha, delta)
            with Tracer(task, store, alpha=chosen.level.alpha, delta=chosen.level.delta, fingerprint=version,
                        auto_refit=False, audit_rate=0.0) as tracer:
                if doing is not None:
                    click.echo(f"{doing[chosen.changed]} task {task!r} at {chosen.level} ({chosen.why})", err=err)
                yield tracer
    except TracerError as exc:
        raise click.ClickException(str(exc)) from None


task_option = click.option("--task", required=True, help="Task name.")
fingerprint_option = click.option(
    "--fingerprint", default=None, help="Task version: a fingerprint prefix (needed when the task has several)."
)
alpha_option = click.option(
    "--alpha", type=float, default=None,
    help="Minimum agreement on handled inputs (default: the task version's, 0.95 if it was never fitted).",
)
delta_option = click.option(
    "--delta", type=float, default=None,
    help="Allowed lifetime risk of a wrong certificate (default: the task version's, 0.05 if it was never fitted).",
)


def fitting_options(command):
    """The options of a command that fits: the task version and the level it certifies at."""
    for option in (db_option, delta_option, alpha_option, fingerprint_option, task_option):  # task shown first
        command = option(command)
    return command


@main.command()
@fitting_options
@click.option("--json", "as_json", is_flag=True, help="Print the certificate as JSON.")
def fit(task: str, fingerprint: str | None, alpha: float | None, delta: float | None, db: str, as_json: bool) -> None:
    """Fit and certify a surrogate on the task's teacher traces; deploy it if certified.

    The fit keeps the task version's alpha and delta (those of its latest certificate) unless --alpha or
    --delta ask for another level; the level and why are printed first.
    """
    with task_tracer(db, task, fingerprint, alpha, delta, doing=("certifying", "re-certifying"), err=as_json) as tracer:
        cert = tracer.fit()
    if as_json:
        click.echo(json.dumps(cert.to_dict(), indent=2))
        return
    click.echo(f"task {task!r} version {label({'fingerprint': tracer.fingerprint})}, policy v{cert.version} "
               f"({'deployed' if cert.deployed else 'refused'}), {cert.n_traces} traces, {cert.fit_seconds:.1f} s")
    click.echo(outcome_statement(cert.to_dict()))
    click.echo(attempt_statement(cert.to_dict()))
    click.echo(cert.evidence())


@main.command()
@task_option
@fingerprint_option
@db_option
@click.argument("texts", nargs=-1, required=True)
def route(task: str, fingerprint: str | None, db: str, texts: tuple[str, ...]) -> None:
    """Route TEXTS with the newest deployed policy, as a caller at the task version's alpha and delta; one JSON
    decision per line."""
    with task_tracer(db, task, fingerprint) as tracer:
        decisions = tracer.route_many(list(texts))
    for text, decision in zip(texts, decisions):
        data = decision.to_dict()
        data["score"] = data["score"] if math.isfinite(data["score"]) else None
        click.echo(json.dumps({"input": text, **data}, allow_nan=False))


@main.command()
@task_option
@fingerprint_option
@db_option
@click.option("--reason", default="suspended by hand", show_default=True, help="Why (shown in status and report).")
def suspend(task: str, fingerprint: str | None, db: str, reason: str) -> None:
    """Send every call of the task version to the LLM, in every process, until `tracer resume`."""
    with task_tracer(db, task, fingerprint) as tracer:
        tracer.suspend(reason)
    click.echo(f"task {task!r} version {label({'fingerprint': tracer.fingerprint})} suspended: {reason}")


@main.command()
@fitting_options
def resume(task: str, fingerprint: str | None, alpha: float | None, delta: float | None, db: str) -> None:
    """Lift a suspension; needs a certificate on traces recorded after it (fits one if needed).

    Like `tracer fit`, it works at the task version's alpha and delta unless --alpha or --delta say otherwise.
    """
    with task_tracer(db, task, fingerprint, alpha, delta, doing=("resuming", "resuming")) as tracer:
        cert = tracer.resume()
    click.echo(f"task {task!r} resumed with policy v{cert.version}: {outcome_statement(cert.to_dict())}")


for command in (*store_commands, *report_commands, *suspect_commands):
    main.add_command(command)
