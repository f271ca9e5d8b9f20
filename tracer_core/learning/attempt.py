"""One certification attempt: check the schedule, predict from validation, spend only when it is worth it, run the gate.

The steps, in order (the fit and the lifetime benchmark both call `attempt_certification`):

1. The schedule: after an attempt whose gate certified nothing, the next one waits for fresh
   evidence: FRESH_SHARE as many traces newer than that attempt's as there are older ones (a gate
   re-run on mostly the same labels and model would mostly repeat its verdict, and spend delta
   doing so). Evidence after a suspension is all fresh.
2. Predict from validation alone what the gate would certify at the level of the version's next
   attempt: the coverage down to which each step of the threshold grid passes at least as often
   as not (POWER), given the validation agreement at that step and the expected calibration size.
3. Attempt only when the prediction beats the coverage of the policy in force (0 when none is) by
   MIN_GAIN, or, while a policy is in force, when the calibration window has grown to
   WINDOW_GROWTH times the one the latest attempt read (and the prediction is above 0): after a
   deployment the window grows by audits only, and a prediction from the few validation traces
   drawn like them stays cautious, so a larger window is tested on schedule. While a policy is in
   force, an attempt for the gain also needs validation to predict that the gate certifies
   something with probability MIN_CERTIFY_PROBABILITY: a gate that certifies nothing then changes
   nothing but makes every later attempt stricter. (The schedule's attempts do not: they exist
   because that prediction is cautious, and their number is bounded.)

   When step 1 or 3 says no, the fit ends here: no calibration label is read, no attempt index
   is taken, no delta is spent.
4. Reserve the attempt index j in the ledger (before any calibration label is read); the gate
   tests at delta_j (`tracer_core.learning.spending`).
5. Fix the threshold grid on validation at delta_j, read the calibration evidence (only now), run
   the fixed-sequence test and record its outcome in the ledger (for step 1 of later attempts). An
   attempt made for the gain whose certified coverage is below the policy in force's replaces
   nothing: the fit keeps the policy in force, and the ledger counts the attempt as one that
   certified nothing. An attempt made because the window grew replaces it whatever its coverage:
   its evidence is larger and newer, and under drift the newer certificate is the one that
   describes current traffic.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tracer_core.learning.gate import GateResult, fixed_sequence_test
from tracer_core.learning.spending import Attempt, Ledger, attempt_delta

POWER = 0.5  # a step of the grid is predicted to pass when it passes at least as often as not
# Coverage a new attempt must be predicted to add over the policy in force, and the growth of the calibration window
# (relative to the latest attempt's) that earns an attempt without it. Once a policy answers, validation holds few
# traces drawn like the calibration ones, and its prediction fell 0.1 to 0.5 below what the gate then certified; each
# attempt makes the later ones stricter. Measured side by side (bench `replay`, median last-3,000 coverage of 20 stable
# Banking77 shuffles): a gain of 0.10 without the floor below or `not_better` gave 0.787, 0.05 with them 0.804-0.814
# (three runs), and the same on stable CLINC150 shuffles. A growth of 1.5 gained on Banking77 but lost on CLINC150
# (mean 0.915 -> 0.892 over 4 shuffles): an attempt at a smaller window deploys a lower policy, and the window then
# takes thousands of queries to grow again. With a gain of 0.02, about 9 attempts, most adding under 0.01.
MIN_GAIN = 0.05
WINDOW_GROWTH = 2.0
# While a policy is in force: the probability validation must give the gate's first step to pass for an attempt for
# the gain (bench `replay`: without it, versions spent attempts at 0.0012 and below on gates that certified nothing,
# then waited for fresh traces; required of the window's attempts too, it kept a version on its first policy)
MIN_CERTIFY_PROBABILITY = 0.8
FRESH_SHARE = 0.5  # after a refused attempt, fresh traces needed per trace it saw (bench `lifetime`)
GRID_STEP = 0.0025
MIN_PREDICTION_INPUTS = 200  # validation inputs behind a step's pass probability (or a quarter of them)
MIN_LIKE_CALIBRATION = 200  # validation rows drawn like the calibration ones that stand for them on their own


@dataclass(frozen=True)
class CalibrationEvidence:
    """The final policy's decisions on the calibration traces (what the gate reads)."""

    scores: np.ndarray
    agrees: np.ndarray
    eligible: np.ndarray  # passed the out-of-distribution and unseen-label checks


