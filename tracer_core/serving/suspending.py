"""When a task version is suspended and resumed: the monitor's rejection, a withdrawal after a refused
refit, by hand; and the certificate a resume needs. The events themselves are `suspension.Suspensions`."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

from tracer_core.background import Job
from tracer_core.errors import TracerError
from tracer_core.learning.certificate import Certificate
from tracer_core.learning.spending import attempt_delta
from tracer_core.serving.binding import answers_for
from tracer_core.serving.embedding import TracerEmbedder
from tracer_core.serving.suspension import Suspensions, contradiction
from tracer_core.serving.watcher import READ_BUDGET_S, InForce, PolicyWatcher
from tracer_core.storage.store import Evidence, TraceStore

SUSPEND_RETRY_S = 1.0  # a suspension the monitor asked for that could not be written is tried again after this


class Suspender:
    """Suspends and resumes one task version, and refreshes what is in force after each event."""

    def __init__(self, store: TraceStore, suspensions: Suspensions, watcher: PolicyWatcher, embedder: TracerEmbedder,
                 *, task: str, alpha: float, delta: float) -> None:
        self.store, self.suspensions, self.watcher, self.embedder = store, suspensions, watcher, embedder
        self.task, self.alpha, self.delta = task, alpha, delta
        self._lock = threading.Lock()
        self._suspending: Job[None] | None = None  # the monitor's suspension being written, if any

    def on_monitor(self) -> None:
        """Suspend on the store's writing thread (the store may be slow or locked); one suspension at a
        time, tried again after SUSPEND_RETRY_S if it failed."""
        with self._lock:
            job = self._suspending
            if job is not None and (job.finished is None or job.age < SUSPEND_RETRY_S):
                return
            self._suspending = self.store.background_write(self.now)

    def now(self) -> None:
        """Write the suspension the monitor's rejection calls for (on the store's writing thread, or in a fit)."""
        summary = self.watcher.monitor.summary()
        self.suspensions.suspend(
            f"audits contradict the certificate: agreement {summary['agreement']} on {summary['audits']} "
            f"audited calls the policy would have answered (alpha {summary.get('alpha', self.alpha)})",
            automatic=True, **summary,
        )
        self.watcher.current(force=True)

    def settle(self) -> None:
        """Wait at most READ_BUDGET_S for a suspension the monitor asked for (it is part of the state)."""
        if self._suspending is not None:
            with contextlib.suppress(Exception):
                self._suspending.result(READ_BUDGET_S)

    def withdraw_if_contradicted(self, in_force: InForce, evidence: Evidence, refused_version: int) -> None:
        """A refused refit (saved as policy row `refused_version`) withdraws the deployed policy when fresh
        unselected traces contradict it.

        Each refused refit looks again at a grown set of fresh traces, so the looks are multiple tests: look k
        of a policy version tests its certificate's alpha at `attempt_delta(delta, k)` (they sum to at most
        the certificate's delta), so that repeated looks at a policy as good as certified withdraw it with
        probability at most delta over its life. k is counted in the store (`look_index`), so the bound holds
        across every process that refits this task version."""
        policy = in_force.policy
        if policy is None or in_force.suspension is not None or self.embedder.mismatch(policy) is not None:
            return
        look = self.look_index(policy.version, refused_version)
        cert = policy.certificate
        found = contradiction(policy, evidence, self.embedder.embed, cert.alpha, attempt_delta(cert.delta, look))
        if found is not None:
            agree, n = found
            self.suspensions.suspend(
                f"withdrawn: a refit was refused and the deployed v{policy.version} agrees on {agree} of {n} "
                f"fresh unselected traces it would answer (alpha {cert.alpha}, look {look} at delta "
                f"{attempt_delta(cert.delta, look):.2g})",
                automatic=True, audits=n, agreement=round(agree / n, 4),
            )

    def look_index(self, deployed_version: int | None, refused_version: int) -> int:
        """The withdrawal look k of a refused refit: the refused policy rows of this task version after the deployed
        version, through `refused_version` (saved before the look; versions are unique, so no two looks share k)."""
        return self.store.count_policies(self.task, fingerprint=self.watcher.fingerprint, status="refused",
                                         after=deployed_version or 0, through=refused_version)

    def suspend(self, reason: str) -> None:
        """Suspend by hand; see `Tracer.suspend`."""
        self.suspensions.suspend(reason, automatic=False)
        self.watcher.current(force=True)

    def resume(self, fit: Callable[[], Certificate]) -> Certificate:
        """Lift a suspension with a certificate on traces recorded after it, calling `fit` if there is none."""
        if self.suspensions.current() is None:
            raise TracerError(f"task {self.task!r} is not suspended")
        policy = self.watcher.current(force=True).policy
        cert = policy.certificate if policy is not None else None
        if cert is None or cert.since_trace_id < self.suspensions.floor() or not answers_for(cert, self.alpha, self.delta):
            cert = fit()
        if not cert.deployed:
            raise TracerError(f"task {self.task!r} stays suspended: no valid certificate after the suspension ({cert.reason})")
        self.suspensions.resume(f"resumed by hand with v{cert.version}", cert.version)
        self.watcher.current(force=True)
        return cert
