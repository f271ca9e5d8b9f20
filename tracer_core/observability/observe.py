"""What tracer's modules call where its state changes: each call updates the metrics and, for a state
change, emits its event.

Every function here never raises (a failure is logged once: see `safe`) and uses only what it is
given or what this process already holds: no store query, so a scrape or a call never waits on one.
"""

from __future__ import annotations

import functools
import math
import os
import pathlib
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from tracer_core.decision import Decision
from tracer_core.learning.certificate import Certificate
from tracer_core.observability import events
from tracer_core.observability import metrics as m
from tracer_core.observability.delivery import emit
from tracer_core.observability.events import CAUSES, suspension_cause, version_of
from tracer_core.observability.exposition import serve_from_env
from tracer_core.observability.safe import never_raises

if TYPE_CHECKING:
    from tracer_core.serving.tracer import Tracer
    from tracer_core.serving.watcher import InForce, PolicyWatcher
    from tracer_core.storage.trace import Trace

Version = tuple[str, str]  # (task, fingerprint)

_lock = threading.Lock()
_store_names: dict[str, str] = {}  # spill file -> the store's name, for the writer's metrics and events
_llm_cost: dict[Version, tuple[float, int]] = {}  # (USD, answers) of the LLM answers recorded with a cost
_policy_version: dict[Version, int | None] = {}  # the policy last seen in force, for suspension events


def _labels(task: str, fingerprint: str) -> tuple[str, str]:
    return task, version_of(fingerprint)


# -- a task version ---------------------------------------------------------------------------------

@never_raises
def watch(tracer: Tracer) -> None:
    """A Tracer starts: name its store's metrics, serve TRACER_METRICS_PORT (once per process)."""
    store = tracer.store
    with _lock:
        _store_names[str(store.spill_path)] = store.name
    m.STORE_DEGRADED.labels(store.name).set(1.0 if store.degraded else 0.0)
    m.POLICY_ALPHA.labels(*_labels(tracer.task, tracer.fingerprint)).set(tracer.alpha)
    serve_from_env()


def counts_calls(route_many: Callable[[Any, Sequence[str]], list[Decision]]) -> Callable[[Any, Sequence[str]], list[Decision]]:
    """Decorates `Tracer.route_many`: every decision it returns is counted."""

    @functools.wraps(route_many)
    def counted(tracer: Tracer, texts: Sequence[str]) -> list[Decision]:
        decisions = route_many(tracer, texts)
        count_calls(tracer.task, tracer.fingerprint, decisions)
        return decisions

    return counted


@never_raises
def count_calls(task: str, fingerprint: str, decisions: Sequence[Decision]) -> None:
    """Count routed calls by decision and reason (the core's decisions, and those an integration makes first)."""
    task, version = _labels(task, fingerprint)
    for d in decisions:
        m.CALLS.labels(task, version, "handled" if d.handled else "deferred", str(d.reason)).inc()


@never_raises
def recorded(task: str, fingerprint: str, traces: Sequence[Trace]) -> None:
    """Count traces by source, the LLM's cost, and the calls (and estimated cost) the surrogate saved."""
    labels = _labels(task, fingerprint)
    saved, cost, costed = 0, 0.0, 0
    for trace in traces:
        m.TRACES.labels(*labels, trace.source).inc()
        if trace.source == "surrogate":
            saved += 1
        elif trace.source == "teacher" and trace.cost_usd is not None:
            cost, costed = cost + trace.cost_usd, costed + 1
    key = (task, fingerprint)
    with _lock:
        spent, answers = _llm_cost.get(key, (0.0, 0))
        spent, answers = spent + cost, answers + costed
        _llm_cost[key] = (spent, answers)
    if costed:
        m.LLM_COST.labels(*labels).inc(cost)
    if saved:
        m.CALLS_SAVED.labels(*labels).inc(saved)
        if answers:
            m.COST_SAVED.labels(*labels).inc(saved * spent / answers)


@never_raises
def fitted(task: str, fingerprint: str, cert: Certificate) -> None:
    """A fit ended in a certificate (saved as policy version `cert.version`): deployed, or refused."""
    labels = _labels(task, fingerprint)
    m.REFITS.labels(*labels, "deployed" if cert.deployed else "refused").inc()
    m.REFIT_SECONDS.labels(*labels).observe(cert.fit_seconds)
    if cert.deployed:
        _show_policy(task, fingerprint, cert)
        emit(events.deployed(task, fingerprint, cert))
    else:
        emit(events.refused(task, fingerprint, cert))


