"""`Tracer`: record teacher traces, fit and certify a surrogate, route inputs, audit and monitor the result.

`Tracer` is the facade: each job is a collaborator in its own module (`recording`, `fitting`,
`routing`, `suspending`, `status`, `embedding`), and each public method delegates to one.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace

import numpy as np

from tracer_core.decision import Decision
from tracer_core.errors import TracerError
from tracer_core.learning.certificate import Certificate
from tracer_core.learning.fit import DEFAULT_MAX_TRAIN
from tracer_core.learning.policy import Policy
from tracer_core.learning.suspects import MIN_SCORE, teacher_suspects
from tracer_core.observability import observe
from tracer_core.serving.audits import AuditSampler
from tracer_core.serving.embedding import TracerEmbedder
from tracer_core.serving.fitting import Fitter
from tracer_core.serving.recording import Recorder
from tracer_core.serving.refit import abandon
from tracer_core.serving.routing import Router
from tracer_core.serving.status import TracerStatus
from tracer_core.serving.suspending import Suspender
from tracer_core.serving.suspension import Suspensions
from tracer_core.serving.watcher import PolicyWatcher
from tracer_core.settings import check, check_limit
from tracer_core.shutdown import STOP_BOUND_S
from tracer_core.storage.store import TraceStore
from tracer_core.storage.trace import check_task
from tracer_core.storage.writer import DEFAULT_FLUSH_TIMEOUT_S, FlushReport

DEFAULT_AUDIT_RATE = 0.05
DEFAULT_CLOSE_TIMEOUT_S = DEFAULT_FLUSH_TIMEOUT_S


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
        self._embedder = TracerEmbedder(embedder, task)
        self.audits = AuditSampler(self.audit_rate, f"{seed}:{task}:{self.fingerprint}:{os.getpid()}", task)
        self.suspensions = Suspensions(self.store, task, self.fingerprint)
        self.watcher = PolicyWatcher(
            self.store, task, self.fingerprint, alpha=self.alpha, delta=self.delta, check_s=self.policy_check_s
        )
        self._suspender = Suspender(self.store, self.suspensions, self.watcher, self._embedder,
                                    task=task, alpha=self.alpha, delta=self.delta)
        self._fitter = Fitter(
            self.store, self.watcher, self._suspender, self._embedder, task=task, fingerprint=self.fingerprint,
            alpha=self.alpha, delta=self.delta, seed=seed, max_train=self.max_train,
            refit_every=int(check("refit_every", refit_every)),
            refit_interval_s=float(check("refit_interval_s", refit_interval_s)), auto_refit=auto_refit,
        )
        self.refits = self._fitter.refits
        self._recorder = Recorder(self.store, task, self.fingerprint, self.refits, self.audits)
        self._router = Router(self.store, self.watcher, self.audits, self._suspender, self._embedder, self.refits,
                              task=task, alpha=self.alpha, delta=self.delta)
        self._status = TracerStatus(self.store, self.watcher, self._suspender, self._embedder, self.audits,
                                    task=task, fingerprint=self.fingerprint, alpha=self.alpha, delta=self.delta)
        observe.watch(self)
        self.watcher.prefetch()

    # -- recording --------------------------------------------------------------------
    def record(self, text: str, label: str, *, decision: Decision | None = None, **fields) -> None:
        """Queue one trace (non-blocking).

        Pass the `decision` that routed the call: its reason, policy version and the policy's
        (would-be) answer are stored with the trace, and a handled decision makes it a
        `surrogate` trace, never training data. Without one, the trace counts as recorded
        outside tracer's routing (a uniform sample, like traces before any policy).
        """
        self._recorder.record(text, label, decision, fields)

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
        self._recorder.record_answer(text, label, decision, cached, fields)

    def record_many(
        self, texts: Iterable[str], labels: Iterable[str], *, decisions: Sequence[Decision] | None = None, **fields
    ) -> int:
        """Validate all traces first, then write them in one transaction; returns the count written."""
        return self._recorder.record_many(texts, labels, decisions, fields)

    @property
    def embed(self) -> Callable[[list[str]], np.ndarray]:
        return self._embedder.embed

    @property
    def embedder_identity(self) -> dict:
        """This tracer's embedder: kind, name, dimension, probe checksum (`tracer_core.learning.embedder_identity`)."""
        return self._embedder.identity

    def embedder_mismatch(self, policy: Policy | None = None) -> str | None:
        """Why `policy` (default: the one in force) cannot answer with this tracer's embedder, or None.
        Checked once per loaded policy, and logged then."""
        return self._embedder.mismatch(policy if policy is not None else self.watcher.current().policy)

    # -- fitting ----------------------------------------------------------------------
    def fit(self) -> Certificate:
        """Fit on the teacher traces of this task version and certify; deploy only if certified.

        Calibration uses only unselected traces (see `TraceStore.teacher_evidence`), the task
        version's calibration side and window (`tracer_core.learning.split`); after a suspension only
        traces recorded after it count. The gate runs only when validation predicts a material
        gain over the policy in force, at the level of the version's next attempt, counted in
        the store across processes (`tracer_core.learning.spending`). An explicit fit and a background
        refit never run at once: a fit of the very traces a background refit just fitted (`record_many`
        can start one) waits for it and returns its certificate.
        """
        return self._fitter.fit()

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
        return self._router.route_many(texts)

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

    def suspend(self, reason: str = "suspended by hand") -> None:
        """Send every call of this task version to the LLM, in every process, until `resume()`."""
        self._suspender.suspend(reason)

    def resume(self) -> Certificate:
        """Lift a suspension; needs a certificate on traces recorded after it (fits one if there is none)."""
        return self._suspender.resume(self.fit)

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
        return self._status.read()

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
