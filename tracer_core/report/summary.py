"""Summary facts of a task from its stored certificates and live store counts (no embeddings)."""

from __future__ import annotations

import time

from tracer_core.errors import PolicyError
from tracer_core.learning.certificate import Certificate
from tracer_core.learning.embedder_identity import needed_text
from tracer_core.learning.policy import Policy
from tracer_core.learning.policy_seal import is_verified
from tracer_core.serving import versions
from tracer_core.serving.guarantee import attempt_brief, guarantee_facts, outcome_statement
from tracer_core.serving.monitor import AgreementMonitor, deferral_bound, ood_bound
from tracer_core.serving.versions import resolve_version
from tracer_core.storage.store import TraceStore
from tracer_core.storage.trace import CACHED, UNPARSED

HOUR_S = 3600.0
NOT_ROUTED = "not_routed"  # teacher traces recorded without a routing decision (imports, observe-only)


def pick_fingerprint(store: TraceStore, task: str, fingerprint: str | None) -> str:
    """The version a prefix names, or the task's only version (VersionError otherwise)."""
    return resolve_version(store, task, fingerprint)


def current_policy_row(store: TraceStore, task: str, fingerprint: str) -> dict | None:
    """The policy serving `task`: the newest deployed version, else the newest refused one."""
    return store.latest_policy(task, fingerprint=fingerprint, status="deployed") or store.latest_policy(
        task, fingerprint=fingerprint, status=None
    )


def usable_policy(row: dict | None) -> tuple[Policy | None, str | None]:
    """(the deployed policy of `row` if it passes validation, why it does not); (None, None) if not deployed."""
    if not row or row["status"] != "deployed":
        return None, None
    try:
        return Policy.from_row(row), None
    except PolicyError as exc:
        return None, str(exc)


def live_counts(store: TraceStore, task: str, since: float, fingerprint: str | None = None) -> dict:
    """Calls of `task` since `since`: handled by the surrogate, deferred to the LLM by reason (of which answered
    from the caller's cache, and with answers that did not parse)."""
    handled = audit = 0
    deferred: dict[str, int] = {}
    kinds = dict.fromkeys((CACHED, UNPARSED), 0)
    for row in store.counts_since(task, since, fingerprint):
        if row["source"] == "surrogate":
            handled += row["n"]
        elif row["source"] in ("teacher", *kinds):
            reason = row["reason"] or NOT_ROUTED
            deferred[reason] = deferred.get(reason, 0) + row["n"]
            if row["source"] in kinds:
                kinds[row["source"]] += row["n"]
        else:
            audit += row["n"]
    total = handled + sum(deferred.values())
    return {
        "since": since,
        "calls": total,
        "handled": handled,
        "deferred": sum(deferred.values()),
        "handled_share": handled / total if total else None,
        "deferred_by_reason": dict(sorted(deferred.items(), key=lambda kv: -kv[1])),
        **kinds,
        "audit": audit,
    }


def teacher_cost(store: TraceStore, task: str, fingerprint: str | None) -> dict:
    """Recorded LLM cost: calls with a price (a cost above 0: LiteLLM records 0 for a model it has no price for),
    their total and mean per call, and the models of the calls without one (sorted)."""
    n = 0
    total = 0.0
    unpriced: set[str] = set()
    for trace in store.iter_traces(task, source="teacher", fingerprint=fingerprint):
        if trace.cost_usd is not None and trace.cost_usd > 0:
            n += 1
            total += trace.cost_usd
        else:
            unpriced.add(trace.model or "the LLM")
    return {"calls_with_cost": n, "total_usd": total, "mean_usd": total / n if n else None,
            "unpriced_models": sorted(unpriced)}


def verdict(cert: dict | None, task: str, suspension: dict | None = None, policy_error: str | None = None) -> str:
    """One line: what the surrogate handles and what is certified, or why it does not answer."""
    if suspension is not None:
        return f"suspended: {suspension['reason']} - every call goes to the LLM"
    if policy_error is not None:
        return f"the deployed policy is not used ({policy_error}) - every call goes to the LLM"
    if cert is None:
        return f"no policy fitted yet for {task!r}: every call goes to the LLM (run: tracer fit --task {task})"
    if not cert.get("deployed"):
        return f"{outcome_statement(cert)} - every call goes to the LLM"
    return outcome_statement(cert)


