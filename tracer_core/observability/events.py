"""tracer's events: one typed record per state change of a task version or a store, saying what
happened, to which task and version, why, and what to do."""

from __future__ import annotations

import datetime
import functools
import os
import shlex
import socket
from dataclasses import asdict, dataclass, field
from enum import StrEnum

from tracer_core.identity import label
from tracer_core.learning.certificate import FREE_TEXT, SINGLE_LABEL, TOO_FEW_TRACES, Certificate


class EventKind(StrEnum):
    """What changed."""

    POLICY_DEPLOYED = "policy_deployed"
    FIT_REFUSED = "fit_refused"
    SUSPENDED = "suspended"
    WITHDRAWN = "withdrawn"
    RESUMED = "resumed"
    STORE_DEGRADED = "store_degraded"
    STORE_RECOVERED = "store_recovered"


@dataclass(frozen=True)
class TracerEvent:
    """One state change. `task`, `fingerprint` and `version` are None for a store event; `version` is the
    fingerprint prefix `tracer status` shows; `time` is ISO 8601 in UTC; `process` is `host:pid`;
    `details` holds the numbers behind it (JSON values only)."""

    kind: EventKind
    task: str | None
    fingerprint: str | None
    version: str | None
    policy_version: int | None
    what: str
    why: str
    action: str
    details: dict = field(default_factory=dict)
    time: str = field(default_factory=lambda: datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"))
    process: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")

    def to_dict(self) -> dict:
        """The event as JSON-ready data (the webhook's payload, the fields of its JSON log line)."""
        data = asdict(self)
        data["kind"] = str(self.kind)
        return data


# why a task version is suspended, as `tracer_suspended{cause=...}` says
MANUAL, MONITOR, WITHDRAWN = "manual", "monitor", "withdrawn"
CAUSES = (MONITOR, WITHDRAWN, MANUAL)
WITHDRAWAL_PREFIX = "withdrawn"  # how Tracer words the reason of a withdrawal


def suspension_cause(reason: str, automatic: bool) -> str:
    """manual, withdrawn (a refused refit found the deployed policy contradicted) or monitor (audits)."""
    if not automatic:
        return MANUAL
    return WITHDRAWN if reason.startswith(WITHDRAWAL_PREFIX) else MONITOR


@functools.lru_cache(maxsize=4096)
def version_of(fingerprint: str) -> str:
    """The fingerprint prefix people see (`tracer tasks`, `tracer status`)."""
    return label({"fingerprint": fingerprint})


def _command(verb: str, task: str, fingerprint: str) -> str:
    version = f" --fingerprint {version_of(fingerprint)}" if fingerprint else ""
    return f"`tracer {verb} --task {shlex.quote(task)}{version}`"


def _task_event(kind: EventKind, task: str, fingerprint: str, policy_version: int | None, what: str, why: str,
                action: str, details: dict) -> TracerEvent:
    return TracerEvent(kind, task, fingerprint, version_of(fingerprint), policy_version, what, why, action, details)


def deployed(task: str, fingerprint: str, cert: Certificate) -> TracerEvent:
    return _task_event(
        EventKind.POLICY_DEPLOYED, task, fingerprint, cert.version,
        f"policy v{cert.version} deployed: it {cert.summary()}",
        f"a fit certified it, {cert.evidence()}",
        f"none: the surrogate now answers the calls it is certified for; {_command('status', task, fingerprint)} shows it",
        {"alpha": cert.alpha, "delta": cert.delta, "coverage": cert.coverage,
         "attempt": cert.attempt, "delta_spent": cert.delta_spent, "n_traces": cert.n_traces,
         "n_calibration": cert.n_calibration, "fit_seconds": cert.fit_seconds},
    )


def refused(task: str, fingerprint: str, cert: Certificate) -> TracerEvent:
    if cert.reason_code in (TOO_FEW_TRACES, SINGLE_LABEL):
        action = "none: calls keep going to the LLM and become traces; a refit runs as more arrive"
    elif cert.reason_code == FREE_TEXT:
        action = "none if the task is free generation (tracer only records it); else check the prompt asks for one label"
    else:
        action = (f"if it persists, look for labels the LLM gives inconsistently ({_command('suspects', task, fingerprint)}) "
                  "or lower alpha; calls keep going to the LLM")
    return _task_event(
        EventKind.FIT_REFUSED, task, fingerprint, cert.version, f"fit v{cert.version} refused: no new policy deployed",
        cert.reason, action, {"reason_code": cert.reason_code, "alpha": cert.alpha, "n_traces": cert.n_traces},
    )


def suspended(task: str, fingerprint: str, reason: str, cause: str, policy_version: int | None,
              details: dict) -> TracerEvent:
    lift = f"{_command('resume', task, fingerprint)} lifts it once a certificate on traces recorded after it exists"
    if cause == MANUAL:
        action = lift
    else:
        action = ("check whether the LLM, its prompt or the traffic changed "
                  f"({_command('report', task, fingerprint)}); a certified refit on traces recorded from now on "
                  f"lifts it by itself, or {lift}")
    kind = EventKind.WITHDRAWN if cause == WITHDRAWN else EventKind.SUSPENDED
    return _task_event(kind, task, fingerprint, policy_version, f"task version {kind}: every call goes to the LLM",
                       reason, action, {"cause": cause, **details})


def resumed(task: str, fingerprint: str, reason: str, policy_version: int | None) -> TracerEvent:
    return _task_event(EventKind.RESUMED, task, fingerprint, policy_version,
                       f"task version resumed: policy v{policy_version} answers again", reason, "none", {})


def store_degraded(store: str, spill: str, why: str) -> TracerEvent:
    return TracerEvent(
        EventKind.STORE_DEGRADED, None, None, None, None,
        f"trace store {store} cannot be written: every call goes to the LLM, traces are saved to {spill}", why,
        "check the disk, the file's permissions or the database server; tracer probes it every few seconds and "
        "replays the spill file when it accepts writes (or at the next start)",
        {"store": store, "spill_file": spill},
    )


def store_recovered(store: str, spill: str) -> TracerEvent:
    return TracerEvent(EventKind.STORE_RECOVERED, None, None, None, None,
                       f"trace store {store} is writable again: recording and routing resumed",
                       f"a probe write succeeded and the spill file {spill} was replayed", "none",
                       {"store": store, "spill_file": spill})
