"""Delta spent across the certification attempts of a task version, so that its whole life keeps one delta.

An *attempt* is a fit whose gate reads calibration labels. Attempt j of a task version (every
earlier attempt counts: background refits, explicit and CLI fits, resumes, at any alpha) tests
at delta_j = delta * 6 / (pi^2 j^2). The delta_j sum to at most delta (sum of 1/j^2 = pi^2/6), so
by the union bound the probability that any attempt of the version deploys a false certificate
is at most delta (docs/lifetime-guarantee.md).

A ledger hands out attempt indices: `MemoryLedger` for one process (a standalone `fit_policy`,
the benchmarks), `StoreLedger` for a task version in a trace store, where the index is reserved
by a row written before the gate runs, so two processes never test at the same index.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from tracer_core.storage.store import TraceStore

SPENDING_SCALE = 6.0 / math.pi**2  # 1 / sum of 1/j^2


def attempt_delta(delta: float, attempt: int) -> float:
    """The level attempt `attempt` (1-based) of a task version tests at."""
    if attempt < 1:
        raise ValueError(f"attempts are numbered from 1, got {attempt}")
    return delta * SPENDING_SCALE / attempt**2


@dataclass(frozen=True)
class Reservation:
    """An attempt index taken for good: the gate tests at `delta_spent`."""

    attempt: int
    delta_spent: float
    delta_spent_total: float  # every attempt of the version up to and including this one


@dataclass(frozen=True)
class Attempt:
    """What the schedule needs to know of a version's latest attempt."""

    attempt: int
    n_calibration: int  # calibration traces its gate read
    last_trace_id: int  # the newest trace of the evidence it was fitted on
    certified: bool | None  # its gate certified a policy that replaced the one in force (False: it did not);
    # None: its outcome was never recorded (the fit stopped): counted as refused


class Ledger(Protocol):
    """Where the attempts of one task version are counted."""

    def next_attempt(self) -> int:
        """The index the next reservation will probably get (a read; reserves nothing)."""
        ...

    def latest(self) -> Attempt | None:
        """The version's latest attempt, if any."""
        ...

    def reserve(self, alpha: float, delta: float, n_calibration: int, last_trace_id: int) -> Reservation:
        """Take the next index for good, before any calibration label is read (the fit's evidence: `n_calibration`
        calibration traces, the newest trace `last_trace_id`)."""
        ...

    def settle(self, attempt: int, certified: bool) -> None:
        """Record whether attempt `attempt`'s gate certified a threshold."""
        ...


@dataclass
class MemoryLedger:
    """The attempts of one task version within this process (a fresh one: the version's first attempt)."""

    attempts: list[Attempt] = field(default_factory=list)
    spent: list[float] = field(default_factory=list)

    def next_attempt(self) -> int:
        return len(self.spent) + 1

    def latest(self) -> Attempt | None:
        return self.attempts[-1] if self.attempts else None

    def reserve(self, alpha: float, delta: float, n_calibration: int, last_trace_id: int) -> Reservation:
        attempt = len(self.spent) + 1
        self.spent.append(attempt_delta(delta, attempt))
        self.attempts.append(Attempt(attempt, n_calibration, last_trace_id, None))
        return Reservation(attempt, self.spent[-1], math.fsum(self.spent))

    def settle(self, attempt: int, certified: bool) -> None:
        self.attempts[attempt - 1] = replace(self.attempts[attempt - 1], certified=certified)


@dataclass(frozen=True)
class StoreLedger:
    """The attempts of a task version in a trace store, shared by every process using it."""

    store: TraceStore
    task: str
    fingerprint: str

    def next_attempt(self) -> int:
        return self.store.next_attempt(self.task, self.fingerprint)

    def latest(self) -> Attempt | None:
        row = self.store.latest_attempt(self.task, self.fingerprint)
        return Attempt(**row) if row else None

    def reserve(self, alpha: float, delta: float, n_calibration: int, last_trace_id: int) -> Reservation:
        attempt, spent, total = self.store.reserve_attempt(
            self.task, self.fingerprint, alpha=alpha, delta=delta, spend=lambda j: attempt_delta(delta, j),
            n_calibration=n_calibration, last_trace_id=last_trace_id,
        )
        return Reservation(attempt, spent, total)

    def settle(self, attempt: int, certified: bool) -> None:
        self.store.settle_attempt(self.task, self.fingerprint, attempt, certified)

