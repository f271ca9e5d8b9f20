"""The `tracer` command line: a mirror of the Python API."""

from __future__ import annotations

import json

import click

from tracer_core.cli_report import report_commands
from tracer_core.cli_store import db_option, store_commands
from tracer_core.cli_suspects import suspect_commands
from tracer_core.errors import TracerError


@click.group()
@click.version_option(package_name="tracer-router")
def main() -> None:
    """Record LLM classification traces, certify a surrogate, route inputs."""


def _tracer(db: str, task: str, fingerprint: str, alpha: float, delta: float):
    from tracer_core.tracer import Tracer

    try:
        return Tracer(task, db, alpha=alpha, delta=delta, fingerprint=fingerprint, auto_refit=False)
    except TracerError as exc:
        raise click.ClickException(str(exc)) from None


task_option = click.option("--task", required=True, help="Task name.")
fingerprint_option = click.option("--fingerprint", default="", help="Task version (default: the unversioned task).")
alpha_option = click.option("--alpha", type=float, default=0.95, show_default=True, help="Minimum agreement on handled inputs.")
delta_option = click.option("--delta", type=float, default=0.05, show_default=True, help="Allowed probability the certificate is wrong.")


@main.command()
@task_option
@fingerprint_option
@alpha_option
@delta_option
@db_option
@click.option("--json", "as_json", is_flag=True, help="Print the certificate as JSON.")
def fit(task: str, fingerprint: str, alpha: float, delta: float, db: str, as_json: bool) -> None:
    """Fit and certify a surrogate on the task's teacher traces; deploy it if certified."""
    with _tracer(db, task, fingerprint, alpha, delta) as tracer:
        try:
            cert = tracer.fit()
        except TracerError as exc:
            raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(cert.to_dict(), indent=2))
        return
    click.echo(f"task {task!r}, policy v{cert.version} ({'deployed' if cert.deployed else 'refused'}), "
               f"{cert.n_traces} traces, {cert.fit_seconds:.1f} s")
    click.echo(cert.summary() if cert.deployed else f"refused: {cert.reason}")


@main.command()
@task_option
@fingerprint_option
@db_option
@click.argument("texts", nargs=-1, required=True)
def route(task: str, fingerprint: str, db: str, texts: tuple[str, ...]) -> None:
    """Route TEXTS with the newest deployed policy; one JSON decision per line."""
    with _tracer(db, task, fingerprint, 0.95, 0.05) as tracer:
        try:
            decisions = tracer.route_many(list(texts))
        except TracerError as exc:
            raise click.ClickException(str(exc)) from None
    for text, decision in zip(texts, decisions):
        click.echo(json.dumps({"input": text, **decision.to_dict()}))


for command in (*store_commands, *report_commands, *suspect_commands):
    main.add_command(command)
