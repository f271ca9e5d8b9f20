"""When savings will start: after a refused fit, how many more teacher traces, or which lower alpha, would let a fit
deploy. Estimates from the fit's validation results, never promises.

The estimate follows the version's schedule as its background refits will meet it. Every REFIT_EVERY traces a refit
predicts what a gate would certify (`Validation.coverage`, the prediction the attempt itself uses) for the larger
store: its calibration window grows at the rate the split gives new traces (CAL_FRACTION of those that may calibrate,
up to CAL_WINDOW), and the surrogate's validation errors fall as errors ~ traces^-b, with b measured by the fit
(`error_decay`: the trial surrogate against one trained on half its traces), measured on a validation that grows
with the store (`enlarged`). Where that prediction is worth an
attempt, the attempt tests at the level of its index (`spending.attempt_delta`) and certifies with the probability
that its grid's first step passes (`Validation.certify_probability`); when it certifies nothing, the next attempt is
one index stricter and waits for FRESH_SHARE fresh traces per older one (`attempt.fresh_needed`). The estimate is the
refit by which a fit has deployed with probability CONFIDENCE, not the first that might; a lower alpha is suggested
only when the version's next attempt certifies at it with probability LOWER_ALPHA_CONFIDENCE. Without a trained model
(too few traces to try), it gives the gate's minimum instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import numpy as np

from tracer_core.learning.attempt import FRESH_SHARE, Validation, worth_attempting
from tracer_core.learning.spending import attempt_delta
from tracer_core.learning.split import CAL_FRACTION, CAL_WINDOW

MAX_DECAY = 1.0  # the fastest error decay assumed (errors halve when traces double)
MAX_GROWTH = 16  # traces are projected up to this many times the current count
MIN_ALPHA = 0.80  # the lowest alpha suggested (the frontier's lowest)
ALPHA_STEP = 0.01
CONFIDENCE = 0.9  # the estimate is where a fit has deployed with this probability, not where one might: at 0.8 it
# was early by more than 20% in 8 of 29 estimates, at 0.9 in 3 (bench savings)
LOWER_ALPHA_CONFIDENCE = 0.95  # a lower alpha is named when the next attempt certifies at it with this probability:
# one attempt, and the prediction over-promises (at 0.9, 11 of 14 suggestions certified; bench savings)
CHECKED = ("in checks on Banking77 and CLINC150 a fit deployed by 1.2x this count in 26 of 29 cases, often well "
           "before it")  # bench savings
REFIT_EVERY = 200  # traces between background refits (the Tracer's default)
MAX_REFITS = 200  # refits followed at most: beyond, the step grows with the store


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
            return (f"savings estimate: at least ~{self.more_traces:,} more teacher traces before a fit at alpha "
                    f"{self.alpha:g} can be tried (the minimum the gate needs, not a promise)")
        if self.more_traces is not None:
            then = f" (~{self.coverage:.0%} coverage then)" if self.coverage else ""
            parts = [f"about {self.more_traces:,} more teacher traces until a fit likely deploys at alpha "
                     f"{self.alpha:g}{then}"]
        else:
            parts = [f"at the surrogate's current agreement, no store up to {MAX_GROWTH}x this size is likely to "
                     f"deploy at alpha {self.alpha:g} (the surrogate must improve)"]
        if self.lower_alpha is not None:
            when = f"after {self.wait:,} more traces" if self.wait else "now"
            parts.append(f"alpha {self.lower_alpha:g} would likely deploy {when} at ~{self.lower_alpha_coverage:.0%} "
                         "coverage")
        return "savings estimate: " + "; or ".join(parts) + f" (an estimate from validation, not a promise; {CHECKED})"


def estimate_savings(
    like: Validation, *, n_traces: int, n_pool: int, n_calibration: int, alpha: float, delta: float,
    next_attempt: int, error_decay: float = 0.0, wait: int = 0, baseline: float = 0.0, refit_every: int = REFIT_EVERY,
    validation_room: float = math.inf,
) -> SavingsEstimate:
    """The estimate after a refused fit of `n_traces` (`n_pool` may calibrate, `n_calibration` did) of a version whose
    lifetime level is `delta` and whose next attempt is `next_attempt`, after `wait` fresh traces; an attempt must beat
    `baseline`; refits come every `refit_every` traces; validation errors fall as traces^-`error_decay`, and the
    validation grows with the traces up to `validation_room` times its size (the training cap over what it uses now)."""
    rate = CAL_FRACTION * n_pool / n_traces if n_traces else 0.0
    decay = min(max(error_decay, 0.0), MAX_DECAY)

    def grown(more: int) -> tuple[Validation, int]:
        """The validation projected to `more` traces, and the calibration window then."""
        n_cal = min(n_calibration + round(rate * more), max(CAL_WINDOW, n_calibration))
        growth = (n_traces + more) / n_traces if n_traces else 1.0
        return enlarged(projected(like, growth**-decay), min(growth, validation_room)), n_cal

    step = max(refit_every, (MAX_GROWTH - 1) * n_traces // MAX_REFITS, 1)
    more, coverage = _likely_deploy(grown, n_traces, alpha, delta, next_attempt, wait, baseline, step)
    lower = _highest_likely_alpha(*grown(wait), alpha, attempt_delta(delta, next_attempt), baseline)
    return SavingsEstimate(alpha, n_traces, more, coverage, *lower, wait=wait)


def _likely_deploy(
    grown: Callable[[int], tuple[Validation, int]], n_traces: int, alpha: float, delta: float, attempt: int,
    wait: int, baseline: float, step: int,
) -> tuple[int | None, float | None]:
    """Follow the schedule refit by refit (every `step` traces, from `wait` on): the fewest more traces by which a
    fit has deployed with probability CONFIDENCE, and the coverage predicted there; (None, None) beyond MAX_GROWTH."""
    more = step * max(math.ceil(wait / step), 1)
    refused = 1.0  # the probability that every attempt so far certified nothing
    while more <= (MAX_GROWTH - 1) * n_traces:
        like, n_cal = grown(more)
        level = attempt_delta(delta, attempt)
        predicted = like.coverage(n_cal, alpha, level)
        if not worth_attempting(predicted, baseline):
            more += step
            continue
        refused *= 1.0 - like.certify_probability(n_cal, alpha, level)
        if refused <= 1.0 - CONFIDENCE:
            return more, round(predicted, 4)
        attempt += 1  # refused: the next attempt tests stricter, after fresh evidence
        fresh = math.ceil((1.0 + FRESH_SHARE) * (n_traces + more)) - n_traces
        more = step * math.ceil(fresh / step)
    return None, None


def _highest_likely_alpha(
    like: Validation, n_calibration: int, alpha: float, level: float, baseline: float
) -> tuple[float | None, float | None]:
    """The highest alpha below `alpha` (down to MIN_ALPHA) at which an attempt at `level` is worth making and
    certifies with probability LOWER_ALPHA_CONFIDENCE, and its predicted coverage."""
    for lower in _lower_alphas(alpha):
        predicted = like.coverage(n_calibration, lower, level)
        likely = like.certify_probability(n_calibration, lower, level) >= LOWER_ALPHA_CONFIDENCE
        if worth_attempting(predicted, baseline) and likely:
            return lower, round(predicted, 4)
    return None, None


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


def enlarged(like: Validation, factor: float) -> Validation:
    """`like` as a validation `factor` times as large with the same agreement at every confidence (each row repeated
    about `factor` times), as the fit of a larger store would measure it."""
    if factor <= 1.0 or not len(like.scores):
        return like
    rows = np.floor(np.arange(round(factor * len(like.scores))) / factor).astype(int)
    return replace(like, scores=like.scores[rows], agrees=like.agrees[rows])


def minimum_estimate(
    *, n_traces: int, n_pool: int, n_calibration: int, alpha: float, needed: Callable[[float], int]
) -> SavingsEstimate | None:
    """The estimate before any model is trained: traces until the calibration window holds the gate's minimum
    `needed(alpha)` calibration traces (None: nothing that may calibrate arrives, so no count of traces would do).
    No lower alpha: one whose minimum the window holds is far from likely to deploy (bench savings: a fit at it was
    not even attempted)."""
    rate = CAL_FRACTION * n_pool / n_traces if n_traces else 0.0
    if rate <= 0 or needed(alpha) > CAL_WINDOW:
        return None
    more = max(math.ceil((needed(alpha) - n_calibration) / rate), 1)
    return SavingsEstimate(alpha, n_traces, more, None, None, None, basis="minimum")


def _lower_alphas(alpha: float) -> list[float]:
    steps = math.floor(round((alpha - MIN_ALPHA) / ALPHA_STEP, 6))
    return [round(alpha - ALPHA_STEP * i, 3) for i in range(1, steps + 1)]
