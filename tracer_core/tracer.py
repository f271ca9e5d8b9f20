"""`Tracer`: record teacher traces, fit and certify a surrogate, route inputs, audit and monitor the result."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from tracer_core.audits import AuditSampler, as_audit
from tracer_core.certificate import FREE_TEXT, Certificate
from tracer_core.decision import Decision, Reason, deferred
from tracer_core.embedder import embed_checked, get_default_embedder
from tracer_core.errors import InvalidTraceError, NoTracesError, StoreError, TracerError
from tracer_core.fit import DEFAULT_MAX_TRAIN, fit_policy
from tracer_core.refit import RefitScheduler
from tracer_core.settings import check, check_limit
from tracer_core.shutdown import FitCancelled
from tracer_core.spending import StoreLedger
from tracer_core.store import Evidence, TraceStore
from tracer_core.suspects import MIN_SCORE, teacher_suspects
from tracer_core.suspension import Suspensions, contradiction
from tracer_core.trace import Trace, as_list, check_task, make_trace, normalise_input
from tracer_core.watcher import InForce, PolicyWatcher
from tracer_core.writer import DEFAULT_FLUSH_TIMEOUT_S, FlushReport

log = logging.getLogger("tracer")

DEFAULT_AUDIT_RATE = 0.05
DEFAULT_CLOSE_TIMEOUT_S = 60.0


class Tracer:
    """The routing core for one task version (task name + fingerprint).

    `alpha` is the minimum agreement with the teacher on handled inputs; `delta` the allowed
    probability that the certificate is wrong. With probability `audit_rate` a call is
    audited: the LLM answers whatever the surrogate would do, which keeps a uniform sample of
    traffic for calibration and feeds the monitor that suspends the task when live agreement
    falls below alpha. `max_train` caps the traces a fit trains on (a uniform sample; the
    calibration evidence is never sampled, see `tracer_core.fit`); None trains on all.
    """

    def __init__(
        self,
        task: str,
        db: str | os.PathLike | TraceStore | None = None,
        alpha: float = 0.95,
        delta: float = 0.05,
        *,
        fingerprint: str | None = None,
        embedder: Callable[[list[str]], np.ndarray] | None = None,
        refit_every: int = 200,
        refit_interval_s: float = 600.0,
        auto_refit: bool = True,
        policy_check_s: float = 1.0,
        audit_rate: float = DEFAULT_AUDIT_RATE,
        max_train: int | None = DEFAULT_MAX_TRAIN,
        seed: int = 0,
    ):
        if not isinstance(task, str) or not task.strip():
            raise TracerError(f"task must be a non-empty string, got {task!r}")
        check_task(task)  # the length and encoding limits of a stored trace, checked now
        self.task = task
        self.alpha = float(check("alpha", alpha))
        self.delta = float(check("delta", delta))
        self.audit_rate = float(check("audit_rate", audit_rate))
        self.policy_check_s = float(check("policy_check_s", policy_check_s))
        self.max_train = check_limit("max_train", max_train)
        self.fingerprint = fingerprint or ""
        self.seed = seed
        self._owns_store = not isinstance(db, TraceStore)
        self.store = db if isinstance(db, TraceStore) else TraceStore(db)
        self._embed = embedder
        self._fit_lock = threading.Lock()
        self._error_logged = False
        self.audits = AuditSampler(self.audit_rate, f"{seed}:{task}:{self.fingerprint}:{os.getpid()}", task)
        self.suspensions = Suspensions(self.store, task, self.fingerprint)
        self.watcher = PolicyWatcher(
            self.store, task, self.fingerprint, alpha=self.alpha, delta=self.delta, check_s=self.policy_check_s
        )
        self.refits = RefitScheduler(
            self._refit, every=int(check("refit_every", refit_every)),
            interval_s=float(check("refit_interval_s", refit_interval_s)), enabled=auto_refit,
            name=f"tracer-refit-{task}", paused=lambda: self.store.degraded is not None,
        )

    # -- recording --------------------------------------------------------------------
    def record(self, text: str, label: str, *, decision: Decision | None = None, **fields) -> None:
        """Queue one trace (non-blocking).

        Pass the `decision` that routed the call: its reason, policy version and the policy's
        (would-be) answer are stored with the trace, and a handled decision makes it a
        `surrogate` trace, never training data. Without one, the trace counts as recorded
        outside tracer's routing (a uniform sample, like traces before any policy).
        """
        trace = self._trace(text, label, decision, fields)
        self.store.enqueue(trace)
        if trace.source == "teacher":
            self.refits.count(1)

    def record_many(
        self, texts: Iterable[str], labels: Iterable[str], *, decisions: Sequence[Decision] | None = None, **fields
    ) -> int:
        """Validate all traces first, then write them in one transaction; returns the count written."""
        texts, labels = as_list("texts", texts), as_list("labels", labels)
        if len(texts) != len(labels) or (decisions is not None and len(decisions) != len(texts)):
            raise InvalidTraceError(
                f"record_many got {len(texts)} texts, {len(labels)} labels"
                + (f" and {len(decisions)} decisions" if decisions is not None else "")
            )
        traces = [
            self._trace(text, label, decisions[i] if decisions is not None else None, dict(fields))
            for i, (text, label) in enumerate(zip(texts, labels))
        ]
        written = self.store.append_many(traces)
        self.refits.count(sum(t.source == "teacher" for t in traces))
        return written

    def _trace(self, text: str, label: str, decision: Decision | None, fields: dict) -> Trace:
        if decision is not None:
            if not isinstance(decision, Decision):
                raise InvalidTraceError(f"decision must be a tracer Decision, got {type(decision).__name__}")
            fields.setdefault("source", "surrogate" if decision.handled else "teacher")
            fields.update(route=str(decision.reason), policy_version=decision.policy_version,
                          predicted=decision.label, score=float(decision.score))
        return make_trace(self.task, text, label, fingerprint=self.fingerprint, **fields)

    @property
    def embed(self) -> Callable[[list[str]], np.ndarray]:
        if self._embed is None:
            self._embed = get_default_embedder()
        return self._embed

    # -- fitting ----------------------------------------------------------------------
    def fit(self) -> Certificate:
        """Fit on the teacher traces of this task version and certify; deploy only if certified.

        Calibration uses only unselected traces (see `TraceStore.teacher_evidence`), the task
        version's calibration side and window (`tracer_core.split`); after a suspension only
        traces recorded after it count. The gate runs only when validation predicts a material
        gain over the policy in force, at the level of the version's next attempt, counted in
        the store across processes (`tracer_core.spending`). An explicit fit and a background
        refit never run at once.
        """
        with self._fit_lock:
            self.store.flush()
            floor = self.suspensions.floor()
            evidence = self.store.teacher_evidence(self.task, self.fingerprint, since_id=floor)
            if not evidence.texts:
                after = " recorded after its suspension" if floor else ""
                raise NoTracesError(
                    f"task {self.task!r} version {self.fingerprint or '(unversioned)'} has no teacher traces{after}"
                )
            in_force = self.watcher.current(force=True)
            policy, cert = fit_policy(
                evidence.texts, evidence.labels, alpha=self.alpha, delta=self.delta, embed=self.embed,
                ids=evidence.ids, seed=self.seed, task=self.task, fingerprint=self.fingerprint,
                calibration_pool=evidence.unselected, max_train=self.max_train,
                ledger=StoreLedger(self.store, self.task, self.fingerprint), baseline=self._coverage_in_force(in_force),
            )
            cert.since_trace_id = floor
            cert.calibration_period = _period(evidence, cert.calibration_id_range)
            version = self.store.save_policy(
                self.task, fingerprint=self.fingerprint, certificate=cert.to_dict(),
                artifact=policy.to_bytes() if policy else b"", status="deployed" if cert.deployed else "refused",
                n_traces=len(evidence.texts),
            )
            cert.version = version
            if policy is not None:
                policy.version = version
                self.suspensions.lift_if_automatic(version)
            else:
                log.info("tracer task %r: fit refused (%s)", self.task, cert.reason)
                self._withdraw_if_contradicted(in_force, evidence)
            self.watcher.adopt(policy, None if cert.deployed else cert)
            self.refits.fitted()
            return cert

    def _coverage_in_force(self, in_force: InForce) -> float:
        """Coverage a new attempt must beat: the policy answering now, if its certificate is at least as strict
        as this tracer's alpha and delta (0 when none answers: nothing deployed, or suspended)."""
        policy = in_force.policy
        if policy is None or in_force.suspension is not None:
            return 0.0
        cert = policy.certificate
        return cert.coverage if cert.alpha >= self.alpha and cert.delta <= self.delta else 0.0

    def _refit(self) -> None:
        """Background refit under a cross-process lock; a failure keeps the old policy."""
        try:
            with self.store.refit_lock(self.task, self.fingerprint) as acquired:
                if not acquired:
                    log.info("tracer task %r: another process is refitting; skipped", self.task)
                    return
                cert = self.fit()
                log.info("tracer task %r: refit v%s: %s", self.task, cert.version, cert.summary())
        except FitCancelled:
            log.info("tracer task %r: background refit stopped at interpreter exit", self.task)
        except Exception:
            log.exception("tracer task %r: background refit failed; the previous policy stays", self.task)

    def wait_for_refit(self, timeout: float | None = None) -> bool:
        """Block until a running background refit finishes; True when none is running."""
        return self.refits.wait(timeout)

    # -- routing ----------------------------------------------------------------------
    def route(self, text: str) -> Decision:
        """Decide one input: the surrogate's certified answer, or defer to the LLM with a reason."""
        return self.route_many([text])[0]

    def route_many(self, texts: Sequence[str]) -> list[Decision]:
        """Vectorised `route()`: one embedding batch, same decisions."""
        texts = [normalise_input(t) for t in texts]
        try:
            return self._decide(texts)
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
        in_force = self.watcher.current()
        if in_force.suspension is None and self.watcher.monitor.rejected:
            in_force = self._suspend_on_monitor()
        policy = in_force.policy
        if in_force.suspension is not None:
            return [deferred(Reason.SUSPENDED, policy.version if policy else None) for _ in texts]
        if policy is None:
            refusal = in_force.refusal
            reason = Reason.FREE_TEXT_TASK if refusal and refusal.reason_code == FREE_TEXT else Reason.NO_POLICY
            return [deferred(Reason.INVALID_POLICY if in_force.policy_error else reason) for _ in texts]
        if not texts:
            return []
        decisions = policy.decide(texts, embed_checked(self.embed, texts))
        self.audits.watch(decisions, policy.certificate)
        return [as_audit(d) if audit else d for d, audit in zip(decisions, audited)]

    async def aroute(self, text: str) -> Decision:
        """`route()` in a worker thread, so the event loop never waits on embedding."""
        return await asyncio.to_thread(self.route, text)

    async def aroute_many(self, texts: Sequence[str]) -> list[Decision]:
        return await asyncio.to_thread(self.route_many, texts)

    # -- audits, monitor, suspension ----------------------------------------------------
    @property
    def current_audit_rate(self) -> float:
        """`audit_rate`, raised while the monitor is worried or a drift signal is recent."""
        return self.audits.rate(self.watcher.monitor)

    def _suspend_on_monitor(self) -> InForce:
        summary = self.watcher.monitor.summary()
        self.suspensions.suspend(
            f"audits contradict the certificate: agreement {summary['agreement']} on {summary['audits']} "
            f"audited calls the policy would have answered (alpha {self.alpha})",
            automatic=True, **summary,
        )
        return self.watcher.current(force=True)

    def _withdraw_if_contradicted(self, in_force: InForce, evidence: Evidence) -> None:
        """A refused refit withdraws the deployed policy when fresh unselected traces contradict it."""
        policy = in_force.policy
        if policy is None or in_force.suspension is not None:
            return
        found = contradiction(policy, evidence, self.embed, self.alpha, self.delta)
        if found is not None:
            agree, n = found
            self.suspensions.suspend(
                f"withdrawn: a refit was refused and the deployed v{policy.version} agrees on {agree} of {n} "
                f"fresh unselected traces it would answer (alpha {self.alpha})",
                automatic=True, audits=n, agreement=round(agree / n, 4),
            )

    def suspend(self, reason: str = "suspended by hand") -> None:
        """Send every call of this task version to the LLM, in every process, until `resume()`."""
        self.suspensions.suspend(reason, automatic=False)
        self.watcher.current(force=True)

    def resume(self) -> Certificate:
        """Lift a suspension; needs a certificate on traces recorded after it (fits one if there is none)."""
        if self.suspensions.current() is None:
            raise TracerError(f"task {self.task!r} is not suspended")
        policy = self.watcher.current(force=True).policy
        fresh = policy is not None and policy.certificate.since_trace_id >= self.suspensions.floor()
        cert = policy.certificate if fresh else self.fit()
        if not cert.deployed:
            raise TracerError(f"task {self.task!r} stays suspended: no valid certificate after the suspension ({cert.reason})")
        self.suspensions.resume(f"resumed by hand with v{cert.version}", cert.version)
        self.watcher.current(force=True)
        return cert

    # -- state --------------------------------------------------------------------------
    @property
    def policy_version(self) -> int | None:
        policy = self.watcher.current().policy
        return policy.version if policy else None

    @property
    def certificate(self) -> Certificate | None:
        """The deployed policy's certificate, or the last refusal when nothing is deployed."""
        in_force = self.watcher.current()
        return in_force.policy.certificate if in_force.policy else in_force.refusal

    def status(self) -> dict:
        """Traces by source, the deployed policy, the last fit attempt, suspension and monitor, as plain data."""
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
            "policy_version": policy.version if policy else None,
            "coverage": cert.coverage if cert else 0.0,
            "agreement_lower_bound": cert.agreement_lower_bound if cert else None,
            "fit_evidence": cert.evidence() if cert else None,
            "alpha": self.alpha,
            "delta": self.delta,
            "last_fit_at": last["created_at"] if last else None,
            "last_fit": (last["certificate"] or {}).get("reason", "?") if last else "never fitted",
            "versions": len(versions),
            "suspended": in_force.suspension,
            "monitor": self.watcher.monitor.summary(),
            "audit_rate": self.current_audit_rate,
        }

    def suspects(self, limit: int | None = 20, min_score: float = MIN_SCORE) -> dict:
        """Teacher traces whose label the cross-fitted evidence contradicts, ranked (see `tracer_core.suspects`)."""
        self.store.flush()
        teacher = self.store.teacher_examples(self.task, self.fingerprint)
        return teacher_suspects(teacher, self.embed, limit=limit, min_score=min_score, seed=self.seed).to_dict()

    def flush(self, timeout: float | None = DEFAULT_FLUSH_TIMEOUT_S) -> FlushReport:
        """Wait at most `timeout` s for queued traces to be written; the report says what was not."""
        return self.store.flush(timeout)

    def close(self, timeout: float | None = DEFAULT_CLOSE_TIMEOUT_S) -> FlushReport:
        """Wait for a running refit and flush queued traces (together at most `timeout` s); close the
        store if this tracer opened it. The report says what could not be written."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self.wait_for_refit(timeout)
        left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        return self.store.close(left) if self._owns_store else self.store.flush(left)

    def __enter__(self) -> Tracer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _period(evidence: Evidence, id_range: list) -> list:
    """[first, last] created_at of the traces at the ends of a calibration window (ids in `evidence`)."""
    if not id_range or not evidence.created_at:
        return []
    at = dict(zip(evidence.ids, evidence.created_at))
    return [at[id_range[0]], at[id_range[1]]]
