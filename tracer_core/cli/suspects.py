"""`tracer suspects`: teacher traces whose label the other traces contradict."""

from __future__ import annotations

import datetime
import json

import click

from tracer_core.cli.report import chosen_version
from tracer_core.cli.store import db_option, open_store, require_db
from tracer_core.errors import TracerError
from tracer_core.learning.embedder import get_default_embedder
from tracer_core.learning.embedder_identity import identify, mismatch
from tracer_core.learning.suspects import MAX_SCORED, MIN_SCORE, teacher_suspects
from tracer_core.learning.suspects_cache import EvidenceCache, default_folder
from tracer_core.report.summary import current_policy_row, usable_policy


@click.command()
@click.option("--task", required=True, help="Task whose teacher traces are checked.")
@click.option("--fingerprint", default=None, help="Task version: a fingerprint prefix (needed when the task has several).")
@click.option("--limit", type=click.IntRange(min=0), default=20, show_default=True, help="Suspects to list.")
@click.option("--min-score", type=click.FloatRange(0.0, 1.0, min_open=True), default=MIN_SCORE, show_default=True,
              help="Score at which a trace counts as a suspect.")
@click.option("--refit", is_flag=True,
              help="Cross-fit the evidence again even when the evidence of these very traces is kept from an earlier run.")
@click.option("--json", "as_json", is_flag=True, help="Print the suspects as JSON.")
@db_option
def suspects(task: str, fingerprint: str | None, limit: int, min_score: float, refit: bool, as_json: bool, db: str) -> None:
    """List teacher traces ranked by how strongly cross-fitted evidence contradicts their label.

    The cross-fitted evidence is kept (beside the embedding cache) and reused while the task's teacher traces and
    the embedder are unchanged; any new trace makes it cross-fit again.
    """
    require_db(db)
    embed = get_default_embedder()
    with open_store(db) as store:
        version = chosen_version(store, task, fingerprint)
        try:
            teacher = store.teacher_examples(task, version)
            found = teacher_suspects(teacher, embed, limit=limit, min_score=min_score,
                                     cache=EvidenceCache(default_folder(), refit=refit)).to_dict()
            policy = usable_policy(current_policy_row(store, task, version))[0]
            problem = mismatch(policy, identify(embed)) if policy is not None else None
        except TracerError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(found, indent=2, ensure_ascii=False) if as_json else render_text(task, found))
    click.echo(evidence_line(found), err=True)
    if problem is not None:
        click.echo(f"note: these suspects are scored with this command's embedder, which the deployed policy "
                   f"does not take: {problem}", err=True)


def evidence_line(found: dict) -> str:
    """Which evidence the suspects come from: computed now, or kept from an earlier run (and when)."""
    when = datetime.datetime.fromtimestamp(found["evidence"]["computed_at"]).isoformat(sep=" ", timespec="seconds")
    if found["evidence"]["reused"]:
        return f"evidence: cross-fitted at {when} on these same traces, reused (--refit cross-fits again)"
    return f"evidence: cross-fitted now ({when}), kept for the next run while the traces do not change"


def sample_note(found: dict) -> str | None:
    """What was scored when the traces were too many to score all."""
    if found.get("sampled_from") is None:
        return None
    return (f"scored a random sample of {found['n_traces']:,} of the {found['sampled_from']:,} teacher traces "
            f"(at most {MAX_SCORED:,} are scored, to bound time and memory); counts are of the sample")


def render_text(task: str, found: dict) -> str:
    """Plain text (inputs and labels are printed as they are, never interpreted as markup)."""
    lines = [
        f"task {task!r}: {found['n_suspects']:,} suspects (score >= {found['min_score']:.2f}) among "
        f"{found['n_traces']:,} teacher traces; showing {len(found['suspects'])}",
        "score = cross-fitted probability of the suggested label minus that of the teacher's label "
        "(no trace is scored by a model trained on it)",
        *filter(None, [sample_note(found)]),
    ]
    if found["confused_pairs"]:
        lines += ["", "Most confused label pairs:", *(f"  {p['message']}" for p in found["confused_pairs"])]
    for rank, s in enumerate(found["suspects"], 1):
        lines += [
            "",
            f"{rank:>3}. trace {s['id']}  score {s['score']:.2f}  teacher: {s['teacher_label']}  "
            f"evidence: {s['suggested_label']}",
            f"     input: {s['input']}",
            *(f"     near ({n['similarity']:.2f}) [{n['label']}] {n['input']}" for n in s["neighbours"]),
        ]
    with_suspects = [r for r in found["per_label"] if r["suspects"] or r["pointed_to"]]
    if with_suspects:
        lines += ["", "Per label (teacher label: suspects / traces; suspects pointing to it):"]
        lines += [f"  {r['label']}: {r['suspects']} / {r['traces']}; {r['pointed_to']}" for r in with_suspects]
    return "\n".join(lines)


suspect_commands = [suspects]
