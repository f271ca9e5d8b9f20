"""The parity gate's statistics: exact binomial p-values, fixed-sequence testing, validity."""

import numpy as np
import pytest
from scipy.stats import binom

from tracer_core.learning.attempt import threshold_grid
from tracer_core.learning.fit import coverage_at
from tracer_core.learning.gate import (
    agreement_lower_bound,
    binomial_p_value,
    fixed_sequence_test,
    min_handled_for,
    significantly_below,
)


def test_p_value_is_the_exact_binomial_tail():
    assert binomial_p_value(3, 100, 0.95) == pytest.approx(binom.cdf(3, 100, 0.05))
    assert binomial_p_value(0, 0, 0.95) == 1.0
    # 0 errors in 59 inputs is the fewest that certifies 0.95 at delta 0.05
    assert binomial_p_value(0, 59, 0.95) <= 0.05 < binomial_p_value(0, 58, 0.95)
    assert min_handled_for(0.95, 0.05) == 59


def test_lower_bound_is_below_the_empirical_rate_and_tightens_with_n():
    small = agreement_lower_bound(95, 100, 0.05)
    large = agreement_lower_bound(950, 1000, 0.05)
    assert small < large < 0.95
    assert agreement_lower_bound(0, 0, 0.05) == 0.0


def test_fixed_sequence_stops_at_the_first_non_rejection():
    # 300 confident correct, then 100 wrong, then 300 correct again with lower scores
    scores = np.concatenate([np.linspace(1.0, 0.8, 300), np.linspace(0.79, 0.6, 100), np.linspace(0.59, 0.1, 300)])
    agrees = np.concatenate([np.ones(300, bool), np.zeros(100, bool), np.ones(300, bool)])
    grid = np.array([0.9, 0.8, 0.6, 0.2, 0.0])
    result = fixed_sequence_test(grid, scores, agrees, np.ones(700, bool), alpha=0.9, delta=0.05)
    assert result.certified_index == 1  # 0.6 fails (300 of 400 agree): 0.2 and 0.0 are never tested
    assert result.n_tested == 3
    assert result.handled == 300 and result.agree == 300


def test_grid_must_descend():
    with pytest.raises(ValueError, match="descending"):
        fixed_sequence_test(np.array([0.1, 0.5]), np.ones(3), np.ones(3, bool), np.ones(3, bool), 0.9, 0.05)


def test_threshold_grid_is_descending_within_unit_interval_and_ends_at_zero():
    rng = np.random.default_rng(0)
    grid = threshold_grid(rng.random(500), np.ones(500, bool), 300, 0.95, 0.05)
    assert np.all(np.diff(grid) < 0) and grid[-1] == 0.0 and grid[0] <= 1.0
    assert threshold_grid(np.array([]), np.array([], bool), 10, 0.99, 0.05).tolist() == [0.0]


def test_threshold_grid_starts_where_validation_predicts_the_strongest_evidence():
    """Agreement falling with confidence: start inside the region that reaches alpha. A noisy
    teacher (agreement ~0.93 everywhere): skip the small shares that could never pass."""
    rng = np.random.default_rng(0)
    scores = rng.random(2000)
    falling = rng.random(2000) < 0.5 + 0.5 * scores
    share = lambda grid: float((scores >= grid[0]).mean())  # noqa: E731
    start = share(threshold_grid(scores, falling, 3000, 0.9, 0.05))
    assert 0.05 < start < coverage_at(scores, falling, 0.9)
    assert share(threshold_grid(scores, rng.random(2000) < 0.93, 3000, 0.9, 0.05)) > 0.1


def test_coverage_at_alpha():
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    agrees = np.array([True, True, False, False])
    assert coverage_at(scores, agrees, 0.6) == 0.75
    assert coverage_at(scores, agrees, 1.0) == 0.5
    assert coverage_at(np.array([]), np.array([], bool), 0.9) == 0.0


def test_significantly_below_is_the_one_sided_exact_test():
    assert significantly_below(150, 200, 0.95)
    assert not significantly_below(188, 200, 0.95)
    assert not significantly_below(0, 0, 0.95)