def summary_facts(store: TraceStore, task: str, fingerprint: str | None = None, *, now: float | None = None) -> dict:
    """Section 1 facts: traces, policy, what is certified (attempt, delta spent), coverage, savings so far, verdict."""
    now = time.time() if now is None else now
    fingerprint = pick_fingerprint(store, task, fingerprint)
    row = current_policy_row(store, task, fingerprint)
    cert = row["certificate"] if row else None
    policy, policy_error = usable_policy(row)
    newest = store.policies(task, fingerprint=fingerprint)[:1] if fingerprint is not None else []
    counts = store.counts(task)
    cost = teacher_cost(store, task, fingerprint)
    saved_calls = counts["surrogate"]
    return {
        "task": task,
        "fingerprint": fingerprint,
        "traces": counts,
        "teacher_traces": counts["teacher"],
        "policy_version": row["version"] if row else None,
        "policy_status": row["status"] if row else None,
        "last_fit_at": newest[0]["created_at"] if newest else None,
        "last_fit_refused": bool(newest and newest[0]["status"] != "deployed" and row and row["status"] == "deployed"),
        "last_fit_reason": refusal_reason(newest[0]["certificate"]) if newest else None,
        "deployed": bool(cert and cert.get("deployed")) and policy_error is None,
        "policy_error": policy_error,
        "alpha": cert.get("alpha") if cert else None,
        "delta": cert.get("delta") if cert else None,
        "guarantee": guarantee_facts(cert),
        "coverage": cert.get("coverage") if cert else None,
        "reason": refusal_reason(cert),
        **fit_evidence(cert),
        **binding_facts(cert, policy),
        "reason_code": cert.get("reason_code") if cert else "no_policy",
        "llm_calls_saved": saved_calls,
        "mean_teacher_cost_usd": cost["mean_usd"],
        "dollars_saved": saved_calls * cost["mean_usd"] if cost["mean_usd"] is not None else None,
        "teacher_cost_usd": cost["total_usd"],
        "unpriced_models": cost["unpriced_models"] if cost["mean_usd"] is None else None,  # None: priced
        "savings_estimate": (cert or {}).get("savings_estimate") if not (cert or {}).get("deployed") else None,
        "verdict": verdict(cert, task, store.suspension(task, fingerprint), policy_error),
        "live_all_time": live_counts(store, task, 0.0, fingerprint),
        "live_last_hour": live_counts(store, task, now - HOUR_S, fingerprint),
        "suspension": store.suspension(task, fingerprint),
        "monitor": monitor_facts(store, task, fingerprint, cert, row["version"] if row else None),
        "label_free": label_free_facts(store, task, fingerprint, cert, now),
        "sources": {
            "alpha, delta, guarantee": "certificate: what was certified, the attempt and the delta it spent",
            "coverage, guarantee.observed_agreement": "certificate: measured on its calibration traces (not bounds)",
            "llm_calls_saved, dollars_saved, live_*": "live traffic: store counts and recorded teacher costs",
        },
    }


def refusal_reason(cert: dict | None) -> str | None:
    """Why a fit was refused; None for a deployed one (`guarantee` says what it certifies)."""
    return cert.get("reason") if cert and not cert.get("deployed") else None


def fit_evidence(cert: dict | None) -> dict:
    """What the serving policy's fit trained on and calibrated on (None when no model was trained)."""
    fitted = Certificate.from_dict(cert) if cert and cert.get("n_calibration") else None
    return {
        "trained_on": fitted.training_used() if fitted else None,
        "calibrated_on": fitted.calibration_used() if fitted else None,
    }


def binding_facts(cert: dict | None, policy: Policy | None) -> dict:
    """The embedder the serving policy needs (and how to give it), and whether its certificate binds its artifact."""
    if policy is None or cert is None:
        return {"embedder": None, "embedder_hint": None, "artifact_verified": None}
    needed, hint = needed_text(cert.get("embedder"), policy.dimension)
    return {"embedder": needed, "embedder_hint": hint, "artifact_verified": is_verified(cert)}


def monitor_facts(store: TraceStore, task: str, fingerprint: str, cert: dict | None, version: int | None) -> dict | None:
    """The live-agreement monitor of policy `version`, recomputed from its audits since the last suspend/resume event."""
    alpha, delta = (cert or {}).get("alpha"), (cert or {}).get("delta")
    if version is None or not isinstance(alpha, float | int) or not isinstance(delta, float | int):
        return None  # no policy, or a certificate that claims nothing
    monitor = AgreementMonitor(float(alpha), float(delta), version)
    floor = store.last_event_trace_id(task, fingerprint)
    monitor.update(agreed for _, agreed in store.audit_outcomes(task, fingerprint, since_id=floor, policy_version=version))
    return monitor.summary()


def label_free_facts(store: TraceStore, task: str, fingerprint: str, cert: dict | None, now: float) -> list[dict]:
    """The last day, per hour: out-of-distribution and deferral shares, flagged above the bound the signals test."""
    rows = store.hourly_routes(task, fingerprint, now - 24 * HOUR_S)
    if not cert or not cert.get("deployed") or not isinstance(cert.get("coverage"), float | int):
        return rows
    certificate = Certificate.from_dict(cert)
    limits = {"out_of_distribution": ood_bound(certificate).limit, "deferred": deferral_bound(certificate).limit}
    for row in rows:
        row["flagged"] = [kind for kind, limit in limits.items() if row["calls"] and row[kind] / row["calls"] > limit]
    return rows


def tasks_overview(store: TraceStore) -> list[dict]:
    """One row per task version for `tracer status`: traces, policy, coverage, certified level, suspension, last fit."""
    rows = []
    for version in store.versions():
        task, fingerprint = version["task"], version["fingerprint"]
        policies = store.policies(task, fingerprint=fingerprint)
        current = current_policy_row(store, task, fingerprint)
        cert = (current or {}).get("certificate") or {}
        suspension = store.suspension(task, fingerprint)
        rows.append({
            "task": task,
            "fingerprint": fingerprint,
            "version": versions.label(version),
            "origin": versions.origin(version),
            "traces": version["teacher"] + version["surrogate"],
            "teacher": version["teacher"],
            "surrogate": version["surrogate"],
            "policy_version": current["version"] if current else None,
            "status": "suspended" if suspension else current["status"] if current else "no policy",
            "coverage": cert.get("coverage") if cert.get("deployed") else None,
            "alpha": cert.get("alpha") if cert.get("deployed") else None,
            "delta": cert.get("delta") if cert.get("deployed") else None,
            "attempt": attempt_brief(cert) if cert.get("deployed") else None,
            "last_fit_at": policies[0]["created_at"] if policies else None,
        })
    return rows


def live_deferral_examples(store: TraceStore, task: str, fingerprint: str | None, per_reason: int = 3) -> dict[str, list[str]]:
    """The newest recorded inputs the router deferred to the LLM, a few per reason."""
    examples: dict[str, list[str]] = {}
    for trace in store.iter_traces(task, source="teacher", fingerprint=fingerprint):
        reason = trace.route
        if reason:
            kept = examples.setdefault(reason, [])
            kept.append(trace.input)
            del kept[:-per_reason]
    return examples
