"""The relabel trigger: LLM answers to low-confidence deferrals that the policy found implausible raise the audit
rate, quickly after a relabelling, rarely on steady traffic, and never on anything but its own policy's deferrals."""

from __future__ import annotations

import logging

import numpy as np

from tests import clustered
from tracer_core import Tracer
from tracer_core.decision import Decision, Reason
from tracer_core.learning.certificate import Certificate
from tracer_core.serving.audits import BOOST_CALLS, MAX_BOOSTED_RATE, RELABEL_RATE, AuditSampler
from tracer_core.serving.monitor import AgreementMonitor, beta_quantile
from tracer_core.serving.relabel import (
    BASELINE_CONFIDENCE,
    MIN_BASELINE,
    RELABEL_LEVEL,
    RELABEL_MARGIN,
    RelabelWatch,
    relabel_limit,
)

PLAUSIBLE = ("lab1", "lab2")


def certificate(implausible: list, version: int = 3) -> Certificate:
    return Certificate(task="t", fingerprint="", deployed=True, alpha=0.95, delta=0.05, reason="",
                       reason_code="deployed", n_traces=5000, version=version, coverage=0.8,
                       deferred_implausible=implausible)


def unsure(version: int = 3, reason: Reason = Reason.LOW_CONFIDENCE) -> Decision:
    return Decision("lab1", False, 0.5, reason, version, PLAUSIBLE)


def answers(rng: np.random.Generator, n: int, share: float) -> list[str]:
    return ["lab9" if surprising else "lab2" for surprising in rng.random(n) < share]


def test_the_limit_is_the_calibration_upper_bound_plus_a_margin():
    assert relabel_limit(certificate([10, 500])) == beta_quantile(11, 490, BASELINE_CONFIDENCE) + RELABEL_MARGIN
    assert 10 / 500 + RELABEL_MARGIN < relabel_limit(certificate([10, 500])) < 0.1
    assert relabel_limit(certificate([])) is None  # a certificate of an earlier release: no baseline, no test
    assert relabel_limit(certificate([0, MIN_BASELINE - 1])) is None


def test_steady_answers_rarely_trigger():
    """Answers implausible exactly as often as calibration showed, 3,000 deferrals per version: at most
    RELABEL_LEVEL of 100 versions trigger."""
    rng = np.random.default_rng(0)
    fired = 0
    for _ in range(100):
        k = int((rng.random(300) < 0.03).sum())
        watch = RelabelWatch(certificate([k, 300]))
        fired += any(watch.observe(unsure(), label) for label in answers(rng, 3000, 0.03))
    assert fired <= 100 * RELABEL_LEVEL


def test_a_relabelling_triggers_within_a_few_hundred_deferrals():
    rng = np.random.default_rng(1)
    delays = []
    for _ in range(20):
        watch = RelabelWatch(certificate([6, 300]))
        assert not any(watch.observe(unsure(), label) for label in answers(rng, 2000, 0.02))
        after = [watch.observe(unsure(), label) for label in answers(rng, 1000, 0.15)]
        delays.append(after.index(True) if True in after else None)
    assert None not in delays and float(np.median(delays)) <= 200


def test_only_its_own_policys_low_confidence_deferrals_count():
    watch = RelabelWatch(certificate([0, 300]))
    for decision in (unsure(version=2), unsure(reason=Reason.OUT_OF_DISTRIBUTION),
                     Decision("lab1", False, 0.5, Reason.LOW_CONFIDENCE, 3)):  # no plausible labels: nothing to test
        assert not any(watch.observe(decision, "lab9") for _ in range(500))
    assert any(watch.observe(unsure(), "lab9") for _ in range(50))


def test_a_trigger_raises_the_audit_rate_and_says_why(caplog):
    """Said even while another boost is on (here: a worried monitor replaced by a fresh one)."""
    sampler, worried, monitor = AuditSampler(0.05, "seed", "task"), AgreementMonitor(0.95, 0.05, 2), AgreementMonitor(0.95, 0.05, 3)
    worried.update([True] * 40 + [False] * 4)
    sampler.draw(1, worried)
    sampler.draw(1, monitor)
    assert sampler.rate(monitor) == MAX_BOOSTED_RATE
    sampler.watch([], certificate([0, 300]))
    with caplog.at_level(logging.WARNING, logger="tracer"):
        for _ in range(50):
            sampler.answered(unsure(), "lab9")
    assert sampler.relabels >= 1 and sampler.rate(monitor) == RELABEL_RATE == 1.0
    assert "implausible" in caplog.text and "auditing every call" in caplog.text
    sampler.watch([unsure()] * BOOST_CALLS, certificate([0, 300]))
    assert sampler.rate(monitor) == 0.05  # for BOOST_CALLS routed calls


def test_recorded_answers_reach_the_trigger(tmp_path):
    """Through `Tracer.record` and `record_many` on a real SQLite store; every trace is kept."""
    with Tracer("relabel", tmp_path / "r.db", embedder=clustered.embed, auto_refit=False) as tracer:
        tracer.audits.watch([], certificate([0, 300], version=3))
        for i in range(30):
            tracer.record(f"lab1 item {i}", "lab9", decision=unsure())
        tracer.record_many([f"lab1 more {i}" for i in range(30)], ["lab9"] * 30, decisions=[unsure()] * 30)
        tracer.flush()
        assert tracer.audits.relabels >= 2 and tracer.current_audit_rate == RELABEL_RATE
        assert tracer.store.counts()["teacher"] == 60


def test_a_deployed_certificate_carries_the_baseline_and_deferrals_name_plausible_labels(tmp_path):
    with Tracer("baseline", tmp_path / "b.db", embedder=clustered.embed, auto_refit=False, policy_check_s=0.0) as tracer:
        texts = clustered.texts(1500)
        tracer.record_many(texts, [clustered.label_of(t) for t in texts])
        cert = tracer.fit()
        assert cert.deployed
        k, n = cert.deferred_implausible
        assert 0 <= k <= n <= cert.n_calibration
        assert tracer.certificate.deferred_implausible == [k, n]  # as stored with the policy and read back
        decisions = tracer.route_many(texts[-300:])
    for decision in decisions:
        if decision.reason == Reason.LOW_CONFIDENCE:
            assert decision.label in decision.plausible
        else:
            assert decision.plausible == ()
        assert "plausible" not in decision.to_dict()
