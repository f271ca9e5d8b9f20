"""Anytime-valid monitoring of live agreement, and label-free drift signals.

`AgreementMonitor` tests H0 "agreement >= alpha" on the audit stream (audited calls the
policy would have answered, each 1 if the LLM's answer equals the policy's). It bets against
H0: with a bet c in [0, 1], an agreement multiplies the wealth by 1 - c and a disagreement by
1 + c * alpha / (1 - alpha). Under H0 every factor has expectation <= 1 given the past, so the
wealth is a nonnegative supermartingale and, by Ville's inequality, P(wealth ever reaches
1/delta) <= delta, at every sample size and whatever the stopping rule (Waudby-Smith & Ramdas
2023; Howard et al. 2021). That holds for any bet chosen from past audits only, so the bet is
the Kelly fraction 1 - p/alpha at a shrunk estimate p of recent agreement: zero while the
policy does as certified (the wealth then does not sink, so a later drop is caught as fast as
an early one), growing as recent agreement falls below alpha.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from scipy.stats import binom

RECENT = 50  # audits behind the estimate the next bet is sized from
PRIOR = 10  # pseudo-audits at alpha that shrink the estimate (no bet on a few disagreements)
MAX_BET = 0.5
SUSPICION = 0.05  # log wealth 5% of the way to rejection (a bet against H0 has won) raises the audit rate


class AgreementMonitor:
    """Betting e-process for H0: the share of agreeing audits is at least `alpha`."""

    def __init__(self, alpha: float, delta: float) -> None:
        self.alpha = alpha
        self.delta = delta
        self._log_wealth = 0.0
        self._peak_log_wealth = 0.0  # rejection is the first time the wealth reaches 1/delta, even mid-batch
        self._recent: deque[bool] = deque(maxlen=RECENT)
        self._recent_agree = 0
        self.n = 0
        self.agree = 0

    def bet(self) -> float:
        """The next bet, from past audits only (predictable): Kelly at the shrunk recent agreement."""
        estimate = (self._recent_agree + PRIOR * self.alpha) / (len(self._recent) + PRIOR)
        return min(MAX_BET, max(0.0, 1.0 - estimate / self.alpha))

    def update(self, agrees: Iterable[bool]) -> None:
        up = self.alpha / (1.0 - self.alpha)
        for agreed in agrees:
            c = self.bet()
            self._log_wealth += math.log1p(-c) if agreed else math.log1p(c * up)
            self._peak_log_wealth = max(self._peak_log_wealth, self._log_wealth)
            if len(self._recent) == RECENT:
                self._recent_agree -= self._recent[0]
            self._recent.append(bool(agreed))
            self._recent_agree += bool(agreed)
            self.n += 1
            self.agree += bool(agreed)

    @property
    def wealth(self) -> float:
        return math.exp(self._log_wealth)

    @property
    def rejected(self) -> bool:
        """True once the wealth has reached 1/delta (at any audit so far): live agreement is below alpha."""
        return self._peak_log_wealth >= math.log(1.0 / self.delta)

    @property
    def suspicious(self) -> bool:
        """Betting, and past SUSPICION of the way to rejection on the log scale: worth auditing more.

        Once recent audits agree at alpha again the bet is zero and the wealth stops moving; the boost ends
        then instead of lasting as long as that frozen wealth.
        """
        return self.bet() > 0 and self._log_wealth >= SUSPICION * math.log(1.0 / self.delta)

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
