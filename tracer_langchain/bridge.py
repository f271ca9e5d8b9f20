"""The tracer side of the wrapper: text extraction, routing, output codec and trace recording.

Every tracer failure here is logged once per kind and turned into "ask the chain", so the
wrapped chain keeps working whatever happens to the store, embedder or policy.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass
from typing import Any

from langchain_core.runnables import RunnableConfig

from tracer_langchain.codec import OutputCodec, codec_from_spec, learn_codec
from tracer_langchain.errors import IntegrationConfigError
from tracer_langchain.text import TextFn, extract_text
from tracer_langchain.usage import UsageCollector

log = logging.getLogger("tracer_langchain")

MODES = ("on", "off")
SURROGATE_TAG = "tracer:surrogate"
TEACHER_TAG = "tracer:llm"
SCAN_WINDOW = 500
STORE_SCAN = 20_000


@dataclass
class Route:
    """What to do with one input: `hit` means `output` is the surrogate's answer."""

    text: str | None
    reason: str
    decision: Any = None
    hit: bool = False
    output: Any = None

    @property
    def policy_version(self) -> int | None:
        return getattr(self.decision, "policy_version", None)

    def run_metadata(self, task: str) -> dict[str, Any]:
        """Metadata put on the wrapper's own run (not inherited by the inner chain)."""
        metadata = {"tracer_task": task, "tracer_handled": self.hit, "tracer_policy_version": self.policy_version}
        if self.hit:
            metadata["tracer_score"] = float(self.decision.score)
        else:
            metadata["tracer_reason"] = self.reason
        return metadata

    @property
    def tag(self) -> str:
        return SURROGATE_TAG if self.hit else TEACHER_TAG


