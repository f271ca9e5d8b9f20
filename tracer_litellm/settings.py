"""Callback settings, given in code or read from TRACER_* environment variables (the proxy's way)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from tracer_core.errors import TracerError

MODES = ("on", "observe", "off")


class SettingsError(TracerError, ValueError):
    """A tracer setting (argument or TRACER_* variable) has a bad value."""


@dataclass(frozen=True)
class TracerSettings:
    """What the LiteLLM callback does and where it keeps traces.

    mode: "on" records and short-circuits, "observe" only records, "off" does nothing.
    task: a fixed task name for every call (else per-call metadata or the prompt fingerprint).
    """

    db: str = "tracer.db"
    alpha: float = 0.95
    delta: float = 0.05
    refit_every: int = 200
    task: str | None = None
    mode: str = "on"

    def __post_init__(self) -> None:
        if not isinstance(self.db, str) or not self.db.strip():
            raise SettingsError(f"db must be a non-empty path, got {self.db!r}")
        for name in ("alpha", "delta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < value < 1.0:
                raise SettingsError(f"{name} must be a number strictly between 0 and 1, got {value!r}")
        if isinstance(self.refit_every, bool) or not isinstance(self.refit_every, int) or self.refit_every < 1:
            raise SettingsError(f"refit_every must be a positive integer, got {self.refit_every!r}")
        if self.task is not None and (not isinstance(self.task, str) or not self.task.strip()):
            raise SettingsError(f"task must be a non-empty string or None, got {self.task!r}")
        if self.mode not in MODES:
            raise SettingsError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TracerSettings:
        """Read TRACER_DB, TRACER_ALPHA, TRACER_DELTA, TRACER_REFIT_EVERY, TRACER_TASK and TRACER_MODE."""
        env = os.environ if environ is None else environ
        defaults = cls()
        return cls(
            db=env.get("TRACER_DB", defaults.db),
            alpha=_number(env, "TRACER_ALPHA", float, defaults.alpha),
            delta=_number(env, "TRACER_DELTA", float, defaults.delta),
            refit_every=_number(env, "TRACER_REFIT_EVERY", int, defaults.refit_every),
            task=env.get("TRACER_TASK") or None,
            mode=env.get("TRACER_MODE", defaults.mode).strip().lower(),
        )


def _number(env: Mapping[str, str], name: str, kind: type, default: float) -> float:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        return kind(raw.strip())
    except ValueError:
        raise SettingsError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {raw!r}") from None
