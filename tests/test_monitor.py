"""The monitor is anytime-valid and its power grows with audits; one monitor per policy version; the
label-free signals hold their false-alarm rate on steady traffic and fire on a real jump."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests import clustered
from tracer_core import Tracer
from tracer_core.decision import Decision, Reason
from tracer_core.errors import NoTracesError
from tracer_core.learning.certificate import Certificate
from tracer_core.serving.audits import BOOST_CALLS, MAX_BOOSTED_RATE, AuditSampler
from tracer_core.serving.monitor import DEFERRAL, LABEL_FREE_LEVEL, OOD, AgreementMonitor, LabelFreeWatch

ALPHA, DELTA = 0.95, 0.05


def rejection_times(p: float, n: int, runs: int, seed: int, before: tuple[float, int] = (1.0, 0)) -> list[int | None]:
    """Per run: audits after `before` (agreement, count) until the monitor rejects, or None within `n`."""
    rng = np.random.default_rng(seed)
    times = []
    for _ in range(runs):
        monitor = AgreementMonitor(ALPHA, DELTA)
        monitor.update(rng.random(before[1]) < before[0])
        assert not monitor.rejected
        monitor.update(rng.random(n) < p)
        times.append(None if monitor.rejected_at is None else monitor.rejected_at - before[1])
    return times


def test_false_alarms_stay_below_delta_over_many_audits():
    """True agreement exactly alpha (the worst case of H0): rejections at any time within 5,000 audits <= delta."""
    runs = 400
    alarms = sum(t is not None for t in rejection_times(ALPHA, 5000, runs, seed=0))
    assert alarms / runs <= DELTA + 2 * (DELTA * (1 - DELTA) / runs) ** 0.5  # delta plus two standard errors


def test_false_alarms_stay_below_delta_with_a_good_policy_for_long():
    runs = 200
    alarms = sum(t is not None for t in rejection_times(0.96, 10_000, runs, seed=2))
    assert alarms / runs <= DELTA


def test_power_grows_with_audits():
    """0.94 at alpha 0.95: the Kelly bet on the last 50 audits suspended 18% of such policies within 10,000 audits
    (issue 21); the mixture of constant bets keeps gaining, so more audits mean more rejections."""
    times = rejection_times(0.94, 20_000, 60, seed=4)
    within = [sum(t is not None and t <= n for t in times) / len(times) for n in (1_000, 3_000, 10_000, 20_000)]
    assert within == sorted(within) and within[0] < within[-1]
    assert within[2] >= 0.8 and within[3] >= 0.9


def test_a_drop_in_agreement_is_caught_quickly():
    times = rejection_times(0.85, 2000, 50, seed=1)
    assert all(t is not None for t in times)
    assert float(np.median(times)) <= 150


def test_a_late_drop_is_caught_quickly_too():
    """3,000 audits at 0.97 sink every constant bet a little; the windowed Kelly half bets ~0 meanwhile, so a
    later drop to 0.85 is still caught within a couple of hundred audits."""
    late = rejection_times(0.85, 2000, 50, seed=3, before=(0.97, 3000))
    assert all(t is not None for t in late)
    assert float(np.median(late)) <= 200


def test_the_first_won_bet_raises_the_audit_rate():
    """Disagreements that make the short-window bet positive and then pay raise the audit rate, long before rejection."""
    monitor, sampler = AgreementMonitor(ALPHA, DELTA), AuditSampler(0.05, "seed", "task")
    monitor.update([True] * 40 + [False] * 3)
    assert not monitor.suspicious and sampler.rate(monitor) == 0.05  # no bet has been won yet
    monitor.update([False])
    assert monitor.suspicious and not monitor.rejected
    assert sampler.rate(monitor) == MAX_BOOSTED_RATE


def test_the_boost_ends_when_recent_audits_agree_again():
    monitor = AgreementMonitor(ALPHA, DELTA)
    monitor.update([True] * 40 + [False] * 4)
    assert monitor.suspicious
    monitor.update([True] * 200)
    assert not monitor.suspicious and not monitor.rejected


def test_the_boost_cannot_stay_on_at_alpha():
    """At exactly alpha the boost switches on now and then, and always off again: no stretch is long."""
    rng = np.random.default_rng(6)
    monitor, states = AgreementMonitor(ALPHA, DELTA), []
    for agreed in rng.random(5000) < ALPHA:
        monitor.update([agreed])
        states.append(monitor.suspicious)
    stretches = [len(s) for s in "".join("1" if on else "0" for on in states).split("0") if s]
    assert stretches and max(stretches) < 500 and sum(states) / len(states) < 0.35


def test_a_rejection_inside_one_batch_of_audits_is_kept():
    """The wealth that reaches 1/delta mid-batch rejects, even if later audits of the batch agree."""
    monitor = AgreementMonitor(ALPHA, DELTA)
    monitor.update([True] * 40 + [False] * 10 + [True] * 3000)
    assert monitor.wealth < 1 and monitor.rejected and monitor.rejected_at <= 50


def test_batches_and_single_audits_give_the_same_verdict():
    outcomes = np.random.default_rng(7).random(3000) < 0.93
    whole, piecewise = AgreementMonitor(ALPHA, DELTA), AgreementMonitor(ALPHA, DELTA)
    whole.update(outcomes)
    for start in range(0, len(outcomes), 37):
        piecewise.update(outcomes[start : start + 37])
    assert whole.rejected_at == piecewise.rejected_at is not None
    assert abs(whole.wealth - piecewise.wealth) <= 1e-9 * whole.wealth


def test_a_suspicious_monitor_replaced_keeps_the_boost_for_a_while():
    """A new policy version gets a fresh monitor, but not a fresh audit rate when the last one was worried."""
    sampler, worried = AuditSampler(0.05, "seed", "task"), AgreementMonitor(ALPHA, DELTA, 1)
    worried.update([True] * 40 + [False] * 4)
    sampler.draw(1, worried)
    fresh = AgreementMonitor(ALPHA, DELTA, 2)
    sampler.draw(1, fresh)
    assert not fresh.suspicious and sampler.rate(fresh) == MAX_BOOSTED_RATE
    sampler.watch([Decision("lab1", True, 0.9, Reason.HANDLED, 2)] * BOOST_CALLS, certificate(coverage=1.0))
    assert sampler.rate(fresh) == 0.05


def test_a_replaced_monitor_suspicious_only_in_its_short_window_does_not_boost():
    """A few recent disagreements after hundreds of agreements make the short window suspicious, but the e-process
    (wealth below its start) holds no evidence against alpha: a new version starts at the base rate."""
    sampler, worried = AuditSampler(0.05, "seed", "task"), AgreementMonitor(ALPHA, DELTA, 1)
    worried.update([True] * 300 + [False] * 3 + [True] * 40 + [False] * 3)
    assert worried.suspicious and worried.wealth < 1
    sampler.draw(1, worried)
    fresh = AgreementMonitor(ALPHA, DELTA, 2)
    sampler.draw(1, fresh)
    assert sampler.rate(fresh) == 0.05


# --- one monitor per policy version, through the watcher and a real SQLite store -----------------------------------

def audit(tracer: Tracer, version: int, agrees: list[bool]) -> None:
    """Record audits of policy `version`: the LLM's answer, beside the policy's would-be answer."""
    for i, agreed in enumerate(agrees):
        decision = Decision("lab1", False, 0.9, Reason.AUDIT, version)
        tracer.record(f"lab1 audit v{version} {i}", "lab1" if agreed else "lab2", decision=decision)
    tracer.flush()


def test_each_policy_version_has_a_fresh_monitor(tmp_path):
    settings = dict(embedder=clustered.embed, auto_refit=False, policy_check_s=0.0, audit_rate=0.0)
    tracer = Tracer("versions", tmp_path / "v.db", alpha=0.9, **settings)
    texts = clustered.texts(1200)
    tracer.record_many(texts, [clustered.label_of(t) for t in texts])
    # v1 is certified at 0.85, so the tracer at 0.9 attempts again (a refit must beat only policies at its level)
    with Tracer("versions", tracer.store, alpha=0.85, **settings) as lax:
        assert lax.fit().deployed and lax.policy_version == 1
    bad = [True] * 20 + [False] * 9  # v1 on its way to a suspension (its monitor tests its own alpha, 0.85)
    audit(tracer, 1, bad)
    assert tracer.watcher.current(force=True) and tracer.watcher.monitor.summary()["audits"] == len(bad)
    assert tracer.watcher.monitor.wealth > 2
    assert tracer.fit().deployed and tracer.policy_version == 2
    audit(tracer, 1, [False] * 5)  # late audits of v1, recorded after v2 was deployed
    good = [True] * 40 + [False] * 3
    audit(tracer, 2, good)
    tracer.watcher.current(force=True)
    monitor = tracer.watcher.monitor
    assert monitor.summary() | {"wealth": None} == {"policy_version": 2, "audits": len(good), "wealth": None,
                                                    "agreement": round(40 / 43, 4), "reject_at": 1 / 0.05}
    inherited = AgreementMonitor(0.9, 0.05)
    inherited.update(bad + [False] * 5 + good)
    assert inherited.rejected and not monitor.rejected  # v1's evidence never counts against v2
    assert tracer.route("lab1 next").reason == Reason.HANDLED and tracer.status()["suspended"] is None
    tracer.close()


def condemned(path: Path, task: str, *, policy_check_s: float) -> Tracer:
    """A tracer whose v1 (alpha 0.9) is deployed and whose audits have rejected it, not yet suspended."""
    tracer = Tracer(task, path, alpha=0.9, embedder=clustered.embed, auto_refit=False, policy_check_s=policy_check_s,
                    audit_rate=0.0)
    texts = clustered.texts(1200)
    tracer.record_many(texts, [clustered.label_of(t) for t in texts])
    assert tracer.fit().deployed
    audit(tracer, 1, [True] * 20 + [False] * 15)
    return tracer


def test_a_rejected_policy_never_answers_while_its_suspension_is_being_read(tmp_path):
    """The suspension written on the store's thread restarts the monitor at its event. A read of the state that has
    built the fresh monitor but not yet published it (the reading thread mid-read) must leave routing on the
    rejected one: the fresh monitor and the suspension are published together, from one read of the event."""
    tracer = condemned(tmp_path / "r.db", "race", policy_check_s=3600.0)
    in_force = tracer.watcher.current(force=True)
    assert tracer.watcher.monitor.rejected and in_force.suspension is None
    tracer.suspensions.suspend("audits contradict the certificate", automatic=True)
    suspension, floor = tracer.store.suspension_state("race", tracer.fingerprint)
    assert suspension is not None and floor > 0  # one read gives both
    tracer.watcher._read()  # the reading thread's work, before its result is published
    assert tracer.route("lab1 next").reason == Reason.SUSPENDED
    fresh = tracer.watcher.current(force=True)
    assert fresh.suspension is not None and not tracer.watcher.monitor.rejected  # published together
    assert tracer.route("lab1 next").reason == Reason.SUSPENDED
    tracer.close()


# --- label-free signals -------------------------------------------------------------------------------------------

def certificate(coverage: float, n_calibration: int = 1000, n_validation: int = 600, version: int = 3) -> Certificate:
    return Certificate(task="t", fingerprint="", deployed=True, alpha=ALPHA, delta=DELTA, reason="", reason_code="deployed",
                       n_traces=5000, version=version, coverage=coverage, n_calibration=n_calibration,
                       n_validation=n_validation)


def calibrated(rng: np.random.Generator, deferral: float, n_calibration: int) -> Certificate:
    """A certificate whose coverage was measured on a calibration sample of traffic deferring at `deferral`."""
    return certificate(1.0 - float((rng.random(n_calibration) < deferral).mean()), n_calibration)


def test_label_free_signals_stay_quiet_on_steady_traffic():
    """Deferral exactly at the true rate behind the certificate, 20,000 calls per version: no signal in 200 versions
    (the stated rate is <= LABEL_FREE_LEVEL per version)."""
    rng = np.random.default_rng(8)
    fired = 0
    for _ in range(200):
        watch = LabelFreeWatch(calibrated(rng, 0.3, 500))
        fired += watch.observe_shares(rng.random(20_000) < 0.3, rng.random(20_000) < 0.005) is not None
    assert fired <= 200 * LABEL_FREE_LEVEL


def test_the_deferral_signal_fires_on_a_real_jump():
    rng = np.random.default_rng(9)
    delays = []
    for _ in range(20):
        watch = LabelFreeWatch(calibrated(rng, 0.3, 1000))
        assert watch.observe_shares(rng.random(2000) < 0.3, np.zeros(2000, bool)) is None
        for step in range(100):
            signal = watch.observe_shares(rng.random(50) < 0.45, np.zeros(50, bool))
            if signal is not None:
                assert signal.kind == DEFERRAL
                delays.append(50 * (step + 1))
                break
    assert len(delays) >= 18 and float(np.median(delays)) <= 2500


def test_an_out_of_distribution_jump_signals_through_the_audit_sampler(caplog):
    sampler, monitor = AuditSampler(0.05, "seed", "task"), AgreementMonitor(ALPHA, DELTA, 3)
    cert = certificate(coverage=0.8)
    handled, far = Decision("lab1", True, 0.9, Reason.HANDLED, 3), Decision(None, False, 0.2, Reason.OUT_OF_DISTRIBUTION, 3)
    sampler.watch([handled] * 995 + [far] * 5, cert)
    assert sampler.signals == 0 and sampler.rate(monitor) == 0.05
    for _ in range(10):
        sampler.watch([handled] * 70 + [far] * 30, cert)
    assert sampler.signals >= 1 and sampler.rate(monitor) == MAX_BOOSTED_RATE
    message = next(r.getMessage() for r in caplog.records if "out_of_distribution share" in r.getMessage())
    assert "calls of policy v3" in message and "at most" in message and "anytime test at level" in message
    assert OOD in message and "auditing more" in message


def test_a_rejected_policy_is_suspended_before_a_refit_replaces_it(tmp_path):
    """A refit must not hand the traffic that condemned v1 to a v2 trained on it: the rejection suspends first,
    and the next certificate needs traces recorded after the suspension."""
    tracer = condemned(tmp_path / "c.db", "condemned", policy_check_s=0.0)
    with pytest.raises(NoTracesError, match="after its suspension"):
        tracer.fit()
    suspension = tracer.status()["suspended"]
    assert suspension is not None and suspension["reason"].startswith("audits contradict the certificate")
    assert suspension["details"]["policy_version"] == 1 and tracer.policy_version == 1
    tracer.close()


def test_beta_quantile_without_scipy_matches_scipys():
    """The OOD bound's Beta quantile is computed without SciPy (`tracer status` stays fast) and equals betaincinv."""
    from scipy.special import betaincinv

    from tracer_core.serving.monitor import beta_quantile

    for n, beyond, q in [(20, 0, 0.99), (200, 1, 0.999), (1500, 7, 0.5), (15000, 75, 0.999)]:
        a, b = beyond + 1, n - beyond
        assert abs(beta_quantile(a, b, q) - float(betaincinv(a, b, q))) < 1e-12
