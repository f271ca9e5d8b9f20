"""tracer's Prometheus metrics: every name, label and help text in one table, each created on first use.

prometheus-client is optional (`pip install 'tracer-router[ops]'`): without it every update is a
no-op. Metrics go to prometheus-client's default registry, so a process that already serves it
(LiteLLM's proxy with its `prometheus` callback) shows them beside its own. With
PROMETHEUS_MULTIPROC_DIR set before prometheus-client is first imported (LiteLLM's proxy workers,
gunicorn), prometheus-client's multiprocess mode writes them to that directory: counters and the
histogram add up over every process, and each gauge aggregates as its `aggregate` says.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Literal

TASK_LABELS = ("task", "version")  # the task name and its fingerprint prefix, as `tracer status` shows it
STORE_LABELS = ("store",)  # the store as messages show it: the file, or the URL without its password
REFIT_BUCKETS_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


@dataclass(frozen=True)
class MetricSpec:
    """One metric: its exposed name, kind, help text, labels and (gauges) how processes aggregate."""

    name: str
    kind: str  # "counter", "gauge" or "histogram"
    help: str
    label_names: tuple[str, ...]
    aggregate: Literal["livemostrecent", "livemax", "livesum"] = "livemostrecent"  # a gauge's multiprocess mode

    def labels(self, *values: str) -> Any:
        """The series of these label values (made on first use, then kept; a no-op without prometheus-client)."""
        key = (self.name, values)
        child = _children.get(key)
        if child is None:
            child = _children[key] = metric(self).labels(*values)
        return child


CALLS = MetricSpec("tracer_calls_total", "counter", "Calls routed, by decision (handled or deferred) and reason",
                   (*TASK_LABELS, "decision", "reason"))
TRACES = MetricSpec("tracer_traces_recorded_total", "counter", "Traces recorded, by source (teacher or surrogate)",
                    (*TASK_LABELS, "source"))
LLM_COST = MetricSpec("tracer_llm_cost_usd_total", "counter", "Cost of the LLM answers recorded, in USD", TASK_LABELS)
CALLS_SAVED = MetricSpec("tracer_llm_calls_saved_total", "counter",
                         "Calls the surrogate answered and recorded: LLM requests not made", TASK_LABELS)
COST_SAVED = MetricSpec("tracer_llm_cost_saved_usd_total", "counter",
                        "Estimated USD saved: each saved call at the mean recorded LLM cost of its version", TASK_LABELS)
POLICY_VERSION = MetricSpec("tracer_policy_version", "gauge", "The policy version in force (0: none)", TASK_LABELS)
POLICY_ALPHA = MetricSpec("tracer_policy_alpha", "gauge", "The agreement target alpha of the task version", TASK_LABELS)
POLICY_COVERAGE = MetricSpec("tracer_policy_coverage", "gauge",
                             "Certified coverage of the policy in force: the share of calls it answers (0: none)",
                             TASK_LABELS)
POLICY_DELTA_SPENT = MetricSpec("tracer_policy_delta_spent", "gauge",
                                "The share of the lifetime delta the policy in force's certification attempt spent (0: none)",
                                TASK_LABELS)
AUDITS = MetricSpec("tracer_audits", "gauge",
                    "Audited calls the policy would have answered, since the last suspend or resume", TASK_LABELS)
AUDIT_AGREEMENT = MetricSpec("tracer_audit_agreement", "gauge",
                             "Live agreement of those audits with the LLM (NaN before the first)", TASK_LABELS)
MONITOR_WEALTH = MetricSpec("tracer_monitor_wealth", "gauge",
                            "The monitor's evidence against agreement >= alpha; suspends at tracer_monitor_reject_at",
                            TASK_LABELS)
MONITOR_REJECT_AT = MetricSpec("tracer_monitor_reject_at", "gauge", "The wealth at which the monitor suspends (1/delta)",
                               TASK_LABELS)
SUSPENDED = MetricSpec("tracer_suspended", "gauge",
                       "1 while the task version is suspended, by cause (monitor, withdrawn or manual)",
                       (*TASK_LABELS, "cause"))
REFITS = MetricSpec("tracer_refits_total", "counter",
                    "Fits run (background or explicit), by outcome (deployed, refused or failed)",
                    (*TASK_LABELS, "outcome"))
REFIT_SECONDS = MetricSpec("tracer_refit_duration_seconds", "histogram", "Duration of the fits that ended in a certificate",
                           TASK_LABELS)
STORE_DEGRADED = MetricSpec("tracer_store_degraded", "gauge",
                            "1 while the store cannot be written: traces spill to disk, every call goes to the LLM",
                            STORE_LABELS, aggregate="livemax")
SPILL_BYTES = MetricSpec("tracer_store_spill_bytes", "gauge", "Size of the spill file waiting to be replayed, in bytes",
                         STORE_LABELS, aggregate="livemax")
QUEUE_DEPTH = MetricSpec("tracer_writer_queue_depth", "gauge", "Traces handed to the writer, not yet written or spilled",
                         STORE_LABELS, aggregate="livesum")

SPECS = (CALLS, TRACES, LLM_COST, CALLS_SAVED, COST_SAVED, POLICY_VERSION, POLICY_ALPHA, POLICY_COVERAGE, POLICY_DELTA_SPENT,
         AUDITS, AUDIT_AGREEMENT, MONITOR_WEALTH, MONITOR_REJECT_AT, SUSPENDED, REFITS, REFIT_SECONDS, STORE_DEGRADED,
         SPILL_BYTES, QUEUE_DEPTH)


class _Off:
    """Stands in for a metric when prometheus-client is not installed: every update does nothing."""

    def labels(self, *values: str) -> _Off:
        return self

    def inc(self, amount: float = 1.0) -> None:
        pass

    def set(self, value: float) -> None:
        pass

    def observe(self, value: float) -> None:
        pass


_made: dict[str, Any] = {}
_children: dict[tuple[str, tuple[str, ...]], Any] = {}  # bounded: label values are bounded (see the module doc)
_lock = threading.Lock()


def available() -> bool:
    """Whether prometheus-client is installed (metrics are kept at all)."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


def metric(spec: MetricSpec) -> Any:
    """The prometheus-client metric of `spec` (made on first use), or a no-op without prometheus-client."""
    made = _made.get(spec.name)
    if made is None:
        with _lock:
            made = _made.get(spec.name)
            if made is None:
                made = _made[spec.name] = _make(spec)
    return made


def _make(spec: MetricSpec) -> Any:
    try:
        import prometheus_client
    except ImportError:
        return _Off()
    if spec.kind == "counter":
        return prometheus_client.Counter(spec.name, spec.help, spec.label_names)
    if spec.kind == "histogram":
        return prometheus_client.Histogram(spec.name, spec.help, spec.label_names, buckets=REFIT_BUCKETS_S)
    return prometheus_client.Gauge(spec.name, spec.help, spec.label_names, multiprocess_mode=spec.aggregate)
