"""Anytime-valid tests of "an event happens at most at rate q" on a stream of 0/1 outcomes.

H0: given the past, each outcome is an event with probability at most q (q = `bound`, 0 < q < 1).
A bet c in [0, 1) multiplies a wealth W by 1 + c (1 - q) / q after an event and by 1 - c after a
non-event. Given the past, with event probability r <= q, the expected factor is
1 + c (r - q) / q <= 1. So for bets fixed before each outcome is seen (predictable) the wealth
is a nonnegative supermartingale that starts at 1 under H0, and so is any average of such
wealths. By Ville's inequality, P(the wealth ever reaches 1/level) <= level: the test rejects
at the first time it does, at any sample size and however long it runs.

`ExceedanceTest`'s wealth is the average, with weight 1/2 each, of two such processes:

- A mixture of constant bets: the bets of BETS (16 bets, 0.003 to 0.5, log-spaced) with prior
  weights proportional to 1/sqrt(bet). A constant bet c raises the log wealth in expectation
  once the event rate exceeds about q + c (1 - q) / 2, so the mixture's wealth then grows
  exponentially: a small excess that a few hundred outcomes cannot show, thousands do (power
  grows with the outcomes). Its wealth depends only on the counts of outcomes and events.
- A windowed Kelly bettor: the bet is the Kelly fraction (r - q) / (1 - q) at the event share r
  of the last WINDOW outcomes, shrunk toward q by PRIOR pseudo-outcomes at q (0 when r <= q, at
  most MAX_BET). A constant bet loses a little at every outcome while H0 holds, so a long run
  within the bound sinks the mixture and delays the detection of a later jump; this bettor bets
  (almost) nothing while recent outcomes are within the bound, so a late jump is caught about
  as fast as an early one.

Between events the wealth only falls (every factor is 1 - c <= 1), so its first crossing of
1/level happens at an event, which is where the rejection time is read.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable

import numpy as np

BETS = np.geomspace(0.003, 0.5, 16)
LOG_WEIGHTS = np.log(BETS**-0.5 / (BETS**-0.5).sum())
WINDOW = 200  # outcomes behind the Kelly bettor's estimate
PRIOR = 20  # pseudo-outcomes at the bound that shrink it (a few events are no reason to bet)
MAX_BET = 0.5
LOG_HALF = math.log(0.5)


def as_outcomes(values: Iterable[bool] | np.ndarray) -> np.ndarray:
    """A 1-D boolean array of outcomes."""
    return np.asarray(values if isinstance(values, np.ndarray) else list(values), dtype=bool).reshape(-1)


def mixture_log_wealth(n: np.ndarray, events: np.ndarray, bound: float) -> np.ndarray:
    """Log wealth of the constant-bet mixture after `n` outcomes holding `events` events (element-wise)."""
    gain, loss = np.log1p(BETS * (1.0 - bound) / bound), np.log1p(-BETS)
    n, events = np.asarray(n, dtype=float), np.asarray(events, dtype=float)
    terms = LOG_WEIGHTS + events[..., None] * gain + (n - events)[..., None] * loss
    top = terms.max(axis=-1)  # log-sum-exp, shifted by the largest term so that no exp overflows
    return top + np.log(np.exp(terms - top[..., None]).sum(axis=-1))


class KellyBettor:
    """Bets the Kelly fraction at the shrunk event share of the last `window` outcomes (predictable)."""

    def __init__(self, bound: float, window: int = WINDOW, prior: float = PRIOR) -> None:
        self.bound, self.window, self.prior = bound, window, prior
        self._gain = (1.0 - bound) / bound
        self._recent: deque[bool] = deque(maxlen=window)
        self.log_wealth = 0.0
        self.low = 0.0  # the lowest log wealth so far (the start counts)

    def bets(self, outcomes: np.ndarray) -> np.ndarray:
        """The bet placed before each of `outcomes`, each from the outcomes before it only."""
        seen = len(self._recent)
        sequence = np.concatenate([np.fromiter(self._recent, dtype=bool, count=seen), outcomes])
        before = np.concatenate([[0], np.cumsum(sequence)])
        at = seen + np.arange(len(outcomes))
        start = np.maximum(at - self.window, 0)
        share = (before[at] - before[start] + self.prior * self.bound) / (at - start + self.prior)
        return np.clip((share - self.bound) / (1.0 - self.bound), 0.0, MAX_BET)

    def bet(self) -> float:
        """The next bet."""
        return float(self.bets(np.ones(1, dtype=bool))[0])

    def update(self, outcomes: np.ndarray) -> np.ndarray:
        """Bet on each outcome in turn; returns the log wealth after each."""
        if not len(outcomes):
            return np.empty(0)
        c = self.bets(outcomes)
        path = self.log_wealth + np.cumsum(np.where(outcomes, np.log1p(c * self._gain), np.log1p(-c)))
        self.log_wealth = float(path[-1])
        self.low = min(self.low, float(path.min()))
        self._recent.extend(outcomes.tolist())
        return path


class ExceedanceTest:
    """Anytime-valid test of H0 "event rate <= `bound`" at `level` (see the module docstring)."""

    def __init__(self, bound: float, level: float) -> None:
        if not 0.0 < bound < 1.0:
            raise ValueError(f"the bound of an exceedance test must be in (0, 1), got {bound}")
        self.bound, self.level = bound, level
        self._kelly = KellyBettor(bound)
        self.n = 0
        self.events = 0
        self.rejected_at: int | None = None  # outcomes seen when the wealth first reached 1/level

    def update(self, outcomes: Iterable[bool] | np.ndarray) -> None:
        x = as_outcomes(outcomes)
        kelly = self._kelly.update(x)
        at = np.flatnonzero(x)
        if len(at):
            total = LOG_HALF + np.logaddexp(
                mixture_log_wealth(self.n + at + 1, self.events + np.arange(1, len(at) + 1), self.bound), kelly[at])
            crossed = np.flatnonzero(total >= -math.log(self.level))
            if self.rejected_at is None and len(crossed):
                self.rejected_at = self.n + int(at[crossed[0]]) + 1
        self.n += len(x)
        self.events += int(x.sum())

    @property
    def log_wealth(self) -> float:
        return LOG_HALF + float(np.logaddexp(mixture_log_wealth(np.asarray(self.n), np.asarray(self.events), self.bound),
                                             self._kelly.log_wealth))

    @property
    def rejected(self) -> bool:
        """True once the wealth has reached 1/level (at any outcome so far): H0 is rejected."""
        return self.rejected_at is not None