@dataclass(frozen=True)
class Validation:
    """Validation traces that stand for the calibration ones: the surrogate's confidence and agreement on those the
    threshold-free filters keep, and the share they keep (to scale a coverage to all calibration traces)."""

    scores: np.ndarray
    agrees: np.ndarray
    share_eligible: float = 1.0

    @classmethod
    def like_calibration(
        cls, scores: np.ndarray, agrees: np.ndarray, in_pool: np.ndarray, in_distribution: np.ndarray
    ) -> Validation:
        """The validation rows drawn like the calibration traces (from the pool) when there are at least
        MIN_LIKE_CALIBRATION of them, else every validation row; of those, the in-distribution ones."""
        like = in_pool if in_pool.sum() >= MIN_LIKE_CALIBRATION else np.ones(len(in_pool), dtype=bool)
        ok = like & in_distribution
        return cls(scores[ok], agrees[ok], float(ok.sum() / like.sum()) if like.any() else 0.0)

    def coverage(self, n_calibration: int, alpha: float, delta: float) -> float:
        """Coverage of all calibration traces a gate at `delta` is predicted to certify."""
        return self.share_eligible * predicted_coverage(self.scores, self.agrees, n_calibration, alpha, delta)

    def certify_probability(self, n_calibration: int, alpha: float, delta: float) -> float:
        """Probability that a gate at `delta` certifies a threshold: that its grid's first step (the step likeliest
        to pass) passes."""
        if not len(self.scores) or n_calibration <= 0:
            return 0.0
        return float(_pass_probabilities(self.scores, self.agrees, n_calibration, alpha, delta)[1].max())


@dataclass(frozen=True)
class Outcome:
    """What one attempt did. `attempt` 0: skipped (the gate did not run, nothing was spent)."""

    attempt: int
    delta_spent: float
    delta_spent_total: float
    delta_predicted: float  # the level the validation prediction used
    predicted_coverage: float  # of the calibration traces, predicted from validation
    fresh_needed: int = 0  # skipped by the schedule: fresh traces still needed
    grid: np.ndarray | None = None
    result: GateResult | None = None
    evidence: CalibrationEvidence | None = None
    scheduled: bool = False  # made because the calibration window grew (not only for the predicted gain)

    @property
    def certified(self) -> bool:
        return self.result is not None and self.result.certified_index is not None

    @property
    def threshold(self) -> float | None:
        if self.grid is None or self.result is None or self.result.certified_index is None:
            return None
        return float(self.grid[self.result.certified_index])

    @property
    def coverage(self) -> float:
        """Share of the calibration traces the certified threshold handles (0 when none is certified)."""
        threshold, evidence = self.threshold, self.evidence
        if threshold is None or evidence is None or not len(evidence.scores):
            return 0.0
        return float(np.mean(evidence.eligible & (evidence.scores >= threshold)))

    def replaces(self, baseline: float) -> bool:
        """Whether the certified policy replaces one in force with coverage `baseline` (step 5 of the module)."""
        return self.certified and (self.scheduled or self.coverage >= baseline)


def attempt_certification(
    validation: Validation,
    n_calibration: int,
    trace_ids: np.ndarray,
    *,
    alpha: float,
    delta: float,
    baseline: float,
    ledger: Ledger,
    calibration: Callable[[], CalibrationEvidence],
) -> Outcome:
    """Run the steps of the module docstring. `n_calibration`: the calibration window's size; `trace_ids`: the
    ids of every trace of the fit's evidence; `baseline`: coverage of the policy in force (0 when none answers);
    `calibration()` is called only when the attempt is made."""
    planned = attempt_delta(delta, ledger.next_attempt())
    predicted = validation.coverage(n_calibration, alpha, planned)
    waiting = fresh_needed(trace_ids, ledger.latest())
    gain = worth_attempting(predicted, baseline) and (
        baseline <= 0.0 or validation.certify_probability(n_calibration, alpha, planned) >= MIN_CERTIFY_PROBABILITY)
    scheduled = window_grown(predicted, baseline, n_calibration, ledger.latest())
    if waiting or not (gain or scheduled):
        return Outcome(0, 0.0, 0.0, planned, predicted, waiting)
    taken = ledger.reserve(alpha, delta, n_calibration, int(np.max(trace_ids)))
    grid = threshold_grid(validation.scores, validation.agrees, n_calibration, alpha, taken.delta_spent)
    evidence = calibration()
    result = fixed_sequence_test(grid, evidence.scores, evidence.agrees, evidence.eligible, alpha, taken.delta_spent)
    outcome = Outcome(taken.attempt, taken.delta_spent, taken.delta_spent_total, planned, predicted, 0, grid, result,
                      evidence, scheduled)
    ledger.settle(taken.attempt, outcome.replaces(baseline))
    return outcome


def fresh_needed(trace_ids: np.ndarray, latest: Attempt | None) -> int:
    """Fresh traces the schedule still waits for (0: an attempt may run): after an attempt that certified nothing
    (or never recorded its outcome), FRESH_SHARE as many traces newer than its newest as there are older ones."""
    if latest is None or latest.certified:
        return 0
    fresh = int(np.count_nonzero(np.asarray(trace_ids) > latest.last_trace_id))
    return max(math.ceil(FRESH_SHARE * (len(trace_ids) - fresh)) - fresh, 0)


def worth_attempting(predicted: float, baseline: float) -> bool:
    """An attempt is made when validation predicts materially more coverage than the policy in force."""
    return predicted > 0.0 and predicted >= baseline + MIN_GAIN


