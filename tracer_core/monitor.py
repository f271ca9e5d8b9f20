"""Anytime-valid monitoring of live agreement, and label-free drift signals.

`AgreementMonitor` tests H0 "agreement >= alpha" on the audit stream (audited calls the
policy would have answered, each 1 if the LLM's answer equals the policy's). It bets against
H0: with a bet fraction c, each agreement multiplies the wealth by 1 - c and each
disagreement by 1 + c * alpha / (1 - alpha). Under H0 every factor has expectation <= 1
given the past, so the wealth is a nonnegative supermartingale and, by Ville's inequality,
P(wealth ever reaches 1/delta) <= delta, at every sample size and whatever the stopping
rule (Waudby-Smith & Ramdas 2023; Howard et al. 2021). Averaging the wealth of several
fixed bet fractions keeps that property and adapts to how far agreement has fallen.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from scipy.stats import binom

BET_FRACTIONS = (0.02, 0.05, 0.1, 0.2, 0.4)
SUSPICION = 0.5  # log wealth at half way to rejection (in log scale) raises the audit rate


class AgreementMonitor:
    """Betting e-process for H0: the share of agreeing audits is at least `alpha`."""

    def __init__(self, alpha: float, delta: float) -> None:
        self.alpha = alpha
        self.delta = delta
        self._log_wealth = [0.0] * len(BET_FRACTIONS)
        self.n = 0
        self.agree = 0

    def update(self, agrees: Iterable[bool]) -> None:
        up = self.alpha / (1.0 - self.alpha)
        for agreed in agrees:
            self.n += 1
            self.agree += bool(agreed)
            for i, c in enumerate(BET_FRACTIONS):
                self._log_wealth[i] += math.log1p(-c) if agreed else math.log1p(c * up)

    @property
    def wealth(self) -> float:
        top = max(self._log_wealth)
        return math.exp(top) * sum(math.exp(w - top) for w in self._log_wealth) / len(self._log_wealth)

    @property
    def rejected(self) -> bool:
        """True once the evidence says live agreement is below alpha (at level delta)."""
        return self.wealth >= 1.0 / self.delta

    @property
    def suspicious(self) -> bool:
        """Half way to rejection on the log scale: worth auditing more."""
        return math.log(max(self.wealth, 1e-300)) >= SUSPICION * math.log(1.0 / self.delta)

    def summary(self) -> dict:
        return {
            "audits": self.n,
            "agreement": round(self.agree / self.n, 4) if self.n else None,
            "wealth": round(self.wealth, 3),
            "reject_at": round(1.0 / self.delta, 3),
        }


EXPECTED_OOD_SHARE = 0.01  # the OOD limit admits all but ~0.5% of validation inputs; allow twice that
DRIFT_LEVEL = 1e-3  # a share this improbable under the calibration period's rate is a signal


@dataclass(frozen=True)
class DriftSignal:
    """A label-free signal: recent traffic defers (or is out of distribution) far more than calibration showed."""

    kind: str  # "out_of_distribution" or "deferral"
    observed: int
    n: int
    expected_share: float
    p_value: float

    def describe(self) -> str:
        return (f"{self.kind} share {self.observed / self.n:.1%} in the last {self.n} calls against "
                f"{self.expected_share:.1%} expected (p = {self.p_value:.1e})")


class DriftWatch:
    """Counts recent routing outcomes and flags a share significantly above what calibration showed."""

    def __init__(self, window: int = 500, level: float = DRIFT_LEVEL) -> None:
        self.window = window
        self.level = level
        self._recent: deque[tuple[bool, bool]] = deque(maxlen=window)  # (handled, out of distribution)

    def observe(self, decisions: Iterable) -> None:
        self._recent.extend((d.handled, d.reason == "out_of_distribution") for d in decisions)

    def reset(self) -> None:
        self._recent.clear()

    def signal(self, *, expected_deferral: float) -> DriftSignal | None:
        """The stronger significant jump (OOD share, deferral share), once the window is full."""
        n = len(self._recent)
        if n < self.window:
            return None
        found = []
        for kind, observed, share in (
            ("out_of_distribution", sum(ood for _, ood in self._recent), EXPECTED_OOD_SHARE),
            ("deferral", sum(not handled for handled, _ in self._recent), expected_deferral),
        ):
            share = min(max(share, 1e-3), 1.0 - 1e-9)
            p = float(binom.sf(observed - 1, n, share))
            if p < self.level:
                found.append(DriftSignal(kind, observed, n, share, p))
        return min(found, key=lambda s: s.p_value) if found else None
