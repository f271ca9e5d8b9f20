"""Which calls are audited: a draw independent of the input, at a rate raised while something looks wrong.

The rate is raised while the monitor of the policy version in force is suspicious, for BOOST_CALLS
routed calls after a label-free signal, and for BOOST_CALLS routed calls after a monitor that was
suspicious, and whose e-process stood above its start (wealth > 1: its audits, all of them, lean
toward rejection), gives way to a fresh one (a refit trained on the same period, or a resume): the
new monitor starts from no evidence, and the boost only costs audits. A short-window suspicion
alone comes and goes on steady traffic near alpha; carried over at every deployment, it cost a
stable CLINC150 replay with frequent deployments 244 audits in 1,000 queries. After a relabel trigger
(`tracer_core.serving.relabel`: the LLM now answers differently) every call is audited for
BOOST_CALLS routed calls, so that the monitor decides on a batch of current audits before the
surrogate answers much on.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Sequence

from tracer_core.decision import Decision, Reason
from tracer_core.learning.certificate import Certificate
from tracer_core.serving.monitor import AgreementMonitor, LabelFreeWatch
from tracer_core.serving.relabel import RelabelWatch

log = logging.getLogger("tracer")

AUDIT_BOOST = 10.0  # audit rate multiplier while the monitor or a drift signal is worried
MAX_BOOSTED_RATE = 0.5
BOOST_CALLS = 1_000  # routed calls a label-free signal, a relabel trigger or a suspicious monitor replaced boosts
RELABEL_RATE = 1.0  # the audit rate after a relabel trigger


class AuditSampler:
    """Draws audits at `rate` (boosted while the monitor is suspicious or a signal is recent)."""

    def __init__(self, rate: float, seed: str, name: str) -> None:
        self.base_rate = rate
        self.name = name
        self._random = random.Random(seed)
        self._label_free: LabelFreeWatch | None = None
        self._monitor: AgreementMonitor | None = None
        self._relabel: RelabelWatch | None = None
        self._relabel_lock = threading.Lock()  # answers are recorded from the caller's threads
        self._boost_left = 0
        self._relabel_left = 0  # routed calls left at RELABEL_RATE
        self.signals = 0  # label-free signals so far
        self.relabels = 0  # relabel triggers so far

    def reseed(self, seed: str) -> None:
        """Draw from `seed` from now on. The default seed includes the process id, so that two processes do not
        audit the same call positions; a benchmark that compares runs side by side reseeds them alike."""
        self._random.seed(seed)

    def rate(self, monitor: AgreementMonitor) -> float:
        if self._relabel_left > 0 and self.base_rate > 0:
            return RELABEL_RATE
        worried = self._boost_left > 0 or monitor.suspicious
        return min(MAX_BOOSTED_RATE, self.base_rate * AUDIT_BOOST) if worried and self.base_rate > 0 else self.base_rate

    def draw(self, n: int, monitor: AgreementMonitor) -> list[bool]:
        """Which of the next `n` calls are audited (drawn before routing, whatever the inputs)."""
        if monitor is not self._monitor:
            old = self._monitor
            if old is not None and old.suspicious and old.wealth > 1.0:
                self._boost_left = max(self._boost_left, BOOST_CALLS)
            self._monitor = monitor
        rate = self.rate(monitor)
        return [self._random.random() < rate for _ in range(n)]

    def watch(self, decisions: Sequence[Decision], cert: Certificate) -> None:
        """Label-free signals on the decisions of the policy in force (each policy version has its own, and its own
        relabel watch)."""
        self._boost_left = max(0, self._boost_left - len(decisions))
        with self._relabel_lock:  # `answered` sets both from a recording thread: a trigger is never lost to a count
            self._relabel_left = max(0, self._relabel_left - len(decisions))
            if self._relabel is None or self._relabel.policy_version != cert.version:
                self._relabel = RelabelWatch(cert)
        if self._label_free is None or self._label_free.policy_version != cert.version:
            self._label_free = LabelFreeWatch(cert)
        signal = self._label_free.observe(decisions)
        if signal is not None:
            if self._boost_left == 0:
                log.warning("tracer task %r: %s; auditing more for a while", self.name, signal.describe())
            self._boost_left = BOOST_CALLS
            self.signals += 1

    def answered(self, decision: Decision, label: str) -> None:
        """The LLM's answer to a deferred call of the policy in force: the relabel trigger's evidence."""
        with self._relabel_lock:
            relabel = self._relabel
            if relabel is None or not relabel.observe(decision, label):
                return
            self.relabels += 1
            quiet, self._relabel_left = self._relabel_left > 0, BOOST_CALLS
        if not quiet:
            log.warning("tracer task %r: the LLM answers calls deferred by policy v%s with labels it found implausible "
                        "more often than the %s calibration allows; auditing every call for the next %s",
                        self.name, relabel.policy_version, f"{relabel.limit:.1%}", f"{BOOST_CALLS:,}")


def as_audit(decision: Decision) -> Decision:
    """The audited form of a decision: the LLM answers; the label is what the policy would have answered."""
    return Decision(
        label=decision.label if decision.handled else None, handled=False, score=decision.score,
        reason=Reason.AUDIT, policy_version=decision.policy_version,
    )
