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


def binomial_p_value(errors: int | np.ndarray, n: int | np.ndarray, alpha: float) -> float | np.ndarray:
    """p-value of H0 "agreement < alpha" after `errors` disagreements in `n` handled inputs
    (element-wise on arrays; 1 where nothing was handled)."""
    from scipy.stats import binom

    n = np.asarray(n)
    p = np.where(n > 0, binom.cdf(errors, np.maximum(n, 1), 1.0 - alpha), 1.0)
    return p if p.ndim else float(p)


def agreement_lower_bound(agree: int, n: int, delta: float) -> float:
    """One-sided Clopper-Pearson lower confidence bound (level 1 - delta) on agreement."""
    from scipy.stats import beta

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
    from scipy.stats import binom

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
    thresholds = np.asarray(thresholds, dtype=float)
    # handled and agreeing inputs at every threshold at once: eligible inputs ranked by score, highest first
    ranked = np.argsort(-scores[eligible], kind="stable")
    neg_scores = -scores[eligible][ranked]
    agree_above = np.concatenate([[0], np.cumsum(agrees[eligible][ranked])])
    handled = np.searchsorted(neg_scores, -thresholds, side="right")  # scores >= threshold
    agree = agree_above[handled]
    p = np.asarray(binomial_p_value(handled - agree, handled, alpha))  # one scipy call, not one per threshold
    rejected = p <= delta
    tested = len(thresholds) if rejected.all() else int(np.argmin(rejected)) + 1
    last = tested - 1 if rejected.all() else tested - 2
    if last < 0:
        return GateResult(None, tested, 0, 0, None)
    return GateResult(last, tested, int(handled[last]), int(agree[last]), float(p[last]))
