"""Where the gate's threshold walk starts: the grid and the attempt's prediction read the same start."""

from __future__ import annotations

import numpy as np
import pytest

from tracer_core.learning.attempt import (
    POWER,
    _grid_start,
    _pass_probabilities,
    grid_from,
    predicted_coverage,
    threshold_grid,
    walk_prediction,
)
from tracer_core.learning.gate import fixed_sequence_test


def _validation(n: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Scores whose agreement falls from about 1 (most confident) to about 0.8 (least)."""
    rng = np.random.default_rng(seed)
    scores = rng.uniform(size=n)
    return scores, rng.uniform(size=n) < 0.8 + 0.2 * scores


@pytest.mark.parametrize("alpha", [0.90, 0.95])
def test_the_grid_and_the_prediction_start_at_the_same_step(alpha):
    scores, agrees = _validation()
    shares, passes = _pass_probabilities(scores, agrees, 3000, alpha, 0.03)
    start = _grid_start(passes)
    assert start > 0 and passes[start] >= POWER  # the tiny steps before it are skipped, and it is likely to pass
    grid = threshold_grid(scores, agrees, 3000, alpha, 0.03)
    assert grid[0] == pytest.approx(np.quantile(scores, 1.0 - shares[start]))
    predicted = predicted_coverage(scores, agrees, 3000, alpha, 0.03)
    assert predicted == walk_prediction(shares, passes, start) >= shares[start]


def test_a_grid_is_descending_from_its_start_and_ends_at_handle_all():
    scores, _ = _validation()
    shares = np.array([0.1, 0.2, 0.5, 1.0])
    grid = grid_from(scores, shares, 1)
    assert np.all(np.diff(grid) < 0) and grid[-1] == 0.0
    assert grid[0] == pytest.approx(np.quantile(scores, 0.8))


def test_the_prediction_is_zero_when_the_start_is_unlikely_to_pass():
    shares, passes = np.array([0.1, 0.2, 0.3]), np.array([0.2, 0.9, 0.9])
    assert walk_prediction(shares, passes, 0) == 0.0
    assert walk_prediction(shares, passes, 1) == 0.3


def test_steps_before_the_start_are_never_tested():
    """A calibration blip at an early step stops a walk that tests it, not one that starts after it."""
    scores = np.linspace(1.0, 0.0, 1000, endpoint=False)
    agrees = np.ones(1000, dtype=bool)
    agrees[[3, 5, 8]] = False  # errors among the 10 most confident: the first steps cannot pass
    thresholds = np.array([0.99, 0.5, 0.0])
    eligible = np.ones(1000, dtype=bool)
    assert fixed_sequence_test(thresholds, scores, agrees, eligible, 0.95, 0.05).certified_index is None
    later = fixed_sequence_test(thresholds[1:], scores, agrees, eligible, 0.95, 0.05)
    assert later.certified_index == 1 and later.handled == 1000
