"""One certification attempt: predict from validation, spend only when it is worth it, then run the gate.

The steps, in order (the fit and the lifetime benchmark both call `attempt_certification`):

1. Predict from validation alone what the gate would certify: the threshold grid's predicted
   p-values (validation agreement at each coverage step, the expected calibration size) at the
   level of the version's next attempt.
2. Attempt only when the prediction beats the policy in force by MIN_GAIN in coverage (anything
   above 0 when none is in force). Otherwise the fit ends here: no calibration label is read, no
   attempt index is taken, no delta is spent.
3. Reserve the attempt index j in the ledger (before any calibration label is read); the gate
   tests at delta_j (`tracer_core.spending`).
4. Fix the threshold grid on validation at delta_j, read the calibration evidence (only now)
   and run the fixed-sequence test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.stats import binom

from tracer_core.gate import GateResult, fixed_sequence_test
from tracer_core.spending import Ledger, attempt_delta

MIN_GAIN = 0.02  # coverage a new attempt must be predicted to add over the policy in force (bench `lifetime`)
GRID_STEP = 0.0025
MIN_PREDICTION_INPUTS = 200  # validation inputs behind a predicted p-value that may start the grid


@dataclass(frozen=True)
class CalibrationEvidence:
    """The final policy's decisions on the calibration traces (what the gate reads)."""

    scores: np.ndarray
    agrees: np.ndarray
    eligible: np.ndarray  # passed the out-of-distribution and unseen-label checks


@dataclass(frozen=True)
class Outcome:
    """What one attempt did. `attempt` 0: skipped (the gate did not run, nothing was spent)."""

    attempt: int
    delta_spent: float
    delta_spent_total: float
    delta_predicted: float  # the level the validation prediction used
    predicted_coverage: float  # of the calibration traces, predicted from validation
    grid: np.ndarray | None = None
    result: GateResult | None = None
    evidence: CalibrationEvidence | None = None

    @property
    def certified(self) -> bool:
        return self.result is not None and self.result.certified_index is not None

    @property
    def threshold(self) -> float | None:
        if self.grid is None or self.result is None or self.result.certified_index is None:
            return None
        return float(self.grid[self.result.certified_index])


def attempt_certification(
    val_scores: np.ndarray,
    val_agrees: np.ndarray,
    n_calibration: int,
    *,
    alpha: float,
    delta: float,
    baseline: float,
    ledger: Ledger,
    calibration: Callable[[], CalibrationEvidence],
    share_eligible: float = 1.0,
) -> Outcome:
    """Run the steps of the module docstring. `val_scores`/`val_agrees`: the surrogate on validation traces
    like the calibration ones; `baseline`: coverage of the policy in force (0 when none answers);
    `calibration()` is called only when the attempt is made; `share_eligible`: validation inputs the
    threshold-free filters keep (scales the predicted coverage to all calibration traces)."""
    planned = attempt_delta(delta, ledger.next_attempt())
    predicted = share_eligible * predicted_coverage(val_scores, val_agrees, n_calibration, alpha, planned)
    if not worth_attempting(predicted, baseline):
        return Outcome(0, 0.0, 0.0, planned, predicted)
    taken = ledger.reserve(alpha, delta)
    grid = threshold_grid(val_scores, val_agrees, n_calibration, alpha, taken.delta_spent)
    evidence = calibration()
    result = fixed_sequence_test(grid, evidence.scores, evidence.agrees, evidence.eligible, alpha, taken.delta_spent)
    return Outcome(taken.attempt, taken.delta_spent, taken.delta_spent_total, planned, predicted, grid, result, evidence)


def worth_attempting(predicted: float, baseline: float) -> bool:
    """An attempt is made when validation predicts materially more coverage than the policy in force."""
    return predicted > 0.0 and predicted >= baseline + MIN_GAIN


def _predicted_p_values(
    val_scores: np.ndarray, val_agrees: np.ndarray, n_calibration: int, alpha: float
) -> tuple[np.ndarray, np.ndarray]:
    """(coverage steps, the gate's p-value predicted at each): validation agreement of the most confident
    share, tested on the expected number of handled calibration inputs. Steps with few validation inputs
    predict noisily: their p-value is 1 (never a start)."""
    order = np.argsort(-val_scores, kind="stable")
    running = np.cumsum(val_agrees[order]) / np.arange(1, len(order) + 1)
    shares = np.append(np.arange(GRID_STEP, 1.0, GRID_STEP), 1.0)
    taken = np.maximum(np.ceil(shares * len(order)).astype(int), 1)
    expected_n = np.maximum(np.round(shares * n_calibration).astype(int), 1)
    expected_errors = np.floor((1.0 - running[taken - 1]) * expected_n)
    predicted_p = binom.cdf(expected_errors, expected_n, 1.0 - alpha)
    predicted_p[taken < min(MIN_PREDICTION_INPUTS, len(order) // 4)] = 1.0
    return shares, predicted_p


def _grid_start(predicted_p: np.ndarray, delta: float) -> int:
    """The first step predicted to pass comfortably (p <= delta / 10), else the smallest predicted p-value."""
    passing = np.nonzero(predicted_p <= delta / 10)[0]
    return int(passing[0]) if len(passing) else int(np.argmin(predicted_p))


def threshold_grid(
    val_scores: np.ndarray, val_agrees: np.ndarray, n_calibration: int, alpha: float, delta: float
) -> np.ndarray:
    """Descending thresholds at validation-coverage steps, ending at 0 (handle all).

    The sequence starts at the first step where validation predicts the calibration test will
    pass comfortably (see `_grid_start`); steps too small to ever pass are skipped instead of
    stopping the sequence at once. Only validation data decide this.
    """
    if not len(val_scores):
        return np.array([0.0])
    shares, predicted_p = _predicted_p_values(val_scores, val_agrees, n_calibration, alpha)
    start = _grid_start(predicted_p, delta)
    grid = np.quantile(val_scores, np.clip(1.0 - shares[start:], 0.0, 1.0))
    return np.unique(np.append(grid, 0.0))[::-1]


def predicted_coverage(
    val_scores: np.ndarray, val_agrees: np.ndarray, n_calibration: int, alpha: float, delta: float
) -> float:
    """Coverage the gate is predicted to certify at level `delta`: the fixed-sequence test run on the
    predicted p-values, from the grid's start down to the first predicted failure (0: none passes)."""
    if not len(val_scores) or n_calibration <= 0:
        return 0.0
    shares, predicted_p = _predicted_p_values(val_scores, val_agrees, n_calibration, alpha)
    start = _grid_start(predicted_p, delta)
    passing = predicted_p[start:] <= delta
    if not passing[0]:
        return 0.0
    last = len(passing) - 1 if passing.all() else int(np.argmin(passing)) - 1
    return float(shares[start + last])