class TracerBridge:
    """Connects one wrapped chain to one `tracer_core.Tracer`."""

    def __init__(
        self,
        tracer: Any,
        *,
        text_fn: TextFn | None = None,
        input_key: str | None = None,
        codec: OutputCodec | None = None,
    ) -> None:
        self.tracer = tracer
        self.text_fn = text_fn
        self.input_key = input_key
        self.codec = codec
        self._warned: set[str] = set()
        self._lock = threading.Lock()
        self._store_checked = False

    # -- routing -------------------------------------------------------------------------
    def text_of(self, value: Any, config: RunnableConfig) -> tuple[str | None, str]:
        """(text, reason): the text to classify, or None with why routing is skipped."""
        mode = mode_of(config)
        try:
            text = extract_text(value, text_fn=self.text_fn, input_key=self.input_key)
        except Exception as exc:
            self.warn_once("text", exc)
            return None, "error"
        return text, "tracer_off" if mode == "off" else "pending"

    def route(self, value: Any, config: RunnableConfig, *, chunk: bool = False) -> Route:
        """Route one input; `chunk=True` builds a hit's answer as a streaming chunk."""
        text, reason = self.text_of(value, config)
        if reason != "pending":
            return Route(text, reason)
        try:
            decision = self.tracer.route(text)
        except Exception as exc:
            self.warn_once("route", exc)
            return Route(text, "error")
        return self.resolve(text, decision, chunk=chunk)

    async def aroute(self, value: Any, config: RunnableConfig, *, chunk: bool = False) -> Route:
        """`route` with the embedding and scoring off the event loop."""
        text, reason = self.text_of(value, config)
        if reason != "pending":
            return Route(text, reason)
        try:
            decision = await self.tracer.aroute(text)
        except Exception as exc:
            self.warn_once("route", exc)
            return Route(text, "error")
        if self.codec is None and not self._store_checked:
            await asyncio.to_thread(self.answer_codec)  # a one-off store read, off the event loop
        return self.resolve(text, decision, chunk=chunk)

    def route_many(self, values: list[Any], configs: list[RunnableConfig]) -> list[Route]:
        pending = [self.text_of(v, c) for v, c in zip(values, configs, strict=True)]
        todo = [i for i, (_, reason) in enumerate(pending) if reason == "pending"]
        try:
            decisions = self.tracer.route_many([pending[i][0] for i in todo]) if todo else []
        except Exception as exc:
            self.warn_once("route", exc)
            decisions = [None] * len(todo)
        return self._merge(pending, todo, decisions)

    async def aroute_many(self, values: list[Any], configs: list[RunnableConfig]) -> list[Route]:
        pending = [self.text_of(v, c) for v, c in zip(values, configs, strict=True)]
        todo = [i for i, (_, reason) in enumerate(pending) if reason == "pending"]
        try:
            decisions = await self.tracer.aroute_many([pending[i][0] for i in todo]) if todo else []
        except Exception as exc:
            self.warn_once("route", exc)
            decisions = [None] * len(todo)
        if self.codec is None and not self._store_checked:
            await asyncio.to_thread(self.answer_codec)
        return self._merge(pending, todo, decisions)

    def _merge(self, pending: list[tuple[str | None, str]], todo: list[int], decisions: list[Any]) -> list[Route]:
        routes = [Route(text, reason) for text, reason in pending]
        for i, decision in zip(todo, decisions, strict=True):
            routes[i] = self.resolve(pending[i][0], decision) if decision is not None else Route(pending[i][0], "error")
        return routes

    def resolve(self, text: str, decision: Any, *, chunk: bool = False) -> Route:
        """A hit only when the decision is handled under a deployed policy and the answer can be built."""
        if not (decision.handled and decision.label is not None and decision.policy_version is not None):
            return Route(text, decision.reason, decision)
        codec = self.answer_codec()
        if codec is None:
            return Route(text, "no_codec", decision)
        try:
            output = codec.from_label(decision.label, chunk=chunk)
        except Exception as exc:
            self.warn_once("codec", exc)
            return Route(text, "error", decision)
        return Route(text, decision.reason, decision, hit=True, output=output)

    # -- codec ---------------------------------------------------------------------------
    def answer_codec(self) -> OutputCodec | None:
        """The codec to build surrogate answers: the user's, the learned one, or one rebuilt from stored traces."""
        if self.codec is None and not self._store_checked:
            self._store_checked = True
            self.codec = self._codec_from_store()
        return self.codec

    def _codec_from_store(self) -> OutputCodec | None:
        """The codec of the newest teacher trace that stored one (scanning back at most STORE_SCAN traces)."""
        try:
            store, task, fingerprint = self.tracer.store, self.tracer.task, self.tracer.fingerprint
            high = store.max_id(task, source="teacher", fingerprint=fingerprint)
            floor = max(0, high - STORE_SCAN)
            while high > floor:
                low = max(floor, high - SCAN_WINDOW)
                window = store.iter_traces(task, source="teacher", fingerprint=fingerprint, since_id=low, until_id=high)
                for trace in reversed(list(window)):
                    if isinstance(trace.metadata.get("codec"), dict):
                        return codec_from_spec(trace.metadata["codec"])
                high = low
        except Exception as exc:
            self.warn_once("codec", exc)
        return None

    def output_codec(self, output: Any) -> OutputCodec:
        """The codec for a real chain output, learned from the first one seen."""
        with self._lock:
            if self.codec is None:
                self.codec = learn_codec(output)
            return self.codec

    # -- recording -----------------------------------------------------------------------
    def record_teacher(
        self, route: Route, output: Any, latency_ms: float | None, usage: UsageCollector, run_id: Any
    ) -> None:
        """Record a real chain answer as a training trace (skipped, logged once, if anything fails)."""
        if route.text is None:
            return
        try:
            codec = self.output_codec(output)
            self.tracer.record(
                route.text,
                codec.to_label(output),
                model=usage.model,
                latency_ms=latency_ms,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                metadata={
                    "deferred_reason": route.reason,
                    "policy_version": route.policy_version,
                    "codec": codec.spec,
                    "integration": "langchain",
                    "run_id": str(run_id),
                },
            )
        except Exception as exc:
            self.warn_once("record", exc)

    def record_surrogate(self, route: Route, run_id: Any) -> None:
        """Record a surrogate answer (never training data)."""
        try:
            self.tracer.record(
                route.text,
                route.decision.label,
                source="surrogate",
                metadata={
                    "score": float(route.decision.score),
                    "policy_version": route.policy_version,
                    "integration": "langchain",
                    "run_id": str(run_id),
                },
            )
        except Exception as exc:
            self.warn_once("record", exc)

    def warn_once(self, kind: str, exc: BaseException) -> None:
        """Log the first failure of each kind; the call goes on through the chain."""
        with self._lock:
            if kind in self._warned:
                return
            self._warned.add(kind)
        log.warning("tracer %s failed, using the chain instead: %s: %s", kind, type(exc).__name__, exc)


def mode_of(config: RunnableConfig) -> str:
    """The per-call `tracer_mode` ("on" unless `configurable.tracer_mode` says otherwise)."""
    mode = (config.get("configurable") or {}).get("tracer_mode", "on")
    if mode not in MODES:
        raise IntegrationConfigError(f"configurable tracer_mode must be one of {MODES}, got {mode!r}")
    return mode
