"""What is in force for one task version: the deployed policy, the last refusal, a suspension, the monitor.

Every process reads the same store, so a policy deployed, deleted or suspended anywhere is
seen everywhere within `policy_check_s`. The monitor is recomputed from the audits in the
store, in id order, so every process reaches the same verdict on the same evidence.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from tracer_core.certificate import Certificate
from tracer_core.monitor import AgreementMonitor
from tracer_core.policy import Policy
from tracer_core.store import TraceStore

log = logging.getLogger("tracer")


@dataclass(frozen=True)
class InForce:
    """A snapshot of the state routing obeys."""

    policy: Policy | None
    refusal: Certificate | None
    suspension: dict | None


class PolicyWatcher:
    """Polls the store for the task version's policy, suspension and audits."""

    def __init__(self, store: TraceStore, task: str, fingerprint: str, *, alpha: float, delta: float,
                 check_s: float) -> None:
        self.store, self.task, self.fingerprint = store, task, fingerprint
        self.alpha, self.delta, self.check_s = alpha, delta, check_s
        self._lock = threading.Lock()
        self._checked_at = -float("inf")
        self._state = InForce(None, None, None)
        self._latest_any: int | None = None
        self._monitor = AgreementMonitor(alpha, delta)
        self._monitor_floor: int | None = None  # suspension id the monitor was reset at
        self._audit_seen = 0

    @property
    def monitor(self) -> AgreementMonitor:
        return self._monitor

    def current(self, *, force: bool = False) -> InForce:
        """The state in force, re-read from the store at most once per `check_s` (or now with `force`)."""
        now = time.monotonic()
        if not force and now - self._checked_at < self.check_s:
            return self._state
        with self._lock:
            if force or now - self._checked_at >= self.check_s:
                self._checked_at = now
                self._state = self._read()
            return self._state

    def adopt(self, policy: Policy | None, refusal: Certificate | None) -> None:
        """Take the result of a fit made in this process without waiting for the next poll."""
        with self._lock:
            self._state = InForce(policy if policy is not None else self._state.policy, refusal, self._state.suspension)
            self._checked_at = -float("inf")

    def _read(self) -> InForce:
        store, task, fp = self.store, self.task, self.fingerprint
        suspension = store.suspension(task, fp)
        policy, refusal = self._state.policy, self._state.refusal
        latest_any = store.latest_policy_version(task, fingerprint=fp, status=None)
        if latest_any != self._latest_any:
            row = store.latest_policy(task, fingerprint=fp, status=None)
            refusal = _certificate_of(row) if row and row["status"] != "deployed" else None
            self._latest_any = latest_any
        deployed = store.latest_policy_version(task, fingerprint=fp)
        if deployed is None:
            policy = None  # never deployed, or its row was deleted
        elif policy is None or policy.version != deployed:
            row = store.latest_policy(task, fingerprint=fp)
            policy = Policy.from_row(row) if row is not None else None
            if policy is not None:
                policy.certificate.version = policy.version
        self._update_monitor(suspension)
        return InForce(policy, refusal, suspension)

    def _update_monitor(self, suspension: dict | None) -> None:
        """Feed audits recorded since the last suspend/resume event to the monitor, in id order."""
        floor = self.store.last_event_trace_id(self.task, self.fingerprint)
        if floor != self._monitor_floor:
            self._monitor = AgreementMonitor(self.alpha, self.delta)
            self._monitor_floor, self._audit_seen = floor, floor
        if suspension is not None:
            return
        rows = self.store.audit_outcomes(self.task, self.fingerprint, since_id=self._audit_seen)
        if rows:
            self._audit_seen = rows[-1][0]
            self._monitor.update(agreed for _, agreed in rows)


def _certificate_of(row: dict) -> Certificate:
    cert = Certificate.from_dict(row["certificate"])
    cert.version = row["version"]
    return cert
