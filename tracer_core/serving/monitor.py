"""Anytime-valid monitoring of a policy version: live agreement on audits, and label-free signals.

`AgreementMonitor` tests H0 "agreement >= alpha" on the audit stream of one policy version
(audited calls the policy would have answered, each an agreement if the LLM's answer equals the
policy's). A disagreement is the event of an `ExceedanceTest` with bound 1 - alpha: under H0
its wealth is a nonnegative supermartingale, so by Ville's inequality P(it ever reaches 1/delta)
<= delta, at every sample size and whatever the stopping rule (Waudby-Smith & Ramdas 2023;
Howard et al. 2021); the policy is suspended the first time it does. The audit rate may depend
on past audits (the boost below): an audit is drawn before routing and independently of the
input, so whatever the rate, an audited call is a draw of current traffic and the argument holds.

`suspicious` raises the audit rate. It is true while a second Kelly bettor on a short window
(ALARM_WINDOW audits) is betting and has won SUSPICION of the way to rejection (on the log scale)
since its lowest point. Its bet is zero whenever the recent audits' shrunk agreement is at least
alpha, which happens again and again on traffic at alpha or better, so the boost cannot stay
on forever there.

Label-free signals (`LabelFreeWatch`) test, for each policy version, H0 "the share of its routed
calls that are deferred (or out of distribution) is at most the expected share + the sampling
error of that expectation + MATERIAL", each by an `ExceedanceTest` at SIGNAL_LEVEL:
- deferral: expected 1 - the certified coverage, measured on n_calibration traces at a threshold
  chosen on them. The deferred inputs of the thresholds are nested, so by the one-sided DKW
  inequality (Massart 1990) the probability that the true share exceeds the calibration share by
  more than sqrt(log(1/SIGNAL_LEVEL) / (2 n)) at any threshold at all (the chosen one included)
  is at most SIGNAL_LEVEL.
- out of distribution: the limit is the OOD_QUANTILE quantile of the distances of n_validation
  validation inputs, so the true share beyond it exceeds the one-sided Clopper-Pearson bound on
  that 0.5% tail with probability <= SIGNAL_LEVEL; EXPECTED_OOD_SHARE allows twice the tail
  (the served detector is refit on train + validation, so this part is an allowance, not a bound).
So P(any label-free signal on a policy version whose shares stay within expectation + MATERIAL)
<= 2 x (SIGNAL_LEVEL + SIGNAL_LEVEL) = LABEL_FREE_LEVEL over the version's whole life.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from tracer_core.decision import Decision, Reason
from tracer_core.learning.certificate import Certificate
from tracer_core.learning.fit import OOD_QUANTILE
from tracer_core.serving.eprocess import ExceedanceTest, KellyBettor, as_outcomes

ALARM_WINDOW = 50  # audits behind the boost's bet
ALARM_PRIOR = 10
SUSPICION = 0.05  # the boost's bettor has won 5% of the way to rejection on the log scale since its lowest point


class AgreementMonitor:
    """E-process for H0: the share of agreeing audits of one policy version is at least `alpha`."""

    def __init__(self, alpha: float, delta: float, policy_version: int | None = None) -> None:
        self.alpha = alpha
        self.delta = delta
        self.policy_version = policy_version
        self._test = ExceedanceTest(1.0 - alpha, delta)
        self._alarm = KellyBettor(1.0 - alpha, ALARM_WINDOW, ALARM_PRIOR)

    def update(self, agrees: Iterable[bool]) -> None:
        disagrees = ~as_outcomes(agrees)
        self._test.update(disagrees)
        self._alarm.update(disagrees)

    @property
    def n(self) -> int:
        return self._test.n

    @property
    def agree(self) -> int:
        return self._test.n - self._test.events

    @property
    def wealth(self) -> float:
        return math.exp(self._test.log_wealth)

    @property
    def rejected(self) -> bool:
        """True once the wealth has reached 1/delta (at any audit so far): live agreement is below alpha."""
        return self._test.rejected

    @property
    def rejected_at(self) -> int | None:
        """The audit at which the wealth first reached 1/delta."""
        return self._test.rejected_at

    @property
    def suspicious(self) -> bool:
        """The short-window bettor is betting and has won SUSPICION of the way to rejection since its low: audit more."""
        alarm = self._alarm
        return alarm.bet() > 0 and alarm.log_wealth - alarm.low >= SUSPICION * math.log(1.0 / self.delta)

    def summary(self) -> dict:
        return {
            "policy_version": self.policy_version,
            "audits": self.n,
            "agreement": round(self.agree / self.n, 4) if self.n else None,
            "wealth": round(self.wealth, 3),
            "reject_at": round(1.0 / self.delta, 3),
        }


LABEL_FREE_LEVEL = 0.01  # P(any label-free signal over a policy version's life while its shares are as expected)
SIGNAL_LEVEL = LABEL_FREE_LEVEL / 4  # two signals, each with a bound on its expectation and an e-process
MATERIAL = 0.02  # a share this far above its (bounded) expectation is worth auditing more
EXPECTED_OOD_SHARE = 2 * (1 - OOD_QUANTILE)  # the OOD limit leaves out 0.5% of validation inputs; allow twice that
DEFERRAL, OOD = "deferral", "out_of_distribution"


@dataclass(frozen=True)
class ShareBound:
    """H0 of a label-free signal: the share is at most `expected` + `error` (its sampling error on `n` traces) + MATERIAL."""

    kind: str  # DEFERRAL or OOD
    expected: float
    error: float
    n: int

    @property
    def limit(self) -> float:
        return self.expected + self.error + MATERIAL

    def describe(self) -> str:
        return (f"at most {self.limit:.1%} allowed ({self.expected:.1%} expected + {self.error:.1%} sampling error on "
                f"{self.n:,} traces + {MATERIAL:.0%} margin)")


def deferral_bound(cert: Certificate) -> ShareBound:
    """1 - the certified coverage, + the one-sided DKW error at SIGNAL_LEVEL on n_calibration traces."""
    n = cert.n_calibration
    error = math.sqrt(math.log(1 / SIGNAL_LEVEL) / (2 * n)) if n > 0 else math.inf
    return ShareBound(DEFERRAL, 1.0 - cert.coverage, error, n)


def ood_bound(cert: Certificate) -> ShareBound:
    """EXPECTED_OOD_SHARE, + how far the validation tail's true share may exceed its 0.5% (Clopper-Pearson at SIGNAL_LEVEL)."""
    n = cert.n_validation
    if n <= 0:
        return ShareBound(OOD, EXPECTED_OOD_SHARE, math.inf, n)
    beyond = n - 1 - math.floor(OOD_QUANTILE * (n - 1))  # validation inputs beyond the interpolated quantile
    error = beta_quantile(beyond + 1, n - beyond, 1 - SIGNAL_LEVEL) - (1 - OOD_QUANTILE)
    return ShareBound(OOD, EXPECTED_OOD_SHARE, error, n)


