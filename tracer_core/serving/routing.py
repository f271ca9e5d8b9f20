"""Routing: one task version's calls, each answered by the certified policy, audited, or deferred with a reason."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from tracer_core import background
from tracer_core.background import Late
from tracer_core.decision import Decision, Reason, deferred
from tracer_core.errors import StoreError
from tracer_core.learning.certificate import FREE_TEXT, Certificate
from tracer_core.learning.embedder import embed_checked
from tracer_core.serving.audits import AuditSampler, as_audit
from tracer_core.serving.binding import Level, answers_for, certified_level
from tracer_core.serving.embedding import TracerEmbedder
from tracer_core.serving.refit import RefitScheduler
from tracer_core.serving.suspending import Suspender
from tracer_core.serving.watcher import PolicyWatcher
from tracer_core.storage.store import TraceStore
from tracer_core.storage.trace import normalise_input

log = logging.getLogger("tracer")


class Router:
    """Decides the calls of one task version; any failure of its own defers to the LLM."""

    def __init__(self, store: TraceStore, watcher: PolicyWatcher, audits: AuditSampler, suspender: Suspender,
                 embedder: TracerEmbedder, refits: RefitScheduler, *, task: str, alpha: float, delta: float) -> None:
        self.store, self.watcher, self.audits, self.suspender = store, watcher, audits, suspender
        self.embedder, self.refits = embedder, refits
        self.task, self.alpha, self.delta = task, alpha, delta
        self._error_logged = False
        self._stricter_logged: int | None = None  # the policy version a stricter-caller warning was logged for

    def route_many(self, texts: Sequence[str]) -> list[Decision]:
        """One decision per input, in one embedding batch; see `Tracer.route_many`."""
        texts = [normalise_input(t) for t in texts]
        try:
            return self._decide(texts)
        except Late:  # the store's state is still being read (opening, slow or hung): defer meanwhile
            reason = Reason.STORE_UNAVAILABLE if self.watcher.loaded else Reason.POLICY_LOADING
            return [deferred(reason) for _ in texts]
        except StoreError as exc:  # e.g. a PostgreSQL server that is down: expected, not an internal failure
            if not self._error_logged:
                log.error("tracer task %r: the trace store cannot be read (%s); deferring to the LLM", self.task, exc)
                self._error_logged = True
            return [deferred(Reason.STORE_UNAVAILABLE) for _ in texts]
        except Exception:
            if not self._error_logged:
                log.exception("tracer task %r: routing failed; deferring to the LLM", self.task)
                self._error_logged = True
            return [deferred(Reason.ERROR) for _ in texts]
        finally:
            self.refits.maybe_start()

    def _decide(self, texts: list[str]) -> list[Decision]:
        if self.store.degraded:
            return [deferred(Reason.STORE_UNAVAILABLE) for _ in texts]
        audited = self.audits.draw(len(texts), self.watcher.monitor)  # drawn before routing
        in_force = self.watcher.current(budget_s=background.CALLER_BUDGET_S)
        policy, monitor = in_force.policy, in_force.monitor  # one snapshot: a fresh monitor comes with its event
        if in_force.suspension is None and monitor.rejected:
            self.suspender.on_monitor()  # written in the background; the calls defer as suspended meanwhile
        if in_force.suspension is not None or monitor.rejected:
            return [deferred(Reason.SUSPENDED, policy.version if policy else None) for _ in texts]
        if policy is None:
            refusal = in_force.refusal
            reason = Reason.FREE_TEXT_TASK if refusal and refusal.reason_code == FREE_TEXT else Reason.NO_POLICY
            return [deferred(Reason.INVALID_POLICY if in_force.policy_error else reason) for _ in texts]
        if self.embedder.mismatch(policy) is not None:
            return [deferred(Reason.EMBEDDER_MISMATCH, policy.version) for _ in texts]
        if not texts:
            return []
        if not answers_for(policy.certificate, self.alpha, self.delta):
            self._log_stricter(policy.certificate)
            return [deferred(Reason.NOT_CERTIFIED_AT_ALPHA, policy.version) for _ in texts]
        decisions = policy.decide(texts, embed_checked(self.embedder.embed, texts))
        self.audits.watch(decisions, policy.certificate)
        return [as_audit(d) if audit else d for d, audit in zip(decisions, audited)]

    def _log_stricter(self, cert: Certificate) -> None:
        """Say once per policy version that this caller asks more than the deployed certificate."""
        if self._stricter_logged != cert.version:
            self._stricter_logged = cert.version
            log.warning(
                "tracer task %r: policy v%s is certified at %s; this caller asks %s, so every call goes to the LLM "
                "until a fit at that level deploys", self.task, cert.version, certified_level(cert),
                Level(self.alpha, self.delta),
            )
