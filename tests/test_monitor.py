"""The live-agreement monitor is anytime-valid (simulation) and has power; the drift watch flags jumps."""

from __future__ import annotations

import numpy as np

from tracer_core.audits import MAX_BOOSTED_RATE, AuditSampler
from tracer_core.decision import Decision, Reason
from tracer_core.monitor import RECENT, AgreementMonitor, DriftWatch


def first_rejection(p: float, n: int, rng: np.random.Generator, alpha: float = 0.95, delta: float = 0.05,
                    before: tuple[float, int] = (1.0, 0)) -> int | None:
    """Audits after `before` (agreement, count) until the monitor rejects, or None within `n`."""
    monitor = AgreementMonitor(alpha, delta)
    monitor.update(bool(a) for a in rng.random(before[1]) < before[0])
    assert not monitor.rejected
    for i, agreed in enumerate(rng.random(n) < p):
        monitor.update([bool(agreed)])
        if monitor.rejected:
            return i + 1
    return None


def test_false_alarms_stay_below_delta_at_every_sample_size():
    """True agreement exactly alpha (the worst case of H0): rejections at any time in 2,000 audits <= delta."""
    rng = np.random.default_rng(0)
    runs = 400
    alarms = sum(first_rejection(0.95, 2000, rng) is not None for _ in range(runs))
    assert alarms / runs <= 0.05 + 2 * (0.05 * 0.95 / runs) ** 0.5  # delta plus two standard errors


def test_false_alarms_stay_below_delta_with_a_good_policy_for_long():
    rng = np.random.default_rng(2)
    runs = 200
    alarms = sum(first_rejection(0.96, 5000, rng) is not None for _ in range(runs))
    assert alarms / runs <= 0.05


def test_a_drop_in_agreement_is_caught_quickly():
    rng = np.random.default_rng(1)
    times = [first_rejection(0.85, 2000, rng) for _ in range(50)]
    assert all(t is not None for t in times)
    assert float(np.median(times)) <= 150


def test_a_late_drop_is_caught_quickly_too():
    """3,000 audits at 0.97 first dig no hole: the bet stays at zero while the policy does as certified,
    so a later drop is caught within a couple of hundred audits (the recent window must first fill
    with the new agreement)."""
    rng = np.random.default_rng(3)
    late = [first_rejection(0.85, 2000, rng, before=(0.97, 3000)) for _ in range(50)]
    assert all(t is not None for t in late)
    assert float(np.median(late)) <= 4 * RECENT


def test_the_first_won_bet_raises_the_audit_rate():
    """Disagreements that make the bet positive and then pay raise the audit rate at once, long before rejection."""
    monitor, sampler = AgreementMonitor(0.95, 0.05), AuditSampler(0.05, "seed", "task")
    monitor.update([True] * 40 + [False] * 3)
    assert not monitor.suspicious and sampler.rate(monitor) == 0.05  # no bet has been won yet
    monitor.update([False])
    assert monitor.suspicious and not monitor.rejected
    assert sampler.rate(monitor) == MAX_BOOSTED_RATE


def test_the_boost_ends_when_recent_audits_agree_again():
    """This run leaves the wealth above the boost level with a zero bet (frozen): the boost must still end."""
    monitor, sampler = AgreementMonitor(0.95, 0.05), AuditSampler(0.05, "seed", "task")
    burst = "FTTFTTTTTTTTTFFTTTTFTFTTTTTTFFTTTTTTTTTTTFTTTTTTTTTFTTTTTTTT"
    monitor.update([True] * 40 + [c == "T" for c in burst] + [True] * 200)
    assert monitor.bet() == 0 and monitor.wealth > 20 ** 0.05 and not monitor.rejected
    assert not monitor.suspicious and sampler.rate(monitor) == 0.05


def test_a_rejection_inside_one_batch_of_audits_is_kept():
    """The wealth that reaches 1/delta mid-batch rejects, even if later audits of the batch agree."""
    monitor = AgreementMonitor(0.95, 0.05)
    monitor.update([True] * 40 + [False] * 8 + [True] * 3000)
    assert monitor.wealth < 1 and monitor.rejected


def test_drift_watch_flags_an_out_of_distribution_jump():
    watch = DriftWatch(window=500)
    normal = [Decision("a", True, 0.9, Reason.HANDLED, 1)] * 495 + [Decision("a", False, 0.1, Reason.OUT_OF_DISTRIBUTION, 1)] * 5
    watch.observe(normal)
    assert watch.signal(expected_deferral=0.1) is None
    watch.observe([Decision("a", False, 0.1, Reason.OUT_OF_DISTRIBUTION, 1)] * 60)
    signal = watch.signal(expected_deferral=0.2)
    assert signal is not None and signal.kind == "out_of_distribution" and signal.observed == 65
