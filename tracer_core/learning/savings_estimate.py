"""When savings will start: after a refused fit, how many more teacher traces, or which lower alpha, would let a fit
deploy. Estimates from the fit's validation results, never promises.

The prediction is the one the attempt itself uses (`Validation.coverage`: the coverage a gate at a level is predicted
to certify, `tracer_core.learning.attempt`), asked again for a larger store: its calibration window grows at the rate
the split gives new traces (CAL_FRACTION of those that may calibrate, up to CAL_WINDOW), and the surrogate's validation
errors fall as errors ~ traces^-b, with b measured by the fit (`error_decay`: the trial surrogate against one trained
on half its traces); the test is at the level of the version's next attempt, and the schedule's wait for fresh
evidence is a floor. Without a trained model (too few traces to try), it gives the gate's minimum instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import numpy as np

from tracer_core.learning.attempt import Validation, worth_attempting
from tracer_core.learning.split import CAL_FRACTION, CAL_WINDOW

MAX_DECAY = 1.0  # the fastest error decay assumed (errors halve when traces double)
MAX_GROWTH = 16  # traces are projected up to this many times the current count
MIN_ALPHA = 0.80  # the lowest alpha suggested (the frontier's lowest)
ALPHA_STEP = 0.01
BISECTIONS = 8  # refinements of the trace count once a projected size deploys


@dataclass(frozen=True)
class SavingsEstimate:
    """What a refused fit estimates about the first fit that deploys (stored in the certificate as a dict)."""

    alpha: float
    n_traces: int  # teacher traces the refused fit had
    more_traces: int | None  # more teacher traces after which a fit at alpha is predicted to deploy; None: not in reach
    coverage: float | None  # the coverage predicted then
    lower_alpha: float | None  # the highest lower alpha a fit is predicted to deploy at with the traces there are
    lower_alpha_coverage: float | None
    wait: int = 0  # traces the schedule waits for before the next attempt (any alpha)
    basis: str = "validation"  # "validation", or "minimum" (no model yet: the gate's minimum only)

    def to_dict(self) -> dict:
        return asdict(self)

    def text(self) -> str:
        """The estimate in one plain sentence that says it is one."""
        if self.basis == "minimum":
            parts = [f"at least ~{self.more_traces:,} more teacher traces before a fit at alpha {self.alpha:g} can "
                     "be tried"]
            if self.lower_alpha is not None:
                parts.append(f"at alpha {self.lower_alpha:g} a fit could be tried now")
            return "savings estimate: " + "; or ".join(parts) + " (the minimum the gate needs, not a promise)"
        if self.more_traces is not None:
            then = f" at ~{self.coverage:.0%} coverage" if self.coverage else ""
            parts = [f"about {self.more_traces:,} more teacher traces at this rate would let a fit deploy at alpha "
                     f"{self.alpha:g}{then}"]
        else:
            parts = [f"at the surrogate's current agreement, no store up to {MAX_GROWTH}x this size is predicted to "
                     f"deploy at alpha {self.alpha:g} (the surrogate must improve)"]
        if self.lower_alpha is not None:
            when = f"after {self.wait:,} more traces" if self.wait else "now"
            parts.append(f"alpha {self.lower_alpha:g} would deploy {when} at ~{self.lower_alpha_coverage:.0%} coverage")
        return "savings estimate: " + "; or ".join(parts) + " (from validation, not a promise)"


def estimate_savings(
    like: Validation, *, n_traces: int, n_pool: int, n_calibration: int, alpha: float, next_delta: float,
    error_decay: float = 0.0, wait: int = 0, baseline: float = 0.0,
) -> SavingsEstimate:
    """The estimate after a refused fit of `n_traces` (`n_pool` may calibrate, `n_calibration` did), for an attempt at
    `next_delta` (the level of the version's next attempt) that must beat `baseline`, after `wait` fresh traces;
    validation errors fall as traces^-`error_decay`."""
    rate = CAL_FRACTION * n_pool / n_traces if n_traces else 0.0
    decay = min(max(error_decay, 0.0), MAX_DECAY)

    def coverage_with(more: int, at_alpha: float) -> float:
        n_cal = min(n_calibration + round(rate * more), max(CAL_WINDOW, n_calibration))
        grown = projected(like, ((n_traces + more) / n_traces) ** -decay) if n_traces else like
        return grown.coverage(n_cal, at_alpha, next_delta)

    more, coverage = _fewest_more(lambda extra: coverage_with(extra, alpha), n_traces, wait, baseline)
    lower = _highest_alpha(lambda a: coverage_with(wait, a), alpha, baseline)
    return SavingsEstimate(alpha, n_traces, more, coverage, *lower, wait=wait)


def projected(like: Validation, factor: float) -> Validation:
    """`like` with `factor` of its disagreements left (the others turned to agreements), spread evenly over the
    ranking by confidence, as if a surrogate trained on more traces made fewer errors at every confidence."""
    order = np.argsort(-like.scores, kind="stable")
    wrong = order[~like.agrees[order]]
    fixed = round((1.0 - min(max(factor, 0.0), 1.0)) * len(wrong))
    if not fixed:
        return like
    agrees = like.agrees.copy()
    agrees[wrong[np.unique(np.linspace(0, len(wrong) - 1, fixed).round().astype(int))]] = True
    return replace(like, agrees=agrees)


def minimum_estimate(
    *, n_traces: int, n_pool: int, n_calibration: int, alpha: float, needed: Callable[[float], int]
) -> SavingsEstimate | None:
    """The estimate before any model is trained: traces until the calibration window holds the gate's minimum
    `needed(alpha)` calibration traces, and the highest lower alpha whose minimum it already holds (None: nothing
    that may calibrate arrives, so no count of traces would do)."""
    rate = CAL_FRACTION * n_pool / n_traces if n_traces else 0.0
    if rate <= 0 or needed(alpha) > CAL_WINDOW:
        return None
    more = max(math.ceil((needed(alpha) - n_calibration) / rate), 1)
    lower = next((a for a in _lower_alphas(alpha) if needed(a) <= n_calibration), None)
    return SavingsEstimate(alpha, n_traces, more, None, lower, None, basis="minimum")


def _fewest_more(coverage: Callable[[int], float], n_traces: int, wait: int, baseline: float) -> tuple[int | None, float | None]:
    """The fewest more traces (at least `wait`) whose predicted coverage is worth an attempt, and that coverage."""
    low, high = wait, None
    for growth in (0, 0.25, 0.5, 1, 2, 3, 5, 7, 11, MAX_GROWTH - 1):
        extra = max(wait, math.ceil(growth * n_traces))
        if worth_attempting(coverage(extra), baseline):
            high = extra
            break
        low = extra
    if high is None:
        return None, None
    for _ in range(BISECTIONS):
        if high - low <= max(1, high // 50):
            break
        middle = (low + high) // 2
        if worth_attempting(coverage(middle), baseline):
            high = middle
        else:
            low = middle
    return max(high, 1), round(coverage(high), 4)


def _highest_alpha(coverage: Callable[[float], float], alpha: float, baseline: float) -> tuple[float | None, float | None]:
    """The highest alpha below `alpha` (down to MIN_ALPHA) whose predicted coverage is worth an attempt."""
    for lower in _lower_alphas(alpha):
        predicted = coverage(lower)
        if worth_attempting(predicted, baseline):
            return lower, round(predicted, 4)
    return None, None


def _lower_alphas(alpha: float) -> list[float]:
    steps = math.floor(round((alpha - MIN_ALPHA) / ALPHA_STEP, 6))
    return [round(alpha - ALPHA_STEP * i, 3) for i in range(1, steps + 1)]