def test_gate_is_valid_over_many_simulated_calibrations():
    """With a surrogate whose true agreement falls with the threshold, the certified set's
    true agreement is below alpha in at most ~delta of the runs."""
    rng = np.random.default_rng(1)
    alpha, delta, n = 0.9, 0.1, 400
    grid = np.linspace(0.8, 0.0, 33)  # the first threshold handles ~80 inputs: it can pass

    def true_agreement(threshold: float) -> float:
        # inputs have score s ~ U(0,1) and agree with probability 0.6 + 0.4 s
        s = np.linspace(threshold, 1.0, 2001)
        return float(np.mean(0.6 + 0.4 * s))

    failures = certified = 0
    runs = 300
    for _ in range(runs):
        scores = rng.random(n)
        agrees = rng.random(n) < 0.6 + 0.4 * scores
        result = fixed_sequence_test(grid, scores, agrees, np.ones(n, bool), alpha, delta)
        if result.certified_index is not None:
            certified += 1
            failures += true_agreement(grid[result.certified_index]) < alpha
    assert certified > runs / 2
    assert failures / runs <= delta + 0.03


def test_gate_with_its_grid_fixed_on_validation_is_valid_at_a_known_true_agreement():
    """The fit's procedure: grid from a validation sample, fixed-sequence test on an independent
    calibration sample. Inputs have score s ~ U(0,1) and agree with probability 0.6 + 0.4 s, so
    the set {s >= t} has true agreement 0.8 + 0.2 t: alpha 0.9 holds exactly when t >= 0.5.
    The certified threshold falls below 0.5 in at most ~delta of the runs (and often enough
    near it that the test could show a violation)."""
    rng = np.random.default_rng(2)
    alpha, delta, runs = 0.9, 0.1, 400
    failures = certified = near = 0
    for _ in range(runs):
        val_s = rng.random(500)
        val_a = rng.random(500) < 0.6 + 0.4 * val_s
        cal_s = rng.random(1000)
        cal_a = rng.random(1000) < 0.6 + 0.4 * cal_s
        grid = threshold_grid(val_s, val_a, 1000, alpha, delta)
        result = fixed_sequence_test(grid, cal_s, cal_a, np.ones(1000, bool), alpha, delta)
        if result.certified_index is None:
            continue
        certified += 1
        t = grid[result.certified_index]
        failures += t < 0.5
        near += t < 0.6
    assert certified > runs * 0.9 and near > runs * 0.3
    assert failures / runs <= delta + 0.03


def test_calibrating_only_on_the_uniform_pool_stays_valid_where_a_biased_sample_would_not():
    """Why calibration traces come only from the calibration pool: a sample of traces that is not
    uniform over traffic (here one a deployed policy skewed toward easy, high-score inputs)
    certifies thresholds whose true agreement is below alpha far more often than delta; the
    uniform pool does not. Same model of agreement as above: {s >= t} agrees at 0.8 + 0.2 t."""
    rng = np.random.default_rng(3)
    alpha, delta, runs = 0.9, 0.1, 300
    violations = {"pool": 0, "biased": 0}
    for _ in range(runs):
        val_s = rng.random(500)
        grid = threshold_grid(val_s, rng.random(500) < 0.6 + 0.4 * val_s, 800, alpha, delta)
        s = rng.random(6000)
        agree = rng.random(6000) < 0.6 + 0.4 * s
        pool = rng.random(6000) < 0.2  # a uniform audit sample of traffic
        biased = ~pool & (s >= 0.6)
        for name, mask in (("pool", pool), ("biased", biased)):
            idx = np.nonzero(mask)[0][:800]
            result = fixed_sequence_test(grid, s[idx], agree[idx], np.ones(len(idx), bool), alpha, delta)
            if result.certified_index is not None and 0.8 + 0.2 * grid[result.certified_index] < alpha:
                violations[name] += 1
    assert violations["pool"] / runs <= delta + 0.03
    assert violations["biased"] / runs > 3 * delta
