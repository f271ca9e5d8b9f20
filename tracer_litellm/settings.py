"""Callback settings, given in code or read from TRACER_* environment variables (the proxy's way).

Numbers are checked by `tracer_core.settings.check`, the one table every entry point uses.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TypeVar

from tracer_core.learning.fit import DEFAULT_MAX_TRAIN
from tracer_core.serving.tracer import DEFAULT_AUDIT_RATE
from tracer_core.settings import SettingsError, check
from tracer_core.store_address import display

MODES = ("on", "observe", "off")
N = TypeVar("N", int, float)  # a setting parsed by _number

__all__ = ["MODES", "SettingsError", "TracerSettings"]


@dataclass(frozen=True)
class TracerSettings:
    """What the LiteLLM callback does and where it keeps traces.

    mode: "on" records and short-circuits, "observe" only records, "off" does nothing.
    task: a fixed task name for every call (else per-call metadata or the prompt fingerprint).
    audit_rate: share of calls the policy would answer that go to the LLM anyway (fresh evidence).
    max_train: the most traces a fit trains on (a uniform sample; calibration is never sampled); None: all.
    """

    db: str = "tracer.db"
    alpha: float = 0.95
    delta: float = 0.05
    refit_every: int = 200
    audit_rate: float = DEFAULT_AUDIT_RATE
    max_train: int | None = DEFAULT_MAX_TRAIN
    task: str | None = None
    mode: str = "on"

    def __repr__(self) -> str:  # the store URL may hold a password
        shown = {f.name: getattr(self, f.name) for f in fields(self)} | {"db": display(self.db)}
        return "TracerSettings(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"

    def __post_init__(self) -> None:
        if not isinstance(self.db, str) or not self.db.strip():
            raise SettingsError(f"db must be a non-empty path or PostgreSQL URL, got {self.db!r}")
        for name in ("alpha", "delta", "refit_every", "audit_rate"):
            object.__setattr__(self, name, check(name, getattr(self, name)))
        if self.max_train is not None:
            object.__setattr__(self, "max_train", check("max_train", self.max_train))
        if self.task is not None and (not isinstance(self.task, str) or not self.task.strip()):
            raise SettingsError(f"task must be a non-empty string or None, got {self.task!r}")
        if self.mode not in MODES:
            raise SettingsError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TracerSettings:
        """Read TRACER_DB, TRACER_ALPHA, TRACER_DELTA, TRACER_REFIT_EVERY, TRACER_AUDIT_RATE, TRACER_MAX_TRAIN, TRACER_TASK, TRACER_MODE."""
        env = os.environ if environ is None else environ
        defaults = cls()
        return cls(
            db=env.get("TRACER_DB", defaults.db),
            alpha=_number(env, "TRACER_ALPHA", float, defaults.alpha),
            delta=_number(env, "TRACER_DELTA", float, defaults.delta),
            refit_every=_number(env, "TRACER_REFIT_EVERY", int, defaults.refit_every),
            audit_rate=_number(env, "TRACER_AUDIT_RATE", float, defaults.audit_rate),
            max_train=_number(env, "TRACER_MAX_TRAIN", int, DEFAULT_MAX_TRAIN),
            task=env.get("TRACER_TASK") or None,
            mode=env.get("TRACER_MODE", defaults.mode).strip().lower(),
        )


def _number(env: Mapping[str, str], name: str, kind: type[N], default: N) -> N:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        return kind(raw.strip())
    except ValueError:
        raise SettingsError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {raw!r}") from None
