"""A label-aware trigger of the audit boost: the LLM answers deferred calls with labels the policy found implausible.

When the LLM starts answering some inputs with another label (a prompt or model change), the
audits show it only slowly: about one call in twenty is audited, and most of those agree. The
calls the policy deferred for low confidence reach the LLM anyway, several times as many, and
their answers show such a change early: the new label is often one the surrogate gave the input
almost no probability (below `PLAUSIBLE`), which calibration shows to be rare.

For each policy version, `RelabelWatch` tests H0 "the share of its low-confidence deferrals whose
LLM answer is implausible is at most the calibration share's upper bound (one-sided Clopper-Pearson
at BASELINE_CONFIDENCE) + RELABEL_MARGIN" with a Kelly bettor on the last RELABEL_WINDOW answers (a
nonnegative supermartingale under H0, so it reaches 1/RELABEL_LEVEL with probability at most
RELABEL_LEVEL), and starts afresh after each rejection. A rejection only raises the audit rate
(`AuditSampler`), so that the monitor's audits decide sooner; it never suspends and never enters a
certificate. A relabelling between labels the surrogate already confuses is not implausible and is
left to the monitor alone. Each process watches the answers it records itself.
"""

from __future__ import annotations

import math

import numpy as np

from tracer_core.decision import Decision, Reason
from tracer_core.learning.certificate import Certificate
from tracer_core.serving.eprocess import KellyBettor
from tracer_core.serving.monitor import beta_quantile

RELABEL_LEVEL = 0.05  # P(a false trigger) per test while the share is within its bound; a trigger costs only audits
RELABEL_MARGIN = 0.02  # a share this far above the calibration bound is a change worth auditing
BASELINE_CONFIDENCE = 0.8  # of the calibration share's upper bound: a trigger only costs audits, so a loose one
MIN_BASELINE = 50  # low-confidence calibration deferrals needed for a baseline; fewer: no test
RELABEL_WINDOW = 50  # answers behind the bet: a relabelling shows within a few dozen deferrals
RELABEL_PRIOR = 10


class RelabelWatch:
    """The implausible-answer test of one policy version, on the LLM's answers to its low-confidence deferrals."""

    def __init__(self, cert: Certificate) -> None:
        self.policy_version = cert.version
        self.limit = relabel_limit(cert)
        self._test = self._fresh()

    def _fresh(self) -> KellyBettor | None:
        return KellyBettor(self.limit, RELABEL_WINDOW, RELABEL_PRIOR) if self.limit is not None else None

    def observe(self, decision: Decision, label: str) -> bool:
        """Feed one LLM answer; True when the test rejects (then it starts afresh)."""
        test = self._test
        if (test is None or decision.reason != Reason.LOW_CONFIDENCE or not decision.plausible
                or decision.policy_version != self.policy_version):
            return False
        test.update(np.array([label not in decision.plausible]))
        if test.log_wealth < -math.log(RELABEL_LEVEL):
            return False
        self._test = self._fresh()
        return True


def relabel_limit(cert: Certificate) -> float | None:
    """The share H0 allows: the calibration share's one-sided upper bound + RELABEL_MARGIN (None: no baseline)."""
    if len(cert.deferred_implausible) != 2:
        return None
    k, n = (int(v) for v in cert.deferred_implausible)
    if n < MIN_BASELINE or not 0 <= k < n:
        return None
    limit = beta_quantile(k + 1, n - k, BASELINE_CONFIDENCE) + RELABEL_MARGIN
    return limit if limit < 1.0 else None
