"""`TracerCallback`: record every LiteLLM chat completion and answer certified ones from the surrogate.

    import litellm
    from tracer_litellm import TracerCallback
    litellm.callbacks = [TracerCallback(alpha=0.95)]

Async calls (`acompletion`, `Router.acompletion`, the proxy) are short-circuited in
`async_pre_call_deployment_hook` with a `mock_response`; sync `completion` calls through
`SurrogateCache`. Whatever fails inside tracer falls through to the LLM call.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import numpy as np
from litellm.integrations.custom_logger import CustomLogger
from litellm.types.utils import CallTypes

from tracer_core import Decision, FlushReport, Tracer, TraceStore
from tracer_core.tracer import DEFAULT_CLOSE_TIMEOUT_S
from tracer_core.writer import DEFAULT_FLUSH_TIMEOUT_S
from tracer_litellm.codec import is_surrogate_response, label_from_response, surrogate_response
from tracer_litellm.compat import make_cache_hits_import_safe
from tracer_litellm.request import CallInfo, describe_call
from tracer_litellm.settings import TracerSettings
from tracer_litellm.sync_cache import install_surrogate_cache

log = logging.getLogger("tracer_litellm")

CALL_KEY = "tracer_call"
"""Key in LiteLLM's `model_call_details` (the kwargs every logger gets) with tracer's view of the call."""

Embedder = Callable[[list[str]], np.ndarray]


class TracerCallback(CustomLogger):
    """A LiteLLM callback that records (input, label) traces and short-circuits certified calls."""

    def __init__(
        self,
        alpha: float = 0.95,
        delta: float = 0.05,
        *,
        db: str | None = None,
        task: str | None = None,
        mode: str = "on",
        refit_every: int = 200,
        embedder: Embedder | None = None,
        settings: TracerSettings | None = None,
        sync_short_circuit: bool = True,
    ) -> None:
        super().__init__()
        self.settings = settings or TracerSettings(
            db=db or os.environ.get("TRACER_DB") or "tracer.db",
            alpha=alpha, delta=delta, refit_every=refit_every, task=task, mode=mode
        )
        self.embedder = embedder
        self._tracers: dict[tuple[str, str], Tracer] = {}
        self._store: TraceStore | None = None
        self._lock = threading.Lock()
        self._warned: set[str] = set()
        self._sync_short_circuit = sync_short_circuit and self.settings.mode == "on"
        if self._sync_short_circuit:
            make_cache_hits_import_safe()
            install_surrogate_cache(self.answer_sync)

    @classmethod
    def from_env(cls, **kwargs: Any) -> TracerCallback:
        """A callback configured by TRACER_* environment variables."""
        return cls(settings=TracerSettings.from_env(), **kwargs)

    # --- the gate -----------------------------------------------------------------------------

    async def async_pre_call_deployment_hook(
        self, kwargs: dict[str, Any], call_type: CallTypes | None
    ) -> dict | None:
        """Answer an async chat call from the surrogate when its policy certifies it; else let it through."""
        if self.settings.mode != "on" or call_type not in (CallTypes.acompletion, CallTypes.completion):
            return None
        try:
            info = self._routable(kwargs)
            if info is None:
                return None
            tracer = self._tracers.get((info.task, info.fingerprint)) or await asyncio.to_thread(self.tracer_for, info)
            decision = await tracer.aroute(info.text)
            _remember(kwargs, info, decision=decision)
            if not decision.handled or decision.label is None:
                return None
            response = surrogate_response(
                decision.label, info, score=decision.score, policy_version=decision.policy_version
            )
            return {**kwargs, "mock_response": response}
        except Exception as exc:
            self._warn_once("gate", exc)
            return None

    def answer_sync(self, kwargs: dict[str, Any]) -> dict | None:
        """The surrogate's answer to a sync chat call as a response dict, or None to ask the LLM."""
        if self.settings.mode != "on":
            return None
        try:
            info = self._routable(kwargs)
            if info is None:
                return None
            decision = self.tracer_for(info).route(info.text)
            _remember(kwargs, info, decision=decision)
            if not decision.handled or decision.label is None:
                return None
            response = surrogate_response(
                decision.label, info, score=decision.score, policy_version=decision.policy_version
            )
            return response.model_dump()
        except Exception as exc:
            self._warn_once("gate", exc)
            return None

    def _routable(self, kwargs: dict[str, Any]) -> CallInfo | None:
        """The call's description when the surrogate may answer it; else None (remembering why)."""
        info = describe_call(kwargs, self.settings.task)
        if info is not None and not info.routable:
            _remember(kwargs, info, reason=info.reason)
            return None
        return info

    # --- recording ----------------------------------------------------------------------------

    def log_success_event(self, kwargs, response_obj, start_time, end_time):
        """Record a finished sync call (LiteLLM runs this in its logging thread)."""
        if self._sync_short_circuit:
            install_surrogate_cache(self.answer_sync)
        self.record_call(kwargs, response_obj, start_time, end_time)

    async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):
        """Record a finished async call, off the event loop."""
        await asyncio.to_thread(self.record_call, kwargs, response_obj, start_time, end_time)

    def record_call(self, kwargs: dict[str, Any], response: Any, start_time: Any, end_time: Any) -> None:
        """Record one completed call: a teacher trace, or a surrogate trace when tracer answered it."""
        if self.settings.mode == "off":
            return
        try:
            seen = kwargs.get(CALL_KEY)
            info = CallInfo(**seen["info"]) if isinstance(seen, dict) else describe_call(kwargs, self.settings.task)
            if info is None:
                return
            label = label_from_response(response, info.tool_name)
            if label is None:
                return
            seen = seen if isinstance(seen, dict) else {}
            tracer = self.tracer_for(info)
            if seen.get("handled") or is_surrogate_response(response):
                tracer.record(
                    info.text,
                    label,
                    source="surrogate",
                    model=info.model,
                    metadata={"score": seen.get("score"), "policy_version": seen.get("policy_version")},
                )
                return
            if kwargs.get("cache_hit"):
                return  # an answer from the user's own cache is not a new teacher answer
            usage = getattr(response, "usage", None)
            tracer.record(
                info.text,
                label,
                model=info.model,
                latency_ms=_latency_ms(start_time, end_time),
                prompt_tokens=getattr(usage, "prompt_tokens", None),
                completion_tokens=getattr(usage, "completion_tokens", None),
                cost_usd=_cost(kwargs.get("response_cost")),
                metadata={
                    "deferred_reason": seen.get("reason", "not_checked"),
                    "policy_version": seen.get("policy_version"),
                },
            )
        except Exception as exc:
            self._warn_once("record", exc)

    # --- tracers ------------------------------------------------------------------------------

    def tracer_for(self, info: CallInfo) -> Tracer:
        """The one Tracer of the call's (task, fingerprint), made on first use."""
        key = (info.task, info.fingerprint)
        with self._lock:
            tracer = self._tracers.get(key)
            if tracer is None:
                if self._store is None:
                    self._store = TraceStore(self.settings.db)
                tracer = Tracer(
                    task=info.task,
                    db=self._store,
                    alpha=self.settings.alpha,
                    delta=self.settings.delta,
                    fingerprint=info.fingerprint,
                    embedder=self.embedder,
                    refit_every=self.settings.refit_every,
                )
                self._tracers[key] = tracer
            return tracer

    def tracers(self) -> list[Tracer]:
        """The Tracers made so far (one per task and fingerprint)."""
        with self._lock:
            return list(self._tracers.values())

    def flush(self, timeout: float | None = DEFAULT_FLUSH_TIMEOUT_S) -> FlushReport:
        """Wait at most `timeout` s for every queued trace to be written; the report says what was not."""
        store = self._store
        return store.flush(timeout) if store is not None else FlushReport()

    def close(self, timeout: float | None = DEFAULT_CLOSE_TIMEOUT_S) -> FlushReport:
        """Close every Tracer (waiting for refits) and the store, together within about `timeout` s."""
        with self._lock:
            tracers, self._tracers = list(self._tracers.values()), {}
            store, self._store = self._store, None
        deadline = None if timeout is None else time.monotonic() + timeout

        def left() -> float | None:
            return None if deadline is None else max(deadline - time.monotonic(), 0.0)

        for tracer in tracers:
            tracer.wait_for_refit(left())
        return store.close(left()) if store is not None else FlushReport()

    def _warn_once(self, where: str, exc: Exception) -> None:
        key = f"{where}:{type(exc).__name__}"
        if key not in self._warned:
            self._warned.add(key)
            log.warning("tracer %s failed, the call goes to the LLM: %s: %s", where, type(exc).__name__, exc)


def _remember(
    kwargs: dict[str, Any], info: CallInfo, *, decision: Decision | None = None, reason: str | None = None
) -> None:
    """Put tracer's view of the call where every logger of this call sees it (`model_call_details`)."""
    seen: dict[str, Any] = {"info": asdict(info), "handled": False, "reason": reason}
    if decision is not None:
        seen.update(
            handled=bool(decision.handled and decision.label is not None),
            reason=decision.reason,
            score=decision.score,
            policy_version=decision.policy_version,
        )
    details = getattr(kwargs.get("litellm_logging_obj"), "model_call_details", None)
    if isinstance(details, dict):
        details[CALL_KEY] = seen


def _latency_ms(start_time: Any, end_time: Any) -> float | None:
    if isinstance(start_time, datetime.datetime) and isinstance(end_time, datetime.datetime):
        return max((end_time - start_time).total_seconds() * 1000.0, 0.0)
    if isinstance(start_time, int | float) and isinstance(end_time, int | float):
        return max((end_time - start_time) * 1000.0, 0.0)
    return None


def _cost(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
