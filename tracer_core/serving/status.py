"""The state of one task version as plain data: traces, the policy in force and what it certifies, the last
fit, a suspension, the monitor."""

from __future__ import annotations

from tracer_core.errors import StoreError
from tracer_core.serving.audits import AuditSampler
from tracer_core.serving.binding import answers_for
from tracer_core.serving.embedding import TracerEmbedder
from tracer_core.serving.guarantee import guarantee_facts
from tracer_core.serving.suspending import Suspender
from tracer_core.serving.watcher import PolicyWatcher
from tracer_core.storage.store import TraceStore


class TracerStatus:
    """Reads the status of one task version for a caller at (alpha, delta)."""

    def __init__(self, store: TraceStore, watcher: PolicyWatcher, suspender: Suspender, embedder: TracerEmbedder,
                 audits: AuditSampler, *, task: str, fingerprint: str, alpha: float, delta: float) -> None:
        self.store, self.watcher, self.suspender, self.embedder, self.audits = store, watcher, suspender, embedder, audits
        self.task, self.fingerprint, self.alpha, self.delta = task, fingerprint, alpha, delta

    def read(self) -> dict:
        """See `Tracer.status`."""
        self.suspender.settle()  # a suspension the monitor asked for is part of the state
        in_force = self.watcher.current(force=True)
        policy = in_force.policy
        versions = self.store.policies(self.task, fingerprint=self.fingerprint)
        last = versions[0] if versions else None
        cert = policy.certificate if policy else None
        try:
            traces = self.store.counts(self.task)
        except StoreError:
            traces = {}  # `degraded` says why
        return {
            "task": self.task,
            "fingerprint": self.fingerprint,
            "traces": traces,
            "degraded": self.store.degraded,
            "policy_error": in_force.policy_error,
            "embedder_mismatch": self.embedder.mismatch(policy) if policy else None,
            "policy_version": policy.version if policy else None,
            "coverage": cert.coverage if cert else 0.0,
            "certified": guarantee_facts(cert.to_dict() if cert else None),
            "fit_evidence": cert.evidence() if cert else None,
            "alpha": self.alpha,  # this caller's level; the policy answers it only if "answers_this_caller"
            "delta": self.delta,
            "answers_this_caller": cert is not None and answers_for(cert, self.alpha, self.delta),
            "last_fit_at": last["created_at"] if last else None,
            "last_fit": (last["certificate"] or {}).get("reason", "?") if last else "never fitted",
            "versions": len(versions),
            "suspended": in_force.suspension,
            "monitor": self.watcher.monitor.summary(),
            "audit_rate": self.audits.rate(self.watcher.monitor),
        }