def beta_quantile(a: int, b: int, q: float) -> float:
    """The q-quantile of Beta(a, b) for integers a, b >= 1, without SciPy (whose import would make `tracer status`
    slow): Beta(a, b) <= x exactly when Binomial(a + b - 1, x) has at least a successes, so bisect on that tail."""
    n = a + b - 1

    def at_most(x: float) -> float:  # P(Binomial(n, x) <= a - 1), summed in log space
        logs = [math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1) + j * math.log(x)
                + (n - j) * math.log1p(-x) for j in range(a)]
        top = max(logs)
        return math.exp(top) * sum(math.exp(v - top) for v in logs)

    low, high = 0.0, 1.0
    for _ in range(60):  # 2^-60: far below any share tracer shows
        middle = (low + high) / 2
        low, high = (middle, high) if 1.0 - at_most(middle) < q else (low, middle)
    return (low + high) / 2


@dataclass(frozen=True)
class DriftSignal:
    """A label-free signal: a policy version's routed calls defer (or are out of distribution) beyond its bound."""

    bound: ShareBound
    observed: int
    n: int
    at: int  # calls into the test when its evidence reached 1/SIGNAL_LEVEL
    policy_version: int | None

    @property
    def kind(self) -> str:
        return self.bound.kind

    def describe(self) -> str:
        return (f"{self.kind} share {self.observed / self.n:.1%} over {self.n:,} calls of policy v{self.policy_version}, "
                f"{self.bound.describe()}: the evidence against that bound reached {1 / SIGNAL_LEVEL:,.0f} after {self.at:,} calls (an anytime test at "
                f"level {SIGNAL_LEVEL:.2%}; false alarms <= {LABEL_FREE_LEVEL:.0%} over a policy version's life)")


class LabelFreeWatch:
    """The label-free signals of one policy version, on the decisions of its routed calls."""

    def __init__(self, cert: Certificate) -> None:
        self.policy_version = cert.version
        self._bounds = [b for b in (deferral_bound(cert), ood_bound(cert)) if b.limit < 1.0]  # else nothing to test
        self._tests = self._fresh()

    def _fresh(self) -> list[ExceedanceTest]:
        return [ExceedanceTest(b.limit, SIGNAL_LEVEL) for b in self._bounds]

    def observe(self, decisions: Sequence[Decision]) -> DriftSignal | None:
        """Feed the policy's decisions (before audits are drawn); a signal when a share's test rejects."""
        deferred = np.fromiter((not d.handled for d in decisions), dtype=bool, count=len(decisions))
        ood = np.fromiter((d.reason == Reason.OUT_OF_DISTRIBUTION for d in decisions), dtype=bool, count=len(decisions))
        return self.observe_shares(deferred, ood)

    def observe_shares(self, deferred: np.ndarray, ood: np.ndarray) -> DriftSignal | None:
        """`observe` on outcome arrays. After a signal both tests start afresh (a lasting shift signals again)."""
        outcomes = {DEFERRAL: deferred, OOD: ood}
        for bound, test in zip(self._bounds, self._tests):
            test.update(outcomes[bound.kind])
        fired = [(bound, test) for bound, test in zip(self._bounds, self._tests) if test.rejected]
        if not fired:
            return None
        bound, test = fired[0]
        self._tests = self._fresh()
        return DriftSignal(bound, test.events, test.n, test.rejected_at or test.n, self.policy_version)
