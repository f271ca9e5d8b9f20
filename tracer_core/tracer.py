"""`Tracer`: record teacher traces, fit and certify a surrogate, route inputs, refit in the background."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import logging
import numbers
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from tracer_core import decision as reasons
from tracer_core.certificate import FREE_TEXT, Certificate
from tracer_core.decision import Decision, deferred
from tracer_core.embedder import embed_checked, get_default_embedder
from tracer_core.errors import InvalidTraceError, PolicyError, StoreError, TracerError
from tracer_core.fit import fit_policy
from tracer_core.policy import Policy
from tracer_core.shutdown import FitCancelled, register_refit
from tracer_core.store import TraceStore
from tracer_core.trace import as_list, check_task, make_trace, normalise_input
from tracer_core.writer import DEFAULT_FLUSH_TIMEOUT_S, FlushReport

DEFAULT_CLOSE_TIMEOUT_S = 60.0

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
        check_task(task)  # the length and encoding limits of a stored trace, checked now
        for name, value in (("alpha", alpha), ("delta", delta)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 < value < 1.0:
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
        self.policy_error: str | None = None  # why the newest deployed policy is not used
        self._deployed_seen: int | None = None

    # -- recording --------------------------------------------------------------------
    def record(self, text: str, label: str, *, source: str = "teacher", **fields) -> None:
        """Queue one trace (non-blocking). Only `teacher` traces become training data."""
        self.store.enqueue(make_trace(self.task, text, label, source=source, fingerprint=self.fingerprint, **fields))
        if source == "teacher":
            self._count_new(1)

    def record_many(self, texts: Iterable[str], labels: Iterable[str], *, source: str = "teacher", **fields) -> int:
        """Validate all traces first, then write them in one transaction (any iterables, not a single str)."""
        texts, labels = as_list("texts", texts), as_list("labels", labels)
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
        if not self.auto_refit or self.store.degraded:
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
            register_refit(self._refit_thread)

    def _refit(self) -> None:
        """Background refit under a cross-process lock; a failure keeps the old policy."""
        try:
            with _ProcessLock(self._lock_path()) as acquired:
                if not acquired:
                    log.info("tracer task %r: another process is refitting; skipped", self.task)
                    return
                cert = self.fit()
                log.info("tracer task %r: refit v%s: %s", self.task, cert.version, cert.summary())
        except FitCancelled:
            log.info("tracer task %r: background refit stopped at interpreter exit", self.task)
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
            if self.store.degraded:
                return [deferred(reasons.STORE_UNAVAILABLE) for _ in texts]
            policy = self._current_policy()
            if policy is None:
                reason = reasons.FREE_TEXT_TASK if self._refusal and self._refusal.reason_code == FREE_TEXT else reasons.NO_POLICY
                return [deferred(reasons.INVALID_POLICY if self.policy_error else reason) for _ in texts]
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
            deployed = self.store.latest_policy_version(self.task, fingerprint=self.fingerprint)
            if latest_any == self._latest_any and deployed == self._deployed_seen:
                return self._policy
            row = self.store.latest_policy(self.task, fingerprint=self.fingerprint, status=None)
            if row and row["status"] != "deployed":
                self._refusal = _certificate_of(row)
            if deployed is None:  # never deployed, or every deployed row was deleted
                self._policy, self.policy_error = None, None
            elif self._policy is None or self._policy.version != deployed:
                self._policy = self._load_deployed()
            self._latest_any, self._deployed_seen = latest_any, deployed
            return self._policy

    def _load_deployed(self) -> Policy | None:
        """The newest deployed policy if it passes validation; else None, with `policy_error` saying why."""
        row = self.store.latest_policy(self.task, fingerprint=self.fingerprint)
        try:
            if row is None:
                return None
            policy = Policy.from_row(row)
        except PolicyError as exc:
            if self.policy_error != str(exc):
                log.error("tracer task %r: policy v%s is not used: %s", self.task, row["version"], exc)
            self.policy_error = str(exc)
            return None
        policy.certificate.version = policy.version
        self.policy_error = None
        return policy

    # -- status and lifecycle ---------------------------------------------------------
    def status(self) -> dict:
        """Traces by source, the deployed policy and the last fit attempt, as plain data."""
        policy = self._current_policy()
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
            "policy_error": self.policy_error,
            "policy_version": policy.version if policy else None,
            "coverage": cert.coverage if cert else 0.0,
            "agreement_lower_bound": cert.agreement_lower_bound if cert else None,
            "alpha": self.alpha,
            "delta": self.delta,
            "last_fit_at": last["created_at"] if last else None,
            "last_fit": last["certificate"].get("reason", "") if last else "never fitted",
            "versions": len(versions),
        }

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


def _certificate_of(row: dict) -> Certificate:
    data = row["certificate"]
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
