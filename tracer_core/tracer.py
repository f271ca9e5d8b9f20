"""`Tracer`: record teacher traces, fit and certify a surrogate, route inputs, refit in the background."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from tracer_core import decision as reasons
from tracer_core.certificate import FREE_TEXT, Certificate
from tracer_core.decision import Decision, deferred
from tracer_core.embedder import embed_checked, get_default_embedder
from tracer_core.errors import InvalidTraceError, TracerError
from tracer_core.fit import fit_policy
from tracer_core.policy import Policy
from tracer_core.store import TraceStore
from tracer_core.suspects import MIN_SCORE, teacher_suspects
from tracer_core.trace import make_trace, normalise_input

log = logging.getLogger("tracer")


class Tracer:
    """The routing core for one task (and one version of it, the fingerprint).

    `alpha` is the minimum agreement with the teacher on handled inputs; `delta` the allowed
    probability that the certificate is wrong.
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
        seed: int = 0,
    ):
        if not isinstance(task, str) or not task.strip():
            raise TracerError(f"task must be a non-empty string, got {task!r}")
        for name, value in (("alpha", alpha), ("delta", delta)):
            if not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
                raise TracerError(f"{name} must be a number strictly between 0 and 1, got {value!r}")
        if not isinstance(refit_every, int) or refit_every < 1:
            raise TracerError(f"refit_every must be a positive integer, got {refit_every!r}")
        self.task = task
        self.alpha = float(alpha)
        self.delta = float(delta)
        self.fingerprint = fingerprint or ""
        self.refit_every = refit_every
        self.refit_interval_s = refit_interval_s
        self.auto_refit = auto_refit
        self.policy_check_s = policy_check_s
        self.seed = seed
        self._owns_store = not isinstance(db, TraceStore)
        self.store = db if isinstance(db, TraceStore) else TraceStore(db)
        self._embed = embedder
        self._policy: Policy | None = None
        self._latest_any: int | None = None
        self._refusal: Certificate | None = None
        self._checked_at = 0.0
        self._state_lock = threading.Lock()
        self._pending = 0
        self._last_fit_at = time.time()
        self._refit_thread: threading.Thread | None = None
        self._error_logged = False

    # -- recording --------------------------------------------------------------------
    def record(self, text: str, label: str, *, source: str = "teacher", **fields) -> None:
        """Queue one trace (non-blocking). Only `teacher` traces become training data."""
        self.store.enqueue(make_trace(self.task, text, label, source=source, fingerprint=self.fingerprint, **fields))
        if source == "teacher":
            self._count_new(1)

    def record_many(self, texts: Sequence[str], labels: Sequence[str], *, source: str = "teacher", **fields) -> int:
        """Validate all traces first, then write them in one transaction."""
        if len(texts) != len(labels):
            raise InvalidTraceError(f"record_many got {len(texts)} texts but {len(labels)} labels")
        traces = [
            make_trace(self.task, text, label, source=source, fingerprint=self.fingerprint, **fields)
            for text, label in zip(texts, labels)
        ]
        written = self.store.append_many(traces)
        if source == "teacher":
            self._count_new(written)
        return written

    @property
    def embed(self) -> Callable[[list[str]], np.ndarray]:
        if self._embed is None:
            self._embed = get_default_embedder()
        return self._embed

    # -- fitting ----------------------------------------------------------------------
    def fit(self) -> Certificate:
        """Fit on every teacher trace of this task version and certify; deploy only if certified."""
        self.store.flush()
        texts, labels, ids = self.store.teacher_examples(self.task, self.fingerprint)
        policy, cert = fit_policy(
            texts, labels, alpha=self.alpha, delta=self.delta, embed=self.embed, ids=ids,
            seed=self.seed, task=self.task, fingerprint=self.fingerprint,
        )
        version = self.store.save_policy(
            self.task, fingerprint=self.fingerprint, certificate=cert.to_dict(),
            artifact=policy.to_bytes() if policy else b"", status="deployed" if cert.deployed else "refused",
            n_traces=len(texts),
        )
        cert.version = version
        with self._state_lock:
            self._last_fit_at = time.time()
            if policy is not None:
                policy.version = version
                self._policy, self._refusal, self._latest_any = policy, None, version
            else:
                # keep (or load, on the next route) the newest deployed policy
                self._refusal, self._latest_any, self._checked_at = cert, None, 0.0
        if not cert.deployed:
            log.info("tracer task %r: fit refused (%s)", self.task, cert.reason)
        return cert

    def _count_new(self, n: int) -> None:
        with self._state_lock:
            self._pending += n
        self._maybe_refit()

    def _maybe_refit(self) -> None:
        if not self.auto_refit:
            return
        with self._state_lock:
            due = self._pending >= self.refit_every or (
                self._pending > 0 and time.time() - self._last_fit_at >= self.refit_interval_s
            )
            if not due or (self._refit_thread is not None and self._refit_thread.is_alive()):
                return
            self._pending = 0
            self._refit_thread = threading.Thread(target=self._refit, name=f"tracer-refit-{self.task}", daemon=True)
            self._refit_thread.start()

    def _refit(self) -> None:
        """Background refit under a cross-process lock; a failure keeps the old policy."""
        try:
            with _ProcessLock(self._lock_path()) as acquired:
                if not acquired:
                    log.info("tracer task %r: another process is refitting; skipped", self.task)
                    return
                cert = self.fit()
                log.info("tracer task %r: refit v%s: %s", self.task, cert.version, cert.summary())
        except Exception:
            log.exception("tracer task %r: background refit failed; the previous policy stays", self.task)

    def _lock_path(self) -> Path:
        key = hashlib.sha256(f"{self.task}\0{self.fingerprint}".encode()).hexdigest()[:16]
        return self.store.path.with_name(f"{self.store.path.name}.refit-{key}.lock")

    def wait_for_refit(self, timeout: float | None = None) -> None:
        """Block until a running background refit finishes (tests, scripts, shutdown)."""
        thread = self._refit_thread
        if thread is not None:
            thread.join(timeout)

    # -- routing ----------------------------------------------------------------------
    def route(self, text: str) -> Decision:
        """Decide one input: the surrogate's certified answer, or defer to the LLM with a reason."""
        return self.route_many([text])[0]

    def route_many(self, texts: Sequence[str]) -> list[Decision]:
        """Vectorised `route()`: one embedding batch, same decisions."""
        texts = [normalise_input(t) for t in texts]
        try:
            policy = self._current_policy()
            if policy is None:
                reason = reasons.FREE_TEXT_TASK if self._refusal and self._refusal.reason_code == FREE_TEXT else reasons.NO_POLICY
                return [deferred(reason) for _ in texts]
            if not texts:
                return []
            return policy.decide(texts, embed_checked(self.embed, texts))
        except Exception:
            if not self._error_logged:
                log.exception("tracer task %r: routing failed; deferring to the LLM", self.task)
                self._error_logged = True
            version = self._policy.version if self._policy else None
            return [deferred(reasons.ERROR, version) for _ in texts]
        finally:
            self._maybe_refit()

    async def aroute(self, text: str) -> Decision:
        """`route()` in a worker thread, so the event loop never waits on embedding."""
        return await asyncio.to_thread(self.route, text)

    async def aroute_many(self, texts: Sequence[str]) -> list[Decision]:
        return await asyncio.to_thread(self.route_many, texts)

    @property
    def policy_version(self) -> int | None:
        policy = self._current_policy()
        return policy.version if policy else None

    @property
    def certificate(self) -> Certificate | None:
        """The deployed policy's certificate, or the last refusal when nothing is deployed."""
        policy = self._current_policy()
        return policy.certificate if policy else self._refusal

    def _current_policy(self) -> Policy | None:
        """The newest deployed policy; the store is asked at most once per `policy_check_s`."""
        now = time.monotonic()
        if now - self._checked_at < self.policy_check_s:
            return self._policy
        with self._state_lock:
            self._checked_at = now
            latest_any = self.store.latest_policy_version(self.task, fingerprint=self.fingerprint, status=None)
            if latest_any == self._latest_any:
                return self._policy
            row = self.store.latest_policy(self.task, fingerprint=self.fingerprint, status=None)
            if row and row["status"] != "deployed":
                self._refusal = _certificate_of(row)
            deployed = self.store.latest_policy_version(self.task, fingerprint=self.fingerprint)
            if deployed is not None and (self._policy is None or self._policy.version != deployed):
                self._policy = Policy.from_row(self.store.latest_policy(self.task, fingerprint=self.fingerprint))
                self._policy.certificate.version = self._policy.version
            self._latest_any = latest_any
            return self._policy

    # -- status and lifecycle ---------------------------------------------------------
    def status(self) -> dict:
        """Traces by source, the deployed policy and the last fit attempt, as plain data."""
        policy = self._current_policy()
        versions = self.store.policies(self.task, fingerprint=self.fingerprint)
        last = versions[0] if versions else None
        cert = policy.certificate if policy else None
        return {
            "task": self.task,
            "fingerprint": self.fingerprint,
            "traces": self.store.counts(self.task),
            "policy_version": policy.version if policy else None,
            "coverage": cert.coverage if cert else 0.0,
            "agreement_lower_bound": cert.agreement_lower_bound if cert else None,
            "alpha": self.alpha,
            "delta": self.delta,
            "last_fit_at": last["created_at"] if last else None,
            "last_fit": last["certificate"]["reason"] if last else "never fitted",
            "versions": len(versions),
        }

    def suspects(self, limit: int | None = 20, min_score: float = MIN_SCORE) -> dict:
        """Teacher traces whose label the cross-fitted evidence contradicts, ranked (see `tracer_core.suspects`)."""
        self.store.flush()
        teacher = self.store.teacher_examples(self.task, self.fingerprint)
        return teacher_suspects(teacher, self.embed, limit=limit, min_score=min_score, seed=self.seed).to_dict()

    def flush(self) -> None:
        self.store.flush()

    def close(self) -> None:
        """Wait for a running refit, flush queued traces, close the store if this tracer opened it."""
        self.wait_for_refit()
        if self._owns_store:
            self.store.close()
        else:
            self.store.flush()

    def __enter__(self) -> Tracer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _certificate_of(row: dict) -> Certificate:
    cert = Certificate.from_dict(row["certificate"])
    cert.version = row["version"]
    return cert


class _ProcessLock:
    """A non-blocking exclusive file lock: `with _ProcessLock(path) as acquired:`."""

    def __init__(self, path: Path):
        self.path = path
        self._fh = None

    def __enter__(self) -> bool:
        self._fh = open(self.path, "a+")
        try:
            fcntl.flock(self._fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._fh.close()
            self._fh = None
            return False
        return True

    def __exit__(self, *exc: object) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
