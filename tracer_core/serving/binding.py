"""One alpha and delta per task version: which callers a certificate answers, and the level a fit keeps.

A certificate at (alpha, delta) promises agreement >= alpha with risk delta. Its policy answers a
caller that asks for no more (the caller's alpha <= the certificate's, its delta >= the
certificate's); a stricter caller defers (`not_certified_at_alpha`) until a fit at its level
deploys. The level of a task version is that of its latest certificate, deployed or refused:
`tracer fit` and `tracer resume` keep it unless another one is asked for explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass

from tracer_core.learning.certificate import Certificate
from tracer_core.storage.store import TraceStore

DEFAULT_ALPHA = 0.95
DEFAULT_DELTA = 0.05
SLACK = 1e-9  # levels are compared after a JSON round trip and CLI parsing


@dataclass(frozen=True)
class Level:
    """A required agreement `alpha` and the allowed risk `delta`."""

    alpha: float
    delta: float

    def covers(self, alpha: float, delta: float) -> bool:
        """True when a caller at (alpha, delta) asks for no more than this level."""
        return alpha <= self.alpha + SLACK and delta >= self.delta - SLACK

    def __str__(self) -> str:
        return f"alpha {number(self.alpha)}, delta {number(self.delta)}"


DEFAULT = Level(DEFAULT_ALPHA, DEFAULT_DELTA)


def number(value: float) -> str:
    """0.9 as "0.90", 0.999 as "0.999", 0.001 as "0.001"."""
    return f"{value:.2f}" if round(value, 2) == value else f"{value:g}"


def certified_level(cert: Certificate) -> Level:
    return Level(float(cert.alpha), float(cert.delta))


def answers_for(cert: Certificate, alpha: float, delta: float) -> bool:
    """Whether a policy with certificate `cert` may answer a caller at (alpha, delta)."""
    return certified_level(cert).covers(alpha, delta)


def past_levels(store: TraceStore, task: str, fingerprint: str) -> list[Level]:
    """The distinct levels of the task version's stored certificates, oldest first."""
    levels = (level_of(row["certificate"]) for row in sorted(store.policies(task, fingerprint=fingerprint),
                                                             key=lambda r: r["version"]))
    return list(dict.fromkeys(level for level in levels if level is not None))


def task_level(store: TraceStore, task: str, fingerprint: str) -> Level | None:
    """The level of the version's latest certificate (deployed or refused); None if it was never fitted."""
    row = store.latest_policy(task, fingerprint=fingerprint, status=None)
    return level_of(row["certificate"]) if row else None


def level_of(cert: object) -> Level | None:
    """The level of a stored certificate, None when it records none (a corrupt row)."""
    alpha, delta = (cert.get("alpha"), cert.get("delta")) if isinstance(cert, dict) else (None, None)
    if isinstance(alpha, bool) or isinstance(delta, bool):
        return None
    return Level(float(alpha), float(delta)) if isinstance(alpha, int | float) and isinstance(delta, int | float) else None


@dataclass(frozen=True)
class Choice:
    """The level a command works at, whether it changes the version's level, and why, in words."""

    level: Level
    changed: bool
    why: str


def choose_level(
    store: TraceStore, task: str, fingerprint: str, alpha: float | None = None, delta: float | None = None
) -> Choice:
    """The version's own level unless `alpha`/`delta` ask for another (the default for a version never fitted)."""
    current = task_level(store, task, fingerprint)
    base = current or DEFAULT
    level = Level(base.alpha if alpha is None else float(alpha), base.delta if delta is None else float(delta))
    if current is None:
        why = "the default" if alpha is None and delta is None else "as asked"
        return Choice(level, False, f"{why}: the task version was never fitted")
    if level == current:
        return Choice(level, False, "the level of its latest certificate")
    so_far = "; ".join(str(past) for past in past_levels(store, task, fingerprint))
    return Choice(level, True, f"its policies so far: {so_far}")
