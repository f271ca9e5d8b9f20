"""The parity gate: Learn-then-Test fixed-sequence testing with exact binomial tails.

For each threshold of a grid fixed before calibration labels are seen (highest first), test
H0: "agreement with the teacher on inputs handled at this threshold is below alpha" with the
exact binomial p-value P(Binom(n, 1 - alpha) <= errors). Walk down the grid while H0 is
rejected at level delta; the last rejected threshold is certified. Fixed-sequence testing
needs no multiplicity correction, so with probability >= 1 - delta the certified threshold
has agreement >= alpha on the population the calibration traces were drawn from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import beta, binom


def binomial_p_value(errors: int, n: int, alpha: float) -> float:
    """p-value of H0 "agreement < alpha" after `errors` disagreements in `n` handled inputs."""
    if n == 0:
        return 1.0
    return float(binom.cdf(errors, n, 1.0 - alpha))


def agreement_lower_bound(agree: int, n: int, delta: float) -> float:
    """One-sided Clopper-Pearson lower confidence bound (level 1 - delta) on agreement."""
    if n == 0 or agree == 0:
        return 0.0
    return float(beta.ppf(delta, agree, n - agree + 1))


def min_handled_for(alpha: float, delta: float) -> int:
    """Fewest handled calibration inputs that can certify alpha at all (zero errors)."""
    return math.ceil(math.log(delta) / math.log(alpha))


def significantly_below(agree: int, n: int, alpha: float, level: float = 0.05) -> bool:
    """True when `agree` of `n` is evidence (exact binomial, one-sided) that agreement < alpha."""
    if n == 0:
        return False
    return float(binom.cdf(agree, n, alpha)) < level


@dataclass(frozen=True)
class GateResult:
    """Outcome of the fixed-sequence test."""

    certified_index: int | None  # index into the grid of the lowest certified threshold
    n_tested: int  # how many hypotheses were tested before the sequence stopped
    handled: int  # calibration inputs handled at the certified threshold
    agree: int  # of those, how many agree with the teacher
    p_value: float | None  # at the certified threshold


def fixed_sequence_test(
    thresholds: np.ndarray,
    scores: np.ndarray,
    agrees: np.ndarray,
    eligible: np.ndarray,
    alpha: float,
    delta: float,
) -> GateResult:
    """Test `thresholds` (descending) in order on calibration data; see the module docstring.

    `scores` are the surrogate confidences on calibration inputs, `agrees` whether its label
    equals the teacher's, `eligible` whether the input passes the threshold-free filters
    (out-of-distribution check, label exclusions).
    """
    if np.any(np.diff(thresholds) > 0):
        raise ValueError("thresholds must be in descending order")
    certified = None
    handled_at = agree_at = 0
    p_at: float | None = None
    tested = 0
    for i, threshold in enumerate(thresholds):
        handled = eligible & (scores >= threshold)
        n = int(handled.sum())
        agree = int(agrees[handled].sum())
        tested += 1
        p = binomial_p_value(n - agree, n, alpha)
        if p > delta:
            break
        certified, handled_at, agree_at, p_at = i, n, agree, p
    return GateResult(certified, tested, handled_at, agree_at, p_at)