def window_grown(predicted: float, baseline: float, n_calibration: int, latest: Attempt | None) -> bool:
    """While a policy is in force (`baseline` > 0), an attempt is also made when the calibration window has grown to
    WINDOW_GROWTH times the one the latest attempt read (the number of such attempts grows with log(CAL_WINDOW))."""
    return (predicted > 0.0 and baseline > 0.0 and latest is not None
            and n_calibration >= WINDOW_GROWTH * latest.n_calibration)


def _pass_probabilities(
    val_scores: np.ndarray, val_agrees: np.ndarray, n_calibration: int, alpha: float, delta: float
) -> tuple[np.ndarray, np.ndarray]:
    """(coverage steps, the probability that the gate's test at level `delta` passes at each).

    At a step (the most confident share of validation), the calibration errors among the expected number
    of handled calibration inputs follow a beta-binomial: the error rate unknown, with that share's
    validation errors and agreements as its evidence. The step passes with at most the most errors the
    exact binomial test allows at `delta`. Steps with few validation inputs predict noisily: 0.
    """
    from scipy.stats import binom

    order = np.argsort(-val_scores, kind="stable")
    shares = np.append(np.arange(GRID_STEP, 1.0, GRID_STEP), 1.0)
    taken = np.maximum(np.ceil(shares * len(order)).astype(int), 1)
    agree = np.cumsum(val_agrees[order])[taken - 1]
    n = np.maximum(np.round(shares * n_calibration).astype(int), 1)
    most = binom.ppf(delta, n, 1.0 - alpha)  # the fewest errors whose p-value reaches delta ...
    most = np.where(binom.cdf(most, n, 1.0 - alpha) <= delta, most, most - 1)  # ... or one fewer: the most that pass
    passes = _betabinom_cdf(most, n, taken - agree + 1.0, agree + 1.0)
    passes[taken < min(MIN_PREDICTION_INPUTS, len(order) // 4)] = 0.0
    return shares, passes


def _betabinom_cdf(k: np.ndarray, n: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """P(BetaBinomial(n, a, b) <= k) element-wise (0 where k < 0): the pmf summed over 0..k in one array
    operation (scipy's `betabinom.cdf` sums one element at a time, 100 times slower here)."""
    from scipy.special import betaln, gammaln

    j = np.arange(max(int(k.max()), 0) + 1)[None, :]
    n, a, b = n[:, None], a[:, None], b[:, None]
    log_pmf = (gammaln(n + 1) - gammaln(j + 1) - gammaln(np.maximum(n - j, 0) + 1)
               + betaln(j + a, np.maximum(n - j, 0) + b) - betaln(a, b))
    pmf = np.where(j <= np.minimum(k[:, None], n), np.exp(log_pmf), 0.0)
    return np.minimum(pmf.sum(axis=1), 1.0)


def _grid_start(passes: np.ndarray) -> int:
    """The step predicted likeliest to pass (the first of equals)."""
    return int(np.argmax(passes))


def threshold_grid(
    val_scores: np.ndarray, val_agrees: np.ndarray, n_calibration: int, alpha: float, delta: float
) -> np.ndarray:
    """Descending thresholds at validation-coverage steps, ending at 0 (handle all).

    The sequence starts at the step `_grid_start` picks from the predicted pass probabilities (see
    `_pass_probabilities`): steps too small or too uncertain to pass are skipped instead of stopping
    the sequence at once. Only validation data decide this.
    """
    if not len(val_scores):
        return np.array([0.0])
    shares, passes = _pass_probabilities(val_scores, val_agrees, n_calibration, alpha, delta)
    return grid_from(val_scores, shares, _grid_start(passes))


def grid_from(val_scores: np.ndarray, shares: np.ndarray, start: int) -> np.ndarray:
    """The thresholds of the validation-coverage steps `shares[start:]`, descending, ending at 0."""
    grid = np.quantile(val_scores, np.clip(1.0 - shares[start:], 0.0, 1.0))
    return np.unique(np.append(grid, 0.0))[::-1]


def predicted_coverage(
    val_scores: np.ndarray, val_agrees: np.ndarray, n_calibration: int, alpha: float, delta: float
) -> float:
    """Coverage the gate at level `delta` is predicted to certify (see `walk_prediction`)."""
    if not len(val_scores) or n_calibration <= 0:
        return 0.0
    shares, passes = _pass_probabilities(val_scores, val_agrees, n_calibration, alpha, delta)
    return walk_prediction(shares, passes, _grid_start(passes))


def walk_prediction(shares: np.ndarray, passes: np.ndarray, start: int) -> float:
    """From the grid's `start` down to the last step of the run whose pass probabilities are all at least POWER
    (0: the start's is not)."""
    likely = passes[start:] >= POWER
    if not likely[0]:
        return 0.0
    last = len(likely) - 1 if likely.all() else int(np.argmin(likely)) - 1
    return float(shares[start + last])
