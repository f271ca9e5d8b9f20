"""The kill switch of a task version: suspend (by the monitor, a withdrawal or by hand) and resume.

Events are appended to the store's `suspensions` table, so every process sees them. Each
event records the highest trace id at that moment: traces up to it are never used again by
a fit after a suspension, and the monitor starts counting audits after the newest event.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from tracer_core.learning.embedder import embed_checked
from tracer_core.learning.gate import significantly_below
from tracer_core.learning.policy import Policy
from tracer_core.observability import observe
from tracer_core.storage.store import Evidence, TraceStore

log = logging.getLogger("tracer")


class Suspensions:
    """Suspend and resume events of one task version."""

    def __init__(self, store: TraceStore, task: str, fingerprint: str) -> None:
        self.store, self.task, self.fingerprint = store, task, fingerprint

    def current(self) -> dict | None:
        return self.store.suspension(self.task, self.fingerprint)

    def floor(self) -> int:
        return self.store.suspension_floor(self.task, self.fingerprint)

    def suspend(self, reason: str, *, automatic: bool, **details: object) -> None:
        """Suspend now (no-op when already suspended); queued traces are written first."""
        if self.current() is not None:
            return
        log.warning("tracer task %r suspended: %s", self.task, reason)
        self.store.flush()
        self._log("suspend", reason, automatic=automatic, **details)
        observe.suspended(self.task, self.fingerprint, reason, automatic, details)

    def resume(self, reason: str, version: int | None) -> None:
        self._log("resume", reason, version=version)
        observe.resumed(self.task, self.fingerprint, reason, version)

    def lift_if_automatic(self, version: int | None) -> None:
        """A new certificate lifts a suspension the monitor or a withdrawal made (never a manual one)."""
        suspension = self.current()
        if suspension is not None and suspension["details"].get("automatic"):
            self.resume(f"re-certified as v{version}", version)

    def _log(self, action: str, reason: str, **details: object) -> None:
        top = self.store.max_id(self.task, fingerprint=self.fingerprint)
        self.store.log_suspension(self.task, self.fingerprint, action=action, reason=reason,
                                  details={"trace_max_id": top, **details})


def contradiction(policy: Policy, evidence: Evidence, embed: Callable[[list[str]], np.ndarray],
                  alpha: float, delta: float) -> tuple[int, int] | None:
    """(agree, n) when fresh unselected traces the policy never saw contradict it (significantly below alpha)."""
    fresh = [i for i, (trace_id, unselected) in enumerate(zip(evidence.ids, evidence.unselected))
             if unselected and trace_id > policy.certificate.trace_max_id]
    if not fresh:
        return None
    texts = [evidence.texts[i] for i in fresh]
    decisions = policy.decide(texts, embed_checked(embed, texts))
    outcomes = [d.label == evidence.labels[i] for d, i in zip(decisions, fresh) if d.handled]
    agree, n = sum(outcomes), len(outcomes)
    return (agree, n) if significantly_below(agree, n, alpha, delta) else None
