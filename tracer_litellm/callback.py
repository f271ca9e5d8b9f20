"""`TracerCallback`: record every LiteLLM chat completion and answer certified ones from the surrogate.

    import litellm
    from tracer_litellm import TracerCallback
    litellm.callbacks = [TracerCallback(alpha=0.95)]

Async calls (`acompletion`, `Router.acompletion`, the proxy) are decided in
`async_pre_call_deployment_hook`, sync calls (`completion`, `Router.completion`) where
`tracer_litellm.hooks` lets them be; a certified answer is handed to LiteLLM as a
`mock_response`, so no request reaches the provider and LiteLLM logs it like any answer
(flagged as a cache hit at no charge). Every response carries the decision in
`_hidden_params["tracer"]`; the proxy also sends it as `x-tracer-*` headers.
Whatever fails inside tracer falls through to the LLM call.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from litellm.integrations.custom_logger import CustomLogger
from litellm.types.utils import CallTypes, ModelResponse

from tracer_core import Decision, FlushReport, Reason, Tracer, TracerError, TracerRegistry, registry_for
from tracer_core.decision import deferred
from tracer_core.errors import StoreError
from tracer_core.learning.fit import DEFAULT_MAX_TRAIN
from tracer_core.observability.observe import count_calls
from tracer_core.serving.registry import Unrecorded
from tracer_core.serving.tracer import DEFAULT_AUDIT_RATE, DEFAULT_CLOSE_TIMEOUT_S, abandon_refits
from tracer_core.storage.writer import DEFAULT_FLUSH_TIMEOUT_S
from tracer_litellm import hooks
from tracer_litellm.codec import decision_view, label_from_response, mark_response, response_decision, surrogate_response
from tracer_litellm.logging_queue import await_logging, wait_for_logging
from tracer_litellm.request import CallInfo, describe_call
from tracer_litellm.settings import TracerSettings

log = logging.getLogger("tracer_litellm")

CALL_KEY = "tracer_call"
"""Key in LiteLLM's `model_call_details` (the kwargs every logger gets) with tracer's view of the call."""

HEADER_PREFIX = "x-tracer-"
_MODE_ORDER = {"off": 0, "observe": 1, "on": 2}
_CHAT_CALLS = (CallTypes.acompletion, CallTypes.completion)

Embedder = Callable[[list[str]], np.ndarray]


@dataclass
class Seen:
    """A call as tracer decided it; `decision` None means tracer is off for it (nothing recorded)."""

    info: CallInfo
    decision: Decision | None
    recorded: bool = False


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
        audit_rate: float = DEFAULT_AUDIT_RATE,
        max_train: int | None = DEFAULT_MAX_TRAIN,
        embedder: Embedder | None = None,
        settings: TracerSettings | None = None,
    ) -> None:
        super().__init__()
        self.settings = settings or TracerSettings(
            db=db or os.environ.get("TRACER_DB") or "tracer.db",
            alpha=alpha, delta=delta, refit_every=refit_every, audit_rate=audit_rate, task=task, mode=mode,
            max_train=max_train,
        )
        self.embedder = embedder
        self._registry: TracerRegistry | None = None
        with contextlib.suppress(StoreError):  # the store starts opening now, in the background
            self._registry = registry_for(self.settings.db)
        self._unrecorded = Unrecorded()
        self._warned: set[str] = set()
        hooks.install()

    @classmethod
    def from_env(cls, **kwargs: Any) -> TracerCallback:
        """A callback configured by TRACER_* environment variables."""
        return cls(settings=TracerSettings.from_env(), **kwargs)

    # --- the gate -----------------------------------------------------------------------------

    async def async_pre_call_deployment_hook(
        self, kwargs: dict[str, Any], call_type: CallTypes | None
    ) -> dict | None:
        """Answer an async chat call from the surrogate when its policy certifies it; else let it through."""
        if self.settings.mode == "off" or call_type not in _CHAT_CALLS:
            return None
        seen = await asyncio.to_thread(self.decide, kwargs)
        answer = self._remember(kwargs.get("litellm_logging_obj"), seen)
        return None if answer is None else {**kwargs, "mock_response": answer}

    def answer_sync(self, kwargs: dict[str, Any], logging_obj: Any) -> Any | None:
        """The surrogate's answer to a sync chat call (for `mock_response`), or None to ask the LLM."""
        if self.settings.mode == "off":
            return None
        return self._remember(logging_obj, self.decide(kwargs))

    def decide(self, kwargs: dict[str, Any]) -> Seen | None:
        """Describe a chat call and decide it: routed when it may be, else deferred with the reason."""
        try:
            info = describe_call(kwargs, self.settings.task)
        except Exception as exc:
            self._warn_once("describe", exc)
            return None
        if info is None:
            return None
        if info.bad_mode is not None:
            self._warn_once("mode", ValueError(f"metadata tracer_mode must be on, observe or off; got {info.bad_mode!r}"))
        mode = self._mode(info)
        if mode == "off":
            return Seen(info, None)
        reason = info.blocked or (Reason.TRACER_OFF if mode == "observe" else None)
        if reason is not None:
            count_calls(info.task, info.fingerprint, [deferred(reason)])
            return Seen(info, deferred(reason))
        try:
            tracer = self.tracer_for(info)
            info = dataclasses.replace(info, task=tracer.task)  # the task the version is stored under
            return Seen(info, tracer.route(info.text))
        except StoreError as exc:  # no store (e.g. the path is a directory): recorded as lost at close()
            self._warn_once("store", exc)
            return Seen(info, deferred(Reason.STORE_UNAVAILABLE))
        except Exception as exc:
            self._warn_once("gate", exc)
            return Seen(info, deferred(Reason.ERROR))

    def _remember(self, logging_obj: Any, seen: Seen | None) -> Any | None:
        """Keep the decision where every logger of the call sees it; return the surrogate's answer, if any."""
        if seen is None:
            return None
        details = getattr(logging_obj, "model_call_details", None)
        if isinstance(details, dict):
            details[CALL_KEY] = seen
        decision = seen.decision
        if decision is None or not decision.handled or decision.label is None:
            return None
        try:
            return surrogate_response(decision.label, seen.info, decision)
        except Exception as exc:
            self._warn_once("answer", exc)
            if isinstance(details, dict):
                details[CALL_KEY] = Seen(seen.info, deferred(Reason.ERROR))
            return None

    # --- what every response says -------------------------------------------------------------

    def on_response(self, response: Any, logging_obj: Any, start_time: Any, end_time: Any) -> None:
        """A response on its way back to the caller (called by `hooks`): mark it; record it unless it is a stream."""
        seen = _seen(getattr(logging_obj, "model_call_details", None))
        if seen is None or seen.decision is None:
            return
        try:
            mark_response(response, seen.info, seen.decision)
        except Exception as exc:
            self._warn_once("mark", exc)
        if isinstance(response, ModelResponse):
            hidden = getattr(response, "_hidden_params", None) or {}
            self._record(seen, response, start_time, end_time, hidden.get("response_cost"), hidden.get("cache_hit"))

    async def async_post_call_response_headers_hook(
        self, data: dict, user_api_key_dict: Any, response: Any, request_headers: dict | None = None,
        litellm_call_info: dict | None = None,
    ) -> dict[str, str] | None:
        """Proxy: `x-tracer-decision` (handled|deferred), `x-tracer-reason`, `x-tracer-policy-version`, `x-tracer-task`."""
        view = response_decision(response)
        if view is None:
            seen = _seen(getattr(data.get("litellm_logging_obj"), "model_call_details", None))
            if seen is None or seen.decision is None:
                return None
            view = decision_view(seen.info, seen.decision)
        headers = {"decision": "handled" if view["handled"] else "deferred", "reason": view["reason"], "task": view["task"]}
        if view["policy_version"] is not None:
            headers["policy-version"] = str(view["policy_version"])
        return {HEADER_PREFIX + key: value for key, value in headers.items()}

    # --- recording ----------------------------------------------------------------------------

    def log_success_event(self, kwargs, response_obj, start_time, end_time):
        """Record a finished sync call (LiteLLM runs this in its logging thread)."""
        self.record_call(kwargs, response_obj, start_time, end_time)

    async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):
        """Record a finished async call.

        Recording only queues the trace for the store's writer thread, so it runs here, on the
        loop: LiteLLM drains its logging queue at interpreter exit, when no thread pool takes work.
        """
        self.record_call(kwargs, response_obj, start_time, end_time)

    def record_call(self, kwargs: dict[str, Any], response: Any, start_time: Any, end_time: Any) -> None:
        """Record one call LiteLLM logged, unless it was recorded when its response was returned."""
        if self.settings.mode == "off":
            return
        try:
            seen = _seen(kwargs) or self._undecided(kwargs)
        except Exception as exc:
            self._warn_once("record", exc)
            return
        if seen is not None and seen.decision is not None:
            self._record(seen, response, start_time, end_time, kwargs.get("response_cost"), kwargs.get("cache_hit"))

    def _record(self, seen: Seen, response: Any, start_time: Any, end_time: Any, cost: Any, cache_hit: Any) -> None:
        """Record a call once, with the decision that sent it where it went.

        Every call is recorded, so which audits reach the monitor never depends on the input: an
        answer from the user's own cache is kept as a `cached` trace and one without a label as an
        `unparsed` trace (see `Tracer.record_answer`); neither becomes training data.
        """
        decision = seen.decision
        if seen.recorded or decision is None:
            return
        seen.recorded = True
        cached = cache_hit is True and not decision.handled
        try:
            usage = getattr(response, "usage", None)
            self.tracer_for(seen.info).record_answer(
                seen.info.text,
                label_from_response(response, seen.info),
                decision=decision,
                cached=cached,
                model=seen.info.model,
                latency_ms=_latency_ms(start_time, end_time),
                prompt_tokens=getattr(usage, "prompt_tokens", None),
                completion_tokens=getattr(usage, "completion_tokens", None),
                cost_usd=0.0 if decision.handled else None if cached else _cost(cost),
            )
        except StoreError as exc:  # no store took it (it could not be opened, or was closed)
            self._unrecorded.add(exc)
            self._warn_once("record", exc)
        except Exception as exc:
            self._warn_once("record", exc)

    def _undecided(self, kwargs: dict[str, Any]) -> Seen | None:
        """A logged call the gate never saw (another entry point): recorded, never routed."""
        info = describe_call(kwargs, self.settings.task)
        if info is None:
            return None
        return Seen(info, None if self._mode(info) == "off" else deferred(info.blocked or Reason.TRACER_OFF))

    def _mode(self, info: CallInfo) -> str:
        """The stricter of the callback's mode and the call's own `tracer_mode`."""
        return min(self.settings.mode, info.mode, key=_MODE_ORDER.__getitem__)

    # --- tracers ------------------------------------------------------------------------------

    @property
    def registry(self) -> TracerRegistry:
        """The process-wide registry of this callback's store (shared with the LangChain integration)."""
        registry = self._registry
        if registry is None or registry.store.closed:
            registry = self._registry = registry_for(self.settings.db)
        return registry

    def tracer_for(self, info: CallInfo) -> Tracer:
        """The one Tracer of the call's task version in this process."""
        return self.registry.tracer(
            info.task,
            info.identity,
            named=info.named,
            alpha=self.settings.alpha,
            delta=self.settings.delta,
            embedder=self.embedder,
            refit_every=self.settings.refit_every,
            audit_rate=self.settings.audit_rate,
            max_train=self.settings.max_train,
        )

    def tracer_of(self, **call: Any) -> Tracer:
        """The Tracer a chat call with these keyword arguments is routed by (to fit or inspect it)."""
        info = describe_call(call, self.settings.task)
        if info is None:
            raise TracerError("the call has no messages with a user text to classify")
        return self.tracer_for(info)

    def flush(self, timeout: float | None = DEFAULT_FLUSH_TIMEOUT_S) -> FlushReport:
        """Wait for LiteLLM's queued logging of this process, then for every queued trace to be written;
        the report says what was not (at most about `timeout` s for each): `ok` is False while any trace
        of this callback is not in the store, lost included. Never raises.

        Inside a running event loop LiteLLM's async queue cannot be awaited synchronously: use `aflush()`.
        """
        wait_for_logging(30.0 if timeout is None else timeout)
        return self._store_report(timeout)

    async def aflush(self, timeout: float | None = DEFAULT_FLUSH_TIMEOUT_S) -> FlushReport:
        """`flush()` from async code: awaits LiteLLM's logging queue on this loop."""
        await await_logging(30.0 if timeout is None else timeout)
        return await asyncio.to_thread(self._store_report, timeout)

    def _store_report(self, timeout: float | None) -> FlushReport:
        report = self._registry.flush(timeout) if self._registry is not None else FlushReport()
        return report + self._unrecorded.report()

    def close(self, timeout: float | None = DEFAULT_CLOSE_TIMEOUT_S) -> FlushReport:
        """Abandon running background refits (they write nothing), then flush, together within about
        `timeout` s (the store stays open for the process), like `Tracer.close()`; the report says what
        could not be written and which refits were given up. Never raises."""
        deadline = None if timeout is None else time.monotonic() + timeout
        abandoned = abandon_refits(self._registry.tracers() if self._registry is not None else [], timeout)
        report = self.flush(None if deadline is None else max(deadline - time.monotonic(), 0.0))
        return report + FlushReport(abandoned_refits=abandoned)

    def _warn_once(self, where: str, exc: Exception) -> None:
        key = f"{where}:{type(exc).__name__}"
        if key not in self._warned:
            self._warned.add(key)
            log.warning("tracer %s failed, the call goes to the LLM: %s: %s", where, type(exc).__name__, exc)


def _seen(details: Any) -> Seen | None:
    seen = details.get(CALL_KEY) if isinstance(details, dict) else None
    return seen if isinstance(seen, Seen) else None


def _latency_ms(start_time: Any, end_time: Any) -> float | None:
    if isinstance(start_time, datetime.datetime) and isinstance(end_time, datetime.datetime):
        return max((end_time - start_time).total_seconds() * 1000.0, 0.0)
    if isinstance(start_time, int | float) and isinstance(end_time, int | float):
        return max((end_time - start_time) * 1000.0, 0.0)
    return None


def _cost(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
