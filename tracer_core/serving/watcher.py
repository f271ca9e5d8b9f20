"""What is in force for one task version: the deployed policy, the last refusal, a suspension, the monitor.

Every process reads the same store, so a policy deployed, deleted or suspended anywhere is
seen everywhere within `policy_check_s`. The monitor is recomputed from the audits in the
store, in id order, so every process reaches the same verdict on the same evidence. Each policy
version has its own monitor, fresh at its deployment and after every suspend or resume event:
it counts only the audits recorded under that version after the newest event, so a policy never
inherits the evidence gathered against another.

The read runs on the store's own thread. A routing call waits at most CALLER_BUDGET_S for it
(`tracer_core.background`), anything else READ_BUDGET_S: a store that does not answer (a PostgreSQL server that hangs, a
store still opening) makes calls defer at once, with `store_unavailable`, until the read in the
background returns (`Late` while that is shorter than READ_BUDGET_S, then a StoreError).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass

from tracer_core import background
from tracer_core.background import Job, Late
from tracer_core.errors import PolicyError, StoreError
from tracer_core.learning.certificate import Certificate
from tracer_core.learning.policy import Policy
from tracer_core.observability import observe
from tracer_core.serving.monitor import AgreementMonitor
from tracer_core.storage.store import TraceStore

log = logging.getLogger("tracer")

READ_BUDGET_S = 2.0  # the longest anything but a routing call waits for the store's state


@dataclass(frozen=True)
class InForce:
    """A snapshot of the state routing obeys."""

    policy: Policy | None
    refusal: Certificate | None
    suspension: dict | None
    monitor: AgreementMonitor  # of `policy`, since the event behind `suspension`: read and published with them
    policy_error: str | None = None  # why the newest deployed policy is not used (it failed validation)


class PolicyWatcher:
    """Polls the store for the task version's policy, suspension and audits."""

    def __init__(self, store: TraceStore, task: str, fingerprint: str, *, alpha: float, delta: float,
                 check_s: float) -> None:
        self.store, self.task, self.fingerprint = store, task, fingerprint
        self.alpha, self.delta, self.check_s = alpha, delta, check_s
        self._lock = threading.Lock()
        self._checked_at = -float("inf")
        self._monitor = AgreementMonitor(alpha, delta)  # built on the store's reading thread, published by _finish
        self._state = InForce(None, None, None, self._monitor)
        self._latest_any: int | None = None
        self._monitor_key: tuple[int | None, int] | None = None  # (policy version, event floor) it monitors
        self._audit_seen = 0
        self._rejected: int | None = None  # a deployed version that failed validation (not re-read)
        self._reading: Job[InForce] | None = None  # the read in flight, if any
        self.loaded = False  # a read of the state in force has finished in this process

    @property
    def monitor(self) -> AgreementMonitor:
        """The monitor of the state in force (routing reads it from its `InForce` snapshot instead)."""
        return self._state.monitor

    def current(self, *, force: bool = False, budget_s: float | None = READ_BUDGET_S) -> InForce:
        """The state in force, re-read from the store at most once per `check_s` (or now with `force`).

        Waits at most `budget_s` (None: as long as it takes) for the read, else raises StoreError;
        while that read is still running, later routing calls raise at once instead of using the old state.
        """
        now = time.monotonic()
        with self._lock:
            reading = self._reading
            if reading is None:
                if not force and now - self._checked_at < self.check_s:
                    return self._state
                self._checked_at = now
                reading = self._reading = self.store.background_read(self._read, self._finish)
            elif reading.overdue and budget_s is not None and budget_s <= background.CALLER_BUDGET_S:
                late = Late if reading.age < READ_BUDGET_S else StoreError
                raise late(f"the trace store has not answered for {reading.age:.2f} s")
        return reading.result(budget_s)

    def prefetch(self) -> None:
        """Start reading the state in force on the store's reading thread without waiting for it, so that the
        first routed call finds it read (or being read) instead of starting the read itself."""
        with self._lock:
            if self._reading is None:
                with contextlib.suppress(StoreError):  # a closed store: the first call reads again and says so
                    self._reading = self.store.background_read(self._read, self._finish)
                    self._checked_at = time.monotonic()

    def _finish(self, read: Job[InForce]) -> None:
        with self._lock:
            if read.value is not None:
                self._state, self.loaded = read.value, True
                observe.state_read(self, read.value)
            self._reading = None

    def adopt(self, policy: Policy | None, refusal: Certificate | None) -> None:
        """Take the result of a fit made in this process without waiting for the next poll."""
        with self._lock:
            state = self._state
            self._state = InForce(policy if policy is not None else state.policy, refusal, state.suspension,
                                  state.monitor, None if policy is not None else state.policy_error)
            self._checked_at = -float("inf")

    def _read(self) -> InForce:
        store, task, fp = self.store, self.task, self.fingerprint
        suspension, floor = store.suspension_state(task, fp)  # one read: a fresh monitor never without its event
        policy, refusal = self._state.policy, self._state.refusal
        latest_any = store.latest_policy_version(task, fingerprint=fp, status=None)
        if latest_any != self._latest_any:
            row = store.latest_policy(task, fingerprint=fp, status=None)
            refusal = _certificate_of(row) if row and row["status"] != "deployed" else None
            self._latest_any = latest_any
        deployed = store.latest_policy_version(task, fingerprint=fp)
        error = self._state.policy_error
        if deployed is None:
            policy, error = None, None  # never deployed, or every deployed row was deleted
        elif deployed == self._rejected:
            policy = None  # the newest deployed policy is invalid: nothing answers, not even an older one
        elif policy is None or policy.version != deployed:
            policy, error = self._load(deployed)
        try:
            self._update_monitor(policy, suspension, floor)
        except StoreError as exc:  # the traces table may be unreadable while policies still are
            log.debug("tracer task %r: audits not read (%s); the monitor waits", task, exc)
        return InForce(policy, refusal, suspension, self._monitor, error)

    def _load(self, version: int) -> tuple[Policy | None, str | None]:
        """The newest deployed policy if it passes validation; else (None, why), logged once per version."""
        row = self.store.latest_policy(self.task, fingerprint=self.fingerprint)
        if row is None:
            return None, None
        try:
            policy = Policy.from_row(row)
        except PolicyError as exc:
            log.error("tracer task %r: policy v%s is not used: %s", self.task, version, exc)
            self._rejected = version
            return None, str(exc)
        policy.certificate.version = policy.version
        return policy, None

    def _update_monitor(self, policy: Policy | None, suspension: dict | None, floor: int) -> None:
        """Feed the audits of the policy version in force, recorded since the last suspend/resume event (whose highest
        trace id is `floor`), in id order.

        The monitor tests the policy's own certificate (its alpha and delta), whatever this caller asks:
        the promise is the certificate's, and a caller's stricter level is refused at routing instead.
        """
        version = policy.version if policy is not None else None
        if (version, floor) != self._monitor_key:
            cert = policy.certificate if policy is not None else None
            alpha, delta = (cert.alpha, cert.delta) if cert is not None and cert.alpha > 0 else (self.alpha, self.delta)
            self._monitor = AgreementMonitor(alpha, delta, version)
            self._monitor_key, self._audit_seen = (version, floor), floor
        if suspension is not None or version is None:
            return
        rows = self.store.audit_outcomes(self.task, self.fingerprint, since_id=self._audit_seen, policy_version=version)
        if rows:
            self._audit_seen = rows[-1][0]
            self._monitor.update(agreed for _, agreed in rows)


def _certificate_of(row: dict) -> Certificate:
    data = row["certificate"] if isinstance(row["certificate"], dict) else {}
    try:
        cert = Certificate.from_dict(data)
    except TypeError:  # a corrupt certificate: keep its reason, claim nothing
        cert = Certificate(
            task=row["task"], fingerprint=row["fingerprint"], deployed=False, alpha=0.0, delta=0.0,
            reason=str(data.get("reason", "unreadable certificate")), reason_code=str(data.get("reason_code", "")),
            n_traces=row["n_traces"],
        )
    cert.version = row["version"]
    return cert
