"""The savings estimate: how many more traces, or which lower alpha, a refused fit predicts would deploy."""

from __future__ import annotations

import logging

import numpy as np
from click.testing import CliRunner

from tests import clustered
from tracer_core.cli import main as cli
from tracer_core.learning import savings_estimate
from tracer_core.learning.attempt import Validation, worth_attempting
from tracer_core.learning.fit import calibration_needed, fit_policy
from tracer_core.learning.savings_estimate import (
    LOWER_ALPHA_CONFIDENCE,
    REFIT_EVERY,
    SavingsEstimate,
    enlarged,
    estimate_savings,
    minimum_estimate,
    projected,
)
from tracer_core.learning.spending import attempt_delta
from tracer_core.learning.split import CAL_FRACTION
from tracer_core.serving.tracer import Tracer

ALPHA, DELTA = 0.95, 0.03


def validation(n: int = 600, error_rate_top: float = 0.02, error_rate_rest: float = 0.3, seed: int = 0) -> Validation:
    """Confident inputs (the top half) err at `error_rate_top`, the rest at `error_rate_rest`."""
    rng = np.random.default_rng(seed)
    scores = np.sort(rng.uniform(0.2, 1.0, n))[::-1]
    rates = np.where(np.arange(n) < n // 2, error_rate_top, error_rate_rest)
    return Validation(scores, rng.uniform(size=n) >= rates)


def test_the_estimate_is_the_refit_by_which_a_fit_has_likely_deployed() -> None:
    like, n, n_cal = validation(error_rate_top=0.01), 400, 120
    assert not worth_attempting(like.coverage(n_cal, ALPHA, DELTA), 0.0)  # refused now
    est = estimate_savings(like, n_traces=n, n_pool=n, n_calibration=n_cal, alpha=ALPHA, delta=DELTA, next_attempt=1)
    assert est.more_traces is not None and est.coverage is not None and est.coverage > 0
    assert est.more_traces % REFIT_EVERY == 0  # a refit: the background refits come every REFIT_EVERY traces
    assert "about" in est.text() and f"{est.more_traces:,} more teacher traces" in est.text()
    assert "an estimate from validation, not a promise" in est.text()


def test_asking_for_more_confidence_never_brings_the_estimate_earlier(monkeypatch) -> None:
    like, common = validation(error_rate_top=0.04), dict(n_traces=400, n_pool=400, n_calibration=120, alpha=ALPHA,
                                                         delta=DELTA, next_attempt=1, error_decay=0.5)
    monkeypatch.setattr(savings_estimate, "CONFIDENCE", 0.5)
    even = estimate_savings(like, **common)
    monkeypatch.setattr(savings_estimate, "CONFIDENCE", 0.95)
    sure = estimate_savings(like, **common)
    assert even.more_traces is not None and sure.more_traces is not None
    assert sure.more_traces > even.more_traces  # a refused attempt costs a stricter level and a wait for fresh traces


def test_later_attempts_test_stricter_so_the_estimate_comes_later() -> None:
    like, common = validation(error_rate_top=0.04), dict(n_traces=400, n_pool=400, n_calibration=120, alpha=ALPHA,
                                                         delta=DELTA, error_decay=0.5)
    first = estimate_savings(like, **common, next_attempt=1)
    tenth = estimate_savings(like, **common, next_attempt=10)
    assert first.more_traces is not None and (tenth.more_traces is None or tenth.more_traces > first.more_traces)


def test_a_surrogate_that_learns_needs_fewer_traces_and_the_schedule_is_a_floor() -> None:
    like = validation(error_rate_top=0.05)
    common = dict(n_traces=400, n_pool=400, n_calibration=120, alpha=ALPHA, delta=DELTA, next_attempt=1)
    flat = estimate_savings(like, **common)
    learning = estimate_savings(like, **common, error_decay=0.5)
    assert learning.more_traces is not None
    assert flat.more_traces is None or learning.more_traces < flat.more_traces
    waiting = estimate_savings(like, **common, error_decay=0.5, wait=5_000)
    assert waiting.more_traces is not None and waiting.more_traces >= 5_000 and waiting.wait == 5_000


def test_a_lower_alpha_is_the_highest_the_next_attempt_likely_certifies() -> None:
    like, n_cal, attempt = validation(error_rate_top=0.08), 300, 2
    est = estimate_savings(like, n_traces=1000, n_pool=1000, n_calibration=n_cal, alpha=ALPHA, delta=DELTA,
                           next_attempt=attempt)
    level = attempt_delta(DELTA, attempt)
    assert est.lower_alpha is not None and est.lower_alpha < ALPHA
    assert like.certify_probability(n_cal, est.lower_alpha, level) >= LOWER_ALPHA_CONFIDENCE
    assert est.lower_alpha_coverage == round(like.coverage(n_cal, est.lower_alpha, level), 4) > 0
    above = round(est.lower_alpha + 0.01, 3)
    assert like.certify_probability(n_cal, above, level) < LOWER_ALPHA_CONFIDENCE or not worth_attempting(
        like.coverage(n_cal, above, level), 0.0)
    assert f"alpha {est.lower_alpha:g} would likely deploy now" in est.text()


def test_no_lower_alpha_is_suggested_that_the_next_attempt_would_likely_fail() -> None:
    like, n_cal = validation(error_rate_top=0.08), 300
    est = estimate_savings(like, n_traces=1000, n_pool=1000, n_calibration=n_cal, alpha=ALPHA, delta=DELTA,
                           next_attempt=1)
    level = attempt_delta(DELTA, 1)
    assert est.lower_alpha is not None
    for lower in (a / 100 for a in range(80, 95)):
        if lower > (est.lower_alpha or 0):  # every alpha above the suggestion is likelier to fail than allowed
            assert like.certify_probability(n_cal, lower, level) < LOWER_ALPHA_CONFIDENCE or not worth_attempting(
                like.coverage(n_cal, lower, level), 0.0)


def test_certify_probability_grows_with_calibration_evidence() -> None:
    like = validation(error_rate_top=0.01)
    assert like.certify_probability(0, ALPHA, DELTA) == 0.0
    assert like.certify_probability(100, ALPHA, DELTA) < like.certify_probability(1000, ALPHA, DELTA) <= 1.0


def test_nothing_in_reach_says_so_instead_of_a_number() -> None:
    hopeless = validation(error_rate_top=0.5, error_rate_rest=0.5)
    est = estimate_savings(hopeless, n_traces=500, n_pool=500, n_calibration=150, alpha=ALPHA, delta=DELTA,
                           next_attempt=1)
    assert est.more_traces is None and est.lower_alpha is None
    assert "no store up to" in est.text() and "must improve" in est.text()


def test_projected_keeps_the_share_of_disagreements_asked_for() -> None:
    like = validation()
    wrong = int((~like.agrees).sum())
    assert projected(like, 1.0) is like
    assert int((~projected(like, 0.5).agrees).sum()) == wrong - round(0.5 * wrong)
    assert projected(like, 0.0).agrees.all()


def test_enlarged_keeps_the_agreement_at_every_confidence() -> None:
    like = validation()
    big = enlarged(like, 2.5)
    assert len(big.scores) == round(2.5 * len(like.scores)) and enlarged(like, 1.0) is like
    assert abs(big.agrees.mean() - like.agrees.mean()) < 0.01
    top = np.argsort(-big.scores, kind="stable")[: len(big.scores) // 2]
    assert abs(big.agrees[top].mean() - like.agrees[: len(like.scores) // 2].mean()) < 0.02


def test_minimum_estimate_counts_calibration_traces_at_the_split_rate() -> None:
    est = minimum_estimate(n_traces=200, n_pool=100, n_calibration=60, alpha=ALPHA,
                           needed=lambda a: calibration_needed(a, DELTA))
    assert est is not None and est.basis == "minimum"
    rate = CAL_FRACTION * 100 / 200
    assert est.more_traces == int(np.ceil((calibration_needed(ALPHA, DELTA) - 60) / rate))
    assert est.lower_alpha is None  # clearing a lower alpha's minimum count is far from deploying there
    assert "at least ~" in est.text() and "not a promise" in est.text()
    assert minimum_estimate(n_traces=200, n_pool=0, n_calibration=0, alpha=ALPHA, needed=lambda a: 10) is None


def test_round_trip_through_the_certificate_dict() -> None:
    est = SavingsEstimate(0.95, 500, 1200, 0.4, 0.9, 0.6, wait=0)
    assert SavingsEstimate(**est.to_dict()) == est


def test_a_refused_fit_stores_the_estimate_and_says_it_in_its_reason() -> None:
    texts = clustered.texts(300)
    _, cert = fit_policy(texts, [clustered.label_of(t) for t in texts], alpha=ALPHA, delta=0.05, embed=clustered.embed)
    assert not cert.deployed and cert.savings_estimate is not None
    assert cert.savings_estimate["basis"] == "minimum" and cert.savings_estimate["more_traces"] > 0
    assert cert.reason.endswith(SavingsEstimate(**cert.savings_estimate).text())
    texts = clustered.texts(2000)
    policy, cert = fit_policy(texts, [clustered.label_of(t) for t in texts], alpha=0.9, delta=0.05,
                              embed=clustered.embed)
    assert cert.deployed and cert.savings_estimate is None


def test_refit_log_fit_command_and_status_say_when_savings_start(db_path, caplog) -> None:
    texts = clustered.texts(300)
    with Tracer("intent", db_path, alpha=ALPHA, embedder=clustered.embed, auto_refit=False, audit_rate=0.0) as tracer:
        for text in texts:
            tracer.record(text, clustered.label_of(text))
        with caplog.at_level(logging.INFO, logger="tracer"):
            tracer.fit()
    assert any("savings estimate: at least ~" in r.getMessage() for r in caplog.records)
    runner = CliRunner()
    fitted = runner.invoke(cli, ["fit", "--task", "intent", "--db", str(db_path)])
    assert fitted.exit_code == 0 and "savings estimate: at least ~" in fitted.output
    status = runner.invoke(cli, ["status", "--task", "intent", "--db", str(db_path)])
    assert status.exit_code == 0 and "savings estimate" in status.output
