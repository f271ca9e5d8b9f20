"""Explanation commands of the `tracer` CLI: `report` (HTML + JSON) and `status` (terminal)."""

from __future__ import annotations

import datetime
from pathlib import Path

import click

from tracer_core.cli.store import db_option, open_store, require_db
from tracer_core.learning.suspects_cache import EvidenceCache, default_folder
from tracer_core.report import build_report
from tracer_core.report.evolution import PREFIX_FRACTIONS
from tracer_core.report.summary import summary_facts, tasks_overview
from tracer_core.report.terminal import plain_console, summary_view, tasks_table
from tracer_core.serving.versions import VersionError, resolve_version
from tracer_core.storage.store import TraceStore


def chosen_version(store: TraceStore, task: str, fingerprint: str | None) -> str:
    """The task version the options name, or a one-line CLI error listing the versions."""
    try:
        return resolve_version(store, task, fingerprint)
    except VersionError as exc:
        raise click.ClickException(str(exc)) from None


@click.command()
@db_option
@click.option("--task", required=True, help="Task to explain.")
@click.option("--fingerprint", default=None, help="Task version: a fingerprint prefix (needed when the task has several).")
@click.option("--out", default="report.html", show_default=True, type=click.Path(dir_okay=False),
              help="HTML report file.")
@click.option("--json", "json_out", default=None, type=click.Path(dir_okay=False),
              help="JSON facts file (default: the HTML path with .json).")
@click.option("--refit/--no-refit", default=False, show_default=True,
              help="Also refit (without saving) on 25/50/75/100% of the traces for the evolution section, and "
                   "cross-fit the suspects' evidence when none is kept for these traces (slower).")
def report(db: str, task: str, fingerprint: str | None, out: str, json_out: str | None, refit: bool) -> None:
    """Write a self-contained HTML report and its JSON facts explaining how TASK is routed.

    By default it fits nothing: it routes the calibration traces through the deployed policy (embeddings
    from the cache), draws the evolution from the stored policy versions, and shows the suspects' evidence
    `tracer suspects` kept for these traces. The lines it prints say which policy and evidence it used.
    """
    require_db(db)
    json_out = json_out or str(Path(out).with_suffix(".json"))
    with open_store(db) as store:
        fingerprint = chosen_version(store, task, fingerprint)
        facts = build_report(store, task, fingerprint=fingerprint, out_html=out, out_json=json_out,
                             refit_fractions=PREFIX_FRACTIONS if refit else (),
                             suspects_cache=EvidenceCache(default_folder(), reuse_only=not refit))
    click.echo(facts["summary"]["verdict"])
    if facts["summary"].get("embedder_problem"):
        click.echo(f"not re-measured on calibration traces: {facts['summary']['embedder_problem']}")
    for line in used_lines(facts):
        click.echo(line)
    click.echo(f"Wrote {Path(out).resolve()}")
    click.echo(f"Wrote {Path(json_out).resolve()}")


def used_lines(facts: dict) -> list[str]:
    """Which policy, which fits and which suspects' evidence the report was built from."""
    summary, evolution, found = facts["summary"], facts["evolution"], facts["suspects"]
    if summary.get("policy_version") is None:
        policy = "policy: none stored, nothing routed"
    else:
        policy = (f"policy: v{summary['policy_version']} ({summary['policy_status']}), its "
                  f"{facts['calibration']['n']:,} calibration traces routed with cached embeddings")
    refits = len(evolution["prefixes"])
    fits = (f"evolution: {len(evolution['versions'])} stored policy versions"
            + (f" and {refits} refits on prefixes of the traces" if refits else " (no refits; --refit adds prefix refits)"))
    if found.get("unavailable"):
        suspects = f"suspects: not shown: {found['unavailable']}"
    else:
        when = datetime.datetime.fromtimestamp(found["evidence"]["computed_at"]).isoformat(sep=" ", timespec="seconds")
        how = "reused" if found["evidence"]["reused"] else "computed now"
        suspects = f"suspects: cross-fitted evidence of {found['n_traces']:,} teacher traces from {when} ({how})"
    return [policy, fits, suspects]


@click.command()
@db_option
@click.option("--task", default=None, help="Show one task's summary and live counters.")
@click.option("--fingerprint", default=None, help="Task version: a fingerprint prefix (default: every version of the task).")
def status(db: str, task: str | None, fingerprint: str | None) -> None:
    """All task versions at a glance, or one task's certificate summary, suspension and live counters."""
    require_db(db)
    console = plain_console(width=140)
    with open_store(db) as store:
        if task is None:
            console.print(tasks_table(tasks_overview(store), store.name))
            return
        if fingerprint is None:
            chosen = [v["fingerprint"] for v in store.versions(task)] or [chosen_version(store, task, None)]
        else:
            chosen = [chosen_version(store, task, fingerprint)]
        for version in chosen:
            console.print(summary_view(summary_facts(store, task, version)))


report_commands = [report, status]