@never_raises
def refit_failed(task: str, fingerprint: str) -> None:
    """A background refit raised (the previous policy stays)."""
    m.REFITS.labels(*_labels(task, fingerprint), "failed").inc()


@never_raises
def state_read(watcher: PolicyWatcher, state: InForce) -> None:
    """The watcher read what is in force from the store (every `policy_check_s` while calls arrive)."""
    task, fingerprint = watcher.task, watcher.fingerprint
    _show_policy(task, fingerprint, state.policy.certificate if state.policy is not None else None)
    _show_suspension(task, fingerprint, state.suspension)
    monitor, labels = watcher.monitor, _labels(task, fingerprint)
    m.AUDITS.labels(*labels).set(monitor.n)
    m.AUDIT_AGREEMENT.labels(*labels).set(monitor.agree / monitor.n if monitor.n else math.nan)
    m.MONITOR_WEALTH.labels(*labels).set(monitor.wealth)
    m.MONITOR_REJECT_AT.labels(*labels).set(1.0 / monitor.delta)


@never_raises
def suspended(task: str, fingerprint: str, reason: str, automatic: bool, details: dict) -> None:
    """This process suspended a task version (by the monitor, a withdrawal or by hand)."""
    cause = suspension_cause(reason, automatic)
    _show_causes(task, fingerprint, cause)
    emit(events.suspended(task, fingerprint, reason, cause, _policy_version.get((task, fingerprint)), details))


@never_raises
def resumed(task: str, fingerprint: str, reason: str, policy_version: int | None) -> None:
    """This process lifted a suspension (by hand, or a new certificate lifted an automatic one)."""
    _show_causes(task, fingerprint, None)
    emit(events.resumed(task, fingerprint, reason, policy_version))


def _show_policy(task: str, fingerprint: str, cert: Certificate | None) -> None:
    labels = _labels(task, fingerprint)
    with _lock:
        _policy_version[(task, fingerprint)] = cert.version if cert is not None else None
    m.POLICY_VERSION.labels(*labels).set((cert.version or 0) if cert is not None else 0)
    m.POLICY_COVERAGE.labels(*labels).set(cert.coverage if cert is not None else 0.0)
    m.POLICY_DELTA_SPENT.labels(*labels).set(cert.delta_spent if cert is not None else 0.0)
    if cert is not None:
        m.POLICY_ALPHA.labels(*labels).set(cert.alpha)


def _show_suspension(task: str, fingerprint: str, suspension: dict | None) -> None:
    cause = None
    if suspension is not None:
        cause = suspension_cause(str(suspension.get("reason", "")), bool(suspension.get("details", {}).get("automatic")))
    _show_causes(task, fingerprint, cause)


def _show_causes(task: str, fingerprint: str, cause: str | None) -> None:
    gauge, labels = m.SUSPENDED, _labels(task, fingerprint)
    for each in CAUSES:
        gauge.labels(*labels, each).set(1.0 if each == cause else 0.0)


# -- a store's writer ---------------------------------------------------------------------------------

def _store(spill: pathlib.Path) -> str:
    return _store_names.get(str(spill), str(spill))


@never_raises
def writer_queue(spill: pathlib.Path, pending: int) -> None:
    """Traces handed to the writer of the store whose spill file is `spill` and not yet written or spilled."""
    m.QUEUE_DEPTH.labels(_store(spill)).set(pending)


@never_raises
def writer_done(spill: pathlib.Path, pending: int) -> None:
    """The writer wrote or spilled a batch."""
    m.QUEUE_DEPTH.labels(_store(spill)).set(pending)
    spill_changed(spill)


@never_raises
def spill_changed(spill: pathlib.Path) -> None:
    """The spill file was appended to or replayed."""
    try:
        size = os.stat(spill).st_size
    except FileNotFoundError:
        size = 0
    m.SPILL_BYTES.labels(_store(spill)).set(size)


@never_raises
def store_degraded(spill: pathlib.Path, why: str) -> None:
    """The writer gave up on the store: traces spill, every call goes to the LLM."""
    m.STORE_DEGRADED.labels(_store(spill)).set(1.0)
    emit(events.store_degraded(_store(spill), str(spill), why))


@never_raises
def store_recovered(spill: pathlib.Path) -> None:
    """A probe write succeeded and the spill file was replayed."""
    m.STORE_DEGRADED.labels(_store(spill)).set(0.0)
    emit(events.store_recovered(_store(spill), str(spill)))
