"""`Tracer`: record teacher traces, fit and certify a surrogate, route inputs, audit and monitor the result."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace

import numpy as np

from tracer_core import background
from tracer_core.background import Job, Late
from tracer_core.decision import Decision, Reason, deferred
from tracer_core.errors import InvalidTraceError, NoTracesError, StoreError, TracerError
from tracer_core.learning.certificate import FREE_TEXT, Certificate
from tracer_core.learning.embedder import embed_checked, get_default_embedder
from tracer_core.learning.embedder_identity import identify, mismatch
from tracer_core.learning.fit import DEFAULT_MAX_TRAIN, fit_policy
from tracer_core.learning.policy import Policy
from tracer_core.learning.policy_seal import seal
from tracer_core.learning.spending import StoreLedger
from tracer_core.learning.suspects import MIN_SCORE, teacher_suspects
from tracer_core.observability import observe
from tracer_core.serving.audits import AuditSampler, as_audit
from tracer_core.serving.binding import Level, answers_for, certified_level
from tracer_core.serving.guarantee import guarantee_facts
from tracer_core.serving.refit import RefitScheduler, abandon
from tracer_core.serving.refit_limits import background_refit_limits
from tracer_core.serving.suspension import Suspensions, contradiction
from tracer_core.serving.watcher import READ_BUDGET_S, InForce, PolicyWatcher
from tracer_core.settings import check, check_limit
from tracer_core.shutdown import STOP_BOUND_S, FitCancelled, cancelled, check_exit
from tracer_core.storage.store import Evidence, TraceStore
from tracer_core.storage.trace import (
    CACHED,
    UNPARSED,
    UNPARSED_LABEL,
    Trace,
    as_list,
    check_task,
    is_label,
    make_trace,
    normalise_input,
)
from tracer_core.storage.writer import DEFAULT_FLUSH_TIMEOUT_S, FlushReport

log = logging.getLogger("tracer")

DEFAULT_AUDIT_RATE = 0.05
DEFAULT_CLOSE_TIMEOUT_S = DEFAULT_FLUSH_TIMEOUT_S
SUSPEND_RETRY_S = 1.0  # a suspension the monitor asked for that could not be written is tried again after this


class Tracer:
    """The routing core for one task version (task name + fingerprint).

    `alpha` is the minimum agreement with the teacher on handled inputs; `delta` the allowed
    probability that the certificate is wrong. With probability `audit_rate` a call is
    audited: the LLM answers whatever the surrogate would do, which keeps a uniform sample of
    traffic for calibration and feeds the monitor that suspends the task when live agreement
    falls below alpha. `max_train` caps the traces a fit trains on (a uniform sample; the
    calibration evidence is never sampled, see `tracer_core.learning.fit`); None trains on all.
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
        self._identity: dict | None = None  # the embedder's identity, computed once
        self._embedder_checked: tuple[Policy | None, str | None] = (None, None)  # (policy, why it cannot answer)
        self._fit_lock = threading.Lock()
        self._suspend_lock = threading.Lock()
        self._suspending: Job[None] | None = None  # the monitor's suspension being written, if any
        self._error_logged = False
        self._stricter_logged: int | None = None  # the policy version a stricter-caller warning was logged for
        self.audits = AuditSampler(self.audit_rate, f"{seed}:{task}:{self.fingerprint}:{os.getpid()}", task)
        self.suspensions = Suspensions(self.store, task, self.fingerprint)
        self.watcher = PolicyWatcher(
            self.store, task, self.fingerprint, alpha=self.alpha, delta=self.delta, check_s=self.policy_check_s
        )
        self.refits = RefitScheduler(
            self._refit, every=int(check("refit_every", refit_every)),
            interval_s=float(check("refit_interval_s", refit_interval_s)), enabled=auto_refit,
            name=f"tracer-refit-{task}", paused=lambda: self.store.closed or self.store.degraded is not None,
        )
        observe.watch(self)

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
        observe.recorded(self, [trace])
        if trace.source == "teacher":
            self.refits.count(1)

    def record_answer(
        self, text: str, label: str | None, *, decision: Decision | None = None, cached: bool = False, **fields
    ) -> None:
        """Record the answer to a call, as the integrations do, whatever it is.

        An answer that carries no label (`label` None, empty or too long) is kept as an `unparsed`
        trace and an LLM answer from the caller's own cache (`cached`) as a `cached` one: neither is
        ever training or calibration evidence (one teaches nothing, the other repeats an answer
        already recorded), but an audit among them still counts for the monitor, an unparsed one as
        a disagreement (the LLM did not give the policy's answer). So which audits count never
        depends on the input.
        """
        if not is_label(label):
            label, fields["source"] = UNPARSED_LABEL, UNPARSED
        elif cached and not (decision is not None and decision.handled):
            fields["source"] = CACHED
        self.record(text, str(label), decision=decision, **fields)

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
        observe.recorded(self, traces)
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

    @property
    def embedder_identity(self) -> dict:
        """This tracer's embedder: kind, name, dimension, probe checksum (`tracer_core.learning.embedder_identity`)."""
        if self._identity is None:
            self._identity = identify(self.embed)
        return self._identity

    def embedder_mismatch(self, policy: Policy | None = None) -> str | None:
        """Why `policy` (default: the one in force) cannot answer with this tracer's embedder, or None.
        Checked once per loaded policy, and logged then."""
        policy = policy if policy is not None else self.watcher.current().policy
        if policy is None:
            return None
        checked, problem = self._embedder_checked
        if checked is not policy:
            problem = mismatch(policy, self.embedder_identity)
            if problem is not None:
                log.error("tracer task %r: the policy does not answer in this process (every call goes to the LLM): %s",
                          self.task, problem)
            self._embedder_checked = (policy, problem)
        return problem

    # -- fitting ----------------------------------------------------------------------
    def fit(self) -> Certificate:
        """Fit on the teacher traces of this task version and certify; deploy only if certified.

        Calibration uses only unselected traces (see `TraceStore.teacher_evidence`), the task
        version's calibration side and window (`tracer_core.learning.split`); after a suspension only
        traces recorded after it count. The gate runs only when validation predicts a material
        gain over the policy in force, at the level of the version's next attempt, counted in
        the store across processes (`tracer_core.learning.spending`). An explicit fit and a background
        refit never run at once.
        """
        with self._fit_lock:
            self.store.flush()
            if self.watcher.current(force=True).suspension is None and self.watcher.monitor.rejected:
                self._suspend_now()  # a rejected policy is suspended before a refit replaces it
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
            artifact = b""
            if policy is not None:  # the certificate names the embedder and vouches for the artifact
                cert.embedder = self.embedder_identity
                artifact = seal(policy)
            cert.calibration_period = _period(evidence, cert.calibration_id_range)
            version = self.store.save_policy(
                self.task, fingerprint=self.fingerprint, certificate=cert.to_dict(),
                artifact=artifact, status="deployed" if cert.deployed else "refused",
                n_traces=len(evidence.texts), check=check_exit,  # an abandoned refit writes no row
            )
            cert.version = version
            observe.fitted(self, cert)
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
        """Background refit (its own thread, at a lower priority with one numerical thread) under a
        cross-process lock; a failure keeps the old policy. A refit abandoned at close() or exit raises
        FitCancelled (to its scheduler) and says nothing."""
        try:
            with background_refit_limits(), self.store.refit_lock(self.task, self.fingerprint) as acquired:
                if not acquired:
                    log.info("tracer task %r: another process is refitting; skipped", self.task)
                    return
                cert = self.fit()
                log.info("tracer task %r: refit v%s: %s", self.task, cert.version, cert.summary())
        except FitCancelled:
            raise
        except Exception:
            if cancelled():  # e.g. the store closed under it: part of stopping, not a failure
                raise FitCancelled("the refit was abandoned") from None
            log.exception("tracer task %r: background refit failed; the previous policy stays", self.task)
            observe.refit_failed(self)

    def wait_for_refit(self, timeout: float | None = None) -> bool:
        """Block until a running background refit finishes; True when none is running."""
        return self.refits.wait(timeout)

    # -- routing ----------------------------------------------------------------------
    def route(self, text: str) -> Decision:
        """Decide one input: the surrogate's certified answer, or defer to the LLM with a reason."""
        return self.route_many([text])[0]

    @observe.counts_calls
    def route_many(self, texts: Sequence[str]) -> list[Decision]:
        """Vectorised `route()`: one embedding batch, same decisions."""
        texts = [normalise_input(t) for t in texts]
        try:
            return self._decide(texts)
        except Late:  # the store's state is still being read (opening, slow or hung): defer meanwhile
            return [deferred(Reason.STORE_UNAVAILABLE) for _ in texts]
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
        policy = in_force.policy
        if in_force.suspension is None and self.watcher.monitor.rejected:
            self._suspend_on_monitor()  # written in the background; the calls defer as suspended meanwhile
        if in_force.suspension is not None or self.watcher.monitor.rejected:
            return [deferred(Reason.SUSPENDED, policy.version if policy else None) for _ in texts]
        if policy is None:
            refusal = in_force.refusal
            reason = Reason.FREE_TEXT_TASK if refusal and refusal.reason_code == FREE_TEXT else Reason.NO_POLICY
            return [deferred(Reason.INVALID_POLICY if in_force.policy_error else reason) for _ in texts]
        if self.embedder_mismatch(policy) is not None:
            return [deferred(Reason.EMBEDDER_MISMATCH, policy.version) for _ in texts]
        if not texts:
            return []
        if not answers_for(policy.certificate, self.alpha, self.delta):
            self._log_stricter(policy.certificate)
            return [deferred(Reason.NOT_CERTIFIED_AT_ALPHA, policy.version) for _ in texts]
        decisions = policy.decide(texts, embed_checked(self.embed, texts))
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

    def _suspend_on_monitor(self) -> None:
        """Suspend on the store's writing thread (the store may be slow or locked); one suspension at a
        time, tried again after SUSPEND_RETRY_S if it failed."""
        with self._suspend_lock:
            job = self._suspending
            if job is not None and (job.finished is None or job.age < SUSPEND_RETRY_S):
                return
            self._suspending = self.store.background_write(self._suspend_now)

    def _suspend_now(self) -> None:
        """Write the suspension the monitor's rejection calls for (on the store's writing thread, or in a fit)."""
        summary = self.watcher.monitor.summary()
        self.suspensions.suspend(
            f"audits contradict the certificate: agreement {summary['agreement']} on {summary['audits']} "
            f"audited calls the policy would have answered (alpha {summary.get('alpha', self.alpha)})",
            automatic=True, **summary,
        )
        self.watcher.current(force=True)

    def _withdraw_if_contradicted(self, in_force: InForce, evidence: Evidence) -> None:
        """A refused refit withdraws the deployed policy when fresh unselected traces contradict it."""
        policy = in_force.policy
        if policy is None or in_force.suspension is not None or self.embedder_mismatch(policy) is not None:
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
        cert = policy.certificate if policy is not None else None
        if cert is None or cert.since_trace_id < self.suspensions.floor() or not answers_for(cert, self.alpha, self.delta):
            cert = self.fit()
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
        """Traces by source, the deployed policy and what it certifies, the last fit, suspension and monitor, as plain data."""
        if self._suspending is not None:  # a suspension the monitor asked for is part of the state
            with contextlib.suppress(Exception):
                self._suspending.result(READ_BUDGET_S)
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
            "embedder_mismatch": self.embedder_mismatch(policy) if policy else None,
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
            "audit_rate": self.current_audit_rate,
        }

    def suspects(self, limit: int | None = 20, min_score: float = MIN_SCORE) -> dict:
        """Teacher traces whose label the cross-fitted evidence contradicts, ranked (see `tracer_core.learning.suspects`)."""
        self.store.flush()
        teacher = self.store.teacher_examples(self.task, self.fingerprint)
        return teacher_suspects(teacher, self.embed, limit=limit, min_score=min_score, seed=self.seed).to_dict()

    def flush(self, timeout: float | None = DEFAULT_FLUSH_TIMEOUT_S) -> FlushReport:
        """Wait at most `timeout` s for queued traces to be written; the report says what was not."""
        return self.store.flush(timeout)

    def close(self, timeout: float | None = DEFAULT_CLOSE_TIMEOUT_S) -> FlushReport:
        """Abandon a running background refit (it stops at its next step and writes nothing; call
        `wait_for_refit()` first to keep it), flush queued traces (together at most `timeout` s) and
        close the store if this tracer opened it. The report says what could not be written and how
        many refits were abandoned; nothing is logged about them afterwards."""
        deadline = None if timeout is None else time.monotonic() + timeout
        abandoned = abandon_refits([self], timeout)
        left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        report = self.store.close(left) if self._owns_store else self.store.flush(left)
        return replace(report, abandoned_refits=abandoned)

    def __enter__(self) -> Tracer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def abandon_refits(tracers: Iterable[Tracer], timeout: float | None = None) -> int:
    """Stop the running background refits of `tracers`, waiting for them at most STOP_BOUND_S (or
    `timeout`, if shorter); returns how many were abandoned (what every close() does first)."""
    return abandon([tracer.refits for tracer in tracers], STOP_BOUND_S if timeout is None else min(STOP_BOUND_S, timeout))


def _period(evidence: Evidence, id_range: list) -> list:
    """[first, last] created_at of the traces at the ends of a calibration window (ids in `evidence`)."""
    if not id_range or not evidence.created_at:
        return []
    at = dict(zip(evidence.ids, evidence.created_at))
    return [at[id_range[0]], at[id_range[1]]]
