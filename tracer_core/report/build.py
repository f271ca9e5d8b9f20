"""build_report: gather every section's facts for a task, then write the JSON and HTML files."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from tracer_core.errors import TracerError
from tracer_core.learning.embedder import EmbedFn, get_default_embedder
from tracer_core.learning.embedder_identity import identify, mismatch
from tracer_core.learning.suspects_cache import EvidenceCache
from tracer_core.report.calibration import CalibrationRouting, route_calibration
from tracer_core.report.evolution import PREFIX_FRACTIONS, evolution_facts
from tracer_core.report.html import render_html
from tracer_core.report.sections import (
    boundary_facts,
    deferral_facts,
    frontier_facts,
    per_label_facts,
    region_facts,
    suspect_facts,
)
from tracer_core.report.summary import (
    current_policy_row,
    live_deferral_examples,
    pick_fingerprint,
    summary_facts,
    usable_policy,
)
from tracer_core.storage.store import TraceStore


class ReportError(TracerError):
    """A report cannot be built for the requested task."""


def build_report(
    store: TraceStore,
    task: str,
    *,
    fingerprint: str | None = None,
    out_html: str | os.PathLike | None = None,
    out_json: str | os.PathLike | None = None,
    embed: EmbedFn | None = None,
    refit_fractions: tuple[float, ...] = PREFIX_FRACTIONS,
    suspects_cache: EvidenceCache | None = None,
) -> dict:
    """Facts of every report section for `task`; writes them as JSON and/or HTML when paths are given.

    When the task has few policy versions, the evolution section refits (without saving) on the
    `refit_fractions` prefixes of the teacher traces; pass `()` to skip those refits. The suspects
    section cross-fits its evidence, or keeps and reuses it through `suspects_cache`.
    """
    for path in (out_html, out_json):
        if path is not None:
            _check_writable(Path(path))
    if store.counts(task)["teacher"] == 0:
        raise ReportError(f"task {task!r} has no teacher traces in {store.name!r}: nothing to report")
    fingerprint = pick_fingerprint(store, task, fingerprint)
    summary = summary_facts(store, task, fingerprint)
    teacher = store.teacher_examples(task, fingerprint)
    row = current_policy_row(store, task, fingerprint)
    cert = row["certificate"] if row else None
    embed = embed or get_default_embedder()
    policy = usable_policy(row)[0]
    if policy is not None and (problem := mismatch(policy, identify(embed))) is not None:
        summary["embedder_problem"] = problem  # its calibration traces cannot be routed with this embedder
        policy = None
    routing = route_calibration(policy, cert, teacher, embed) if cert else None
    facts = {
        "generated_at": time.time(),
        "summary": summary,
        "calibration": _calibration_totals(routing),
        "frontier": frontier_facts(cert),
        "evolution": evolution_facts(
            store.policies(task, fingerprint=fingerprint), teacher, cert, embed, refit_fractions
        ),
        "per_label": per_label_facts(routing, cert, teacher[1]),
        "deferrals": deferral_facts(routing, summary["live_all_time"], live_deferral_examples(store, task, fingerprint)),
        "boundary": boundary_facts(routing),
        "regions": region_facts(routing),
        "suspects": suspect_facts(teacher, embed, suspects_cache),
    }
    facts = _finite(facts)
    if out_json is not None:
        _write(out_json, json.dumps(facts, indent=2, ensure_ascii=False, allow_nan=False))
    if out_html is not None:
        _write(out_html, render_html(facts))
    return facts


def _calibration_totals(routing: CalibrationRouting | None) -> dict:
    """Coverage and agreement of the policy re-measured on its held-out calibration traces."""
    source = "held-out calibration traces routed through the policy"
    if routing is None:
        return {"source": source, "n": 0, "handled": 0, "coverage": None, "agreement": None, "missing_ids": 0}
    n = len(routing)
    handled = int(routing.handled.sum())
    agree = int((routing.agrees & routing.handled).sum())
    return {
        "source": source,
        "n": n,
        "handled": handled,
        "coverage": handled / n if n else None,
        "agreement": agree / handled if handled else None,
        "missing_ids": routing.missing_ids,
    }


def _finite(value):
    """Replace NaN/inf (never valid JSON) with None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _check_writable(target: Path) -> None:
    """Fail before the slow work if an output file cannot be written."""
    if not target.parent.is_dir():
        raise ReportError(f"cannot write report {str(target)!r}: directory {str(target.parent)!r} does not exist")
    if target.is_dir():
        raise ReportError(f"cannot write report {str(target)!r}: it is a directory")


def _write(path: str | os.PathLike, text: str) -> None:
    target = Path(path)
    try:
        target.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ReportError(f"cannot write report {str(target)!r}: {exc.strerror}") from None
