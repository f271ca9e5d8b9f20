"""Fitting: certify a surrogate for one task version, explicitly or in the background, one fit at a time."""

from __future__ import annotations

import logging
import threading

from tracer_core.errors import NoTracesError
from tracer_core.learning.certificate import Certificate
from tracer_core.learning.fit import fit_policy
from tracer_core.learning.policy_seal import seal
from tracer_core.learning.spending import StoreLedger
from tracer_core.observability import observe
from tracer_core.serving.embedding import TracerEmbedder
from tracer_core.serving.refit import RefitScheduler
from tracer_core.serving.refit_limits import background_refit_limits
from tracer_core.serving.suspending import Suspender
from tracer_core.serving.watcher import InForce, PolicyWatcher
from tracer_core.shutdown import FitCancelled, cancelled, check_exit
from tracer_core.storage.store import Evidence, TraceStore

log = logging.getLogger("tracer")


class Fitter:
    """Fits, certifies and deploys the surrogate of one task version; `refits` starts the background refits."""

    def __init__(self, store: TraceStore, watcher: PolicyWatcher, suspender: Suspender, embedder: TracerEmbedder, *,
                 task: str, fingerprint: str, alpha: float, delta: float, seed: int, max_train: int | None,
                 refit_every: int, refit_interval_s: float, auto_refit: bool) -> None:
        self.store, self.watcher, self.suspender, self.embedder = store, watcher, suspender, embedder
        self.task, self.fingerprint, self.alpha, self.delta = task, fingerprint, alpha, delta
        self.seed, self.max_train = seed, max_train
        self._lock = threading.Lock()
        self._background: tuple[tuple[int, int, int], Certificate] | None = None  # the last background refit's
        # evidence (suspension floor, traces, newest id) and certificate, until the next fit
        self.refits = RefitScheduler(
            self.refit, every=refit_every, interval_s=refit_interval_s, enabled=auto_refit,
            name=f"tracer-refit-{task}", paused=lambda: self.store.closed or self.store.degraded is not None,
        )

    def fit(self, *, background: bool = False) -> Certificate:
        """Fit on the teacher traces of this task version and certify; see `Tracer.fit`. An explicit fit of the
        very traces the last background refit fitted returns that refit's certificate."""
        with self._lock:
            self.store.flush()
            in_force = self.watcher.current(force=True)
            if in_force.suspension is None and in_force.monitor.rejected:
                self.suspender.now()  # a rejected policy is suspended before a refit replaces it
            floor = self.suspender.suspensions.floor()
            evidence = self.store.teacher_evidence(self.task, self.fingerprint, since_id=floor)
            if not evidence.texts:
                after = " recorded after its suspension" if floor else ""
                raise NoTracesError(
                    f"task {self.task!r} version {self.fingerprint or '(unversioned)'} has no teacher traces{after}"
                )
            fitted_on = (floor, len(evidence.ids), max(evidence.ids))
            last, self._background = self._background, None
            if not background and last is not None and last[0] == fitted_on:
                return last[1]  # e.g. record_many() started a background refit of these traces, then fit() waited
            in_force = self.watcher.current(force=True)
            policy, cert = fit_policy(
                evidence.texts, evidence.labels, alpha=self.alpha, delta=self.delta, embed=self.embedder.embed,
                ids=evidence.ids, seed=self.seed, task=self.task, fingerprint=self.fingerprint,
                calibration_pool=evidence.unselected, audits=evidence.audit, max_train=self.max_train,
                ledger=StoreLedger(self.store, self.task, self.fingerprint), baseline=self._coverage_in_force(in_force),
            )
            cert.since_trace_id = floor
            artifact = b""
            if policy is not None:  # the certificate names the embedder and vouches for the artifact
                cert.embedder = self.embedder.identity
                artifact = seal(policy)
            cert.calibration_period = _period(evidence, cert.calibration_id_range)
            version = self.store.save_policy(
                self.task, fingerprint=self.fingerprint, certificate=cert.to_dict(),
                artifact=artifact, status="deployed" if cert.deployed else "refused",
                n_traces=len(evidence.texts), check=check_exit,  # an abandoned refit writes no row
            )
            cert.version = version
            observe.fitted(self.task, self.fingerprint, cert)
            if policy is not None:
                policy.version = version
                self.suspender.suspensions.lift_if_automatic(version)
            else:
                log.info("tracer task %r: fit refused (%s)", self.task, cert.reason)
                self.suspender.withdraw_if_contradicted(in_force, evidence, version)
            self.watcher.adopt(policy, None if cert.deployed else cert)
            self.refits.fitted()
            if background:
                self._background = (fitted_on, cert)
            return cert

    def _coverage_in_force(self, in_force: InForce) -> float:
        """Coverage a new attempt must beat: the policy answering now, if its certificate is at least as strict
        as this tracer's alpha and delta (0 when none answers: nothing deployed, or suspended)."""
        policy = in_force.policy
        if policy is None or in_force.suspension is not None:
            return 0.0
        cert = policy.certificate
        return cert.coverage if cert.alpha >= self.alpha and cert.delta <= self.delta else 0.0

    def refit(self) -> None:
        """Background refit (its own thread, at a lower priority with one numerical thread) under a
        cross-process lock; a failure keeps the old policy. A refit abandoned at close() or exit raises
        FitCancelled (to its scheduler) and says nothing."""
        try:
            with background_refit_limits(), self.store.refit_lock(self.task, self.fingerprint) as acquired:
                if not acquired:
                    log.info("tracer task %r: another process is refitting; skipped", self.task)
                    return
                cert = self.fit(background=True)
                log.info("tracer task %r: refit v%s: %s", self.task, cert.version, cert.summary())
        except FitCancelled:
            raise
        except Exception:
            if cancelled():  # e.g. the store closed under it: part of stopping, not a failure
                raise FitCancelled("the refit was abandoned") from None
            log.exception("tracer task %r: background refit failed; the previous policy stays", self.task)
            observe.refit_failed(self.task, self.fingerprint)


def _period(evidence: Evidence, id_range: list) -> list:
    """[first, last] created_at of the traces at the ends of a calibration window (ids in `evidence`)."""
    if not id_range or not evidence.created_at:
        return []
    at = dict(zip(evidence.ids, evidence.created_at))
    return [at[id_range[0]], at[id_range[1]]]
