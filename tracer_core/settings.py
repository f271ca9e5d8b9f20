"""Declared constraints of the settings every entry point takes (Tracer, with_tracer, TracerCallback, TRACER_*).

One table, one check: `check("alpha", value)` returns the value as a plain Python number or
raises SettingsError naming the setting, the rule and the value; `check_limit` is the same for a
limit that None lifts (`max_train`).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from tracer_core.errors import TracerError


class SettingsError(TracerError, ValueError):
    """A tracer setting (argument or TRACER_* variable) has a bad value."""


@dataclass(frozen=True)
class Interval:
    """A real or integer range; `closed` says which ends belong to it."""

    kind: type
    low: float
    high: float
    closed: str = "neither"  # "left", "right", "both", "neither"

    def holds(self, value: float) -> bool:
        low_ok = value >= self.low if self.closed in ("left", "both") else value > self.low
        high_ok = value <= self.high if self.closed in ("right", "both") else value < self.high
        return low_ok and high_ok

    def describe(self) -> str:
        kind = "an integer" if self.kind is int else "a number"
        left = "[" if self.closed in ("left", "both") else "("
        right = "]" if self.closed in ("right", "both") else ")"
        high = "inf" if math.isinf(self.high) else f"{self.high:g}"
        return f"{kind} in {left}{self.low:g}, {high}{right}"


CONSTRAINTS: dict[str, Interval] = {
    "alpha": Interval(float, 0.0, 1.0),
    "delta": Interval(float, 0.0, 1.0),
    "audit_rate": Interval(float, 0.0, 1.0, "both"),
    "refit_every": Interval(int, 1, math.inf, "left"),
    "refit_interval_s": Interval(float, 0.0, math.inf),
    "policy_check_s": Interval(float, 0.0, math.inf, "left"),
    "max_train": Interval(int, 100, math.inf, "left"),  # train + validation traces of a fit
}


def check(name: str, value: object) -> float | int:
    """`value` as a plain int or float if it satisfies the declared constraint of `name`."""
    rule = CONSTRAINTS[name]
    wanted = numbers.Integral if rule.kind is int else numbers.Real
    if isinstance(value, bool) or not isinstance(value, wanted):
        raise SettingsError(f"{name} must be {rule.describe()}, got {value!r}")
    # a numpy float32 converts to its shortest decimal, so np.float32(0.9) is 0.9
    number = int(value) if rule.kind is int else float(str(value) if hasattr(value, "dtype") else value)  # type: ignore[call-overload]
    if not rule.holds(number):  # NaN holds nothing
        raise SettingsError(f"{name} must be {rule.describe()}, got {value!r}")
    return number


def check_limit(name: str, value: object) -> int | None:
    """None (no limit), or `value` checked against the declared constraint of `name`, as an int."""
    return None if value is None else int(check(name, value))
