"""The tracer side of the wrapper: text, task identity, routing, output codec and trace recording.

Each call gets the Tracer of its own task version from the store's process-wide registry
(`tracer_core.registry_for(db).tracer(task, identity)`), shared with the LiteLLM
integration. Every call that reaches a Tracer is recorded with the decision that routed
it. Every tracer failure here is logged once per kind and turned into "ask the chain", so
the wrapped chain keeps working whatever happens to the store, embedder or policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import AIMessage
from langchain_core.runnables import RunnableConfig

from tracer_core import Decision, FlushReport, Reason, TaskIdentity, Tracer, background, registry_for
from tracer_core.background import Job
from tracer_core.decision import deferred
from tracer_core.errors import StoreError, TracerError
from tracer_core.observability.observe import count_calls
from tracer_core.serving.registry import Unrecorded, open_registry
from tracer_core.serving.tracer import abandon_refits
from tracer_langchain.codec import OutputCodec, codec_for_type, codec_from_spec, learn_codec
from tracer_langchain.errors import AmbiguousTextError, IntegrationConfigError
from tracer_langchain.history import append_turn, session_history
from tracer_langchain.identity import CallView, ChainIdentity
from tracer_langchain.text import TextFn, extract_text
from tracer_langchain.usage import UsageCollector

log = logging.getLogger("tracer_langchain")

MODES = ("on", "observe", "off")
SURROGATE_TAG = "tracer:surrogate"
TEACHER_TAG = "tracer:llm"
SCAN_WINDOW = 500
STORE_SCAN = 20_000


@dataclass
class Call:
    """What tracer decided for one input; `hit` means `output` is the surrogate's answer.

    `decision` is None only between identifying the call and asking its Tracer; `unstored` says why
    no store can take its trace (the store could not be opened).
    """

    text: str | None
    decision: Decision | None
    mode: str = "on"
    tracer: Tracer | None = None
    identity: TaskIdentity | None = None
    view: CallView | None = None
    history: Any = None  # the session history of a RunnableWithMessageHistory call
    hit: bool = False
    output: Any = None
    unstored: StoreError | None = None

    @property
    def reason(self) -> str:
        return str(self.decision.reason) if self.decision is not None else ""

    @property
    def recorded(self) -> bool:
        """Whether the chain's answer to this call becomes a trace."""
        return self.tracer is not None and self.text is not None and self.mode != "off"

    def routed(self) -> tuple[Tracer, str]:
        """The Tracer and text of an identified call (`prepare` sets both whenever it leaves the decision open)."""
        if self.tracer is None or self.text is None:
            raise TracerError("the call has no Tracer or text: it was never identified")
        return self.tracer, self.text

    def answered(self) -> tuple[str, CallView]:
        """A hit's label and the chat-model call it answers (`resolve` makes a hit only of a labelled decision)."""
        label = self.decision.label if self.hit and self.decision is not None else None
        if label is None or self.view is None:
            raise TracerError("the call has no surrogate answer")
        return label, self.view

    def run_metadata(self, task: str) -> dict[str, Any]:
        """Metadata of the wrapper's own run and of a surrogate answer's chat-model run."""
        decision = self.decision
        metadata = {
            "tracer_task": task,
            "tracer_handled": self.hit,
            "tracer_policy_version": decision.policy_version if decision else None,
            "tracer_fingerprint": self.tracer.fingerprint if self.tracer else None,
        }
        if self.hit and decision is not None:  # a hit always has its decision
            metadata["tracer_score"] = float(decision.score)
        else:
            metadata["tracer_reason"] = self.reason
        return metadata

    @property
    def tag(self) -> str:
        return SURROGATE_TAG if self.hit else TEACHER_TAG


class TracerBridge:
    """Connects one wrapped chain to the Tracers of its task versions."""

    def __init__(
        self,
        task: str,
        identity: ChainIdentity,
        *,
        db: Any = None,
        text_fn: TextFn | None = None,
        input_key: str | None = None,
        codec: OutputCodec | None = None,
        tracer_options: dict[str, Any] | None = None,
    ) -> None:
        self.task = task
        self.identity = identity
        self.db = db
        self.text_fn = text_fn
        self.input_key = input_key
        self.codec = codec
        self.tracer_options = dict(tracer_options or {})
        self.tracers: dict[str, Tracer] = {}
        self.last_tracer: Tracer | None = None
        self._warned: set[str] = set()
        self._lock = threading.Lock()
        self._store_checked: set[str] = set()
        self._codec_reads: dict[str, Job[OutputCodec | None]] = {}
        self.unrecorded = Unrecorded()
        with contextlib.suppress(StoreError):  # the store starts opening now, in the background
            registry_for(db)

    # -- identifying ---------------------------------------------------------------------
    def prepare(self, value: Any, config: RunnableConfig) -> Call:
        """The call's text, identity and Tracer, and its decision when no routing is needed."""
        mode = mode_of(config)
        if mode == "off":
            return Call(None, deferred(Reason.TRACER_OFF), mode)
        try:
            text = extract_text(value, text_fn=self.text_fn, input_key=self.input_key)
        except AmbiguousTextError:
            raise  # the caller must name the text (input_key= or text_fn=); raised before the chain runs
        except Exception as exc:
            self.warn_once("text", exc)
            return Call(None, deferred(Reason.ERROR), mode)
        try:
            runnable = self.identity.parts.history
            history = session_history(runnable, config) if runnable is not None else None
            identity, view = self.identity.of(value, text, history.messages if history is not None else ())
            tracer = self.tracer_for(identity)
        except StoreError as exc:  # no store for this call's trace (e.g. the path is a directory)
            self.warn_once("store", exc)
            return Call(text, deferred(Reason.STORE_UNAVAILABLE), mode, unstored=exc)
        except Exception as exc:
            self.warn_once("identity", exc)
            return Call(text, deferred(Reason.ERROR), mode)
        decision = None
        if identity.blocked is not None:
            decision = deferred(identity.blocked)
        elif mode == "observe":
            decision = deferred(Reason.TRACER_OFF)
        if decision is not None:
            count_calls(tracer.task, tracer.fingerprint, [decision])
        return Call(text, decision, mode, tracer, identity, view, history)

    def tracer_for(self, identity: TaskIdentity) -> Tracer:
        """The process-wide Tracer of this task version."""
        tracer = registry_for(self.db).tracer(self.task, identity, **self.tracer_options)
        with self._lock:
            self.tracers[tracer.fingerprint] = tracer
            self.last_tracer = tracer
        return tracer

    # -- routing -------------------------------------------------------------------------
    def route(self, value: Any, config: RunnableConfig, *, chunk: bool = False) -> Call:
        """Route one input; `chunk=True` builds a hit's answer as a streaming chunk."""
        call = self.prepare(value, config)
        if call.decision is None:
            try:
                tracer, text = call.routed()
                decision = tracer.route(text)
            except Exception as exc:
                self.warn_once("route", exc)
                call.decision = deferred(Reason.ERROR)
                return call
            self.resolve(call, decision, chunk=chunk)
        return call

    async def aroute(self, value: Any, config: RunnableConfig, *, chunk: bool = False) -> Call:
        """`route` with identity, embedding and store reads off the event loop."""
        call = await asyncio.to_thread(self.prepare, value, config)
        if call.decision is None:
            try:
                tracer, text = call.routed()
                decision = await tracer.aroute(text)
            except Exception as exc:
                self.warn_once("route", exc)
                call.decision = deferred(Reason.ERROR)
                return call
            if decision.handled:
                await asyncio.to_thread(self.answer_codec, tracer)  # a one-off store read
            self.resolve(call, decision, chunk=chunk)
        return call

    def route_many(self, values: list[Any], configs: list[RunnableConfig]) -> list[Call]:
        calls = [self.prepare(v, c) for v, c in zip(values, configs, strict=True)]
        self._decide_many(calls, lambda tracer, texts: tracer.route_many(texts))
        return calls

    async def aroute_many(self, values: list[Any], configs: list[RunnableConfig]) -> list[Call]:
        calls = await asyncio.to_thread(lambda: [self.prepare(v, c) for v, c in zip(values, configs, strict=True)])
        groups = _pending_groups(calls)
        for tracer, indices in groups:
            try:
                decisions = await tracer.aroute_many([str(calls[i].text) for i in indices])
            except Exception as exc:
                self.warn_once("route", exc)
                decisions = [deferred(Reason.ERROR)] * len(indices)
            if any(d.handled for d in decisions):
                await asyncio.to_thread(self.answer_codec, tracer)
            for i, decision in zip(indices, decisions, strict=True):
                self.resolve(calls[i], decision)
        return calls

    def _decide_many(self, calls: list[Call], route_many: Any) -> None:
        for tracer, indices in _pending_groups(calls):
            try:
                decisions = route_many(tracer, [calls[i].text for i in indices])
            except Exception as exc:
                self.warn_once("route", exc)
                decisions = [deferred(Reason.ERROR)] * len(indices)
            for i, decision in zip(indices, decisions, strict=True):
                self.resolve(calls[i], decision)

    def resolve(self, call: Call, decision: Decision, *, chunk: bool = False) -> None:
        """A hit only when the decision is handled under a deployed policy and the answer can be built."""
        call.decision = decision
        if not (decision.handled and decision.label is not None and decision.policy_version is not None):
            return
        tracer, _ = call.routed()
        codec = self.answer_codec(tracer)
        if codec is None:
            call.decision = deferred(Reason.NO_CODEC, decision.policy_version, decision.label, decision.score)
            return
        try:
            call.output = codec.from_label(decision.label, chunk=chunk)
        except Exception as exc:
            self.warn_once("codec", exc)
            call.decision = deferred(Reason.ERROR, decision.policy_version, decision.label, decision.score)
            return
        call.hit = True

    def answer_message(self, call: Call) -> AIMessage:
        """The chat-model message behind a surrogate answer."""
        label, _ = call.answered()
        if self.codec is None:  # answer_codec set it before resolve made the hit
            raise TracerError("no output codec for a surrogate answer")
        return self.codec.message(label, tool=self.identity.parts.tool_name)

    # -- codec ---------------------------------------------------------------------------
    def answer_codec(self, tracer: Tracer) -> OutputCodec | None:
        """The codec to build surrogate answers: the user's, the learned one, one rebuilt from stored traces,
        or the one the chain's declared output type implies. The stored traces are read in the background:
        None (the call defers) until that read is done, if it takes longer than the caller's budget."""
        fingerprint = tracer.fingerprint
        if self.codec is None and fingerprint not in self._store_checked:
            try:
                with self._lock:
                    job = self._codec_reads.get(fingerprint)
                    if job is None or job.error is not None:
                        job = self._codec_reads[fingerprint] = tracer.store.background_read(lambda: self._codec_from_store(tracer))
                stored = job.result(background.CALLER_BUDGET_S)
            except Exception:  # not read yet (or the store is closed): this call defers
                return None
            self._store_checked.add(fingerprint)
            self.codec = stored or self._codec_from_type()
        return self.codec

    def _codec_from_type(self) -> OutputCodec | None:
        try:
            parts = self.identity.parts
            return codec_for_type((parts.wrapped or self.identity.chain).OutputType, parts.forced_tool)
        except Exception as exc:
            self.warn_once("codec", exc)
            return None

    def _codec_from_store(self, tracer: Tracer) -> OutputCodec | None:
        """The codec of the newest teacher trace that stored one (scanning back at most STORE_SCAN traces)."""
        try:
            store, task, fingerprint = tracer.store, tracer.task, tracer.fingerprint
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
            if self.codec is not None:
                return self.codec
            codec = learn_codec(output)
            if codec.complete:
                self.codec = codec
            return codec

    # -- recording -----------------------------------------------------------------------
    def record_teacher(self, call: Call, output: Any, latency_ms: float | None, usage: UsageCollector, run_id: Any) -> None:
        """Record a real chain answer with the decision that sent it to the chain (skipped, logged once, on failure).

        An answer that cannot be labelled is recorded too, as an `unparsed` trace (`Tracer.record_answer`):
        never training data, and a disagreement when the call was an audit.
        One no store could take is counted for close().
        """
        if not call.recorded:
            if call.unstored is not None and call.text is not None and call.mode != "off":
                self.unrecorded.add(call.unstored)
            return
        try:
            codec = self.output_codec(output)
            label = codec.to_label(output)
            extra = {"codec": codec.spec}
        except Exception as exc:
            self.warn_once("label", exc)
            label, extra = None, {}
        try:
            tracer, text = call.routed()
            tracer.record_answer(
                text,
                label,
                decision=call.decision,
                model=usage.model,
                latency_ms=latency_ms,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                metadata=self._metadata(call, run_id, **extra),
            )
        except StoreError as exc:  # the store was closed
            self.unrecorded.add(exc)
            self.warn_once("record", exc)
        except Exception as exc:
            self.warn_once("record", exc)

    def record_surrogate(self, call: Call, value: Any, run_id: Any) -> None:
        """Record a surrogate answer (a `surrogate` trace, never training data); continue the session history."""
        try:
            tracer, text = call.routed()
            label, _ = call.answered()
            tracer.record(text, label, decision=call.decision, metadata=self._metadata(call, run_id))
            runnable = self.identity.parts.history
            if call.history is not None and runnable is not None:  # a session history comes from that runnable
                append_turn(call.history, runnable, value, call.output)
        except StoreError as exc:  # the store was closed
            self.unrecorded.add(exc)
            self.warn_once("record", exc)
        except Exception as exc:
            self.warn_once("record", exc)

    # -- flush and close -------------------------------------------------------------------
    def flush(self, timeout: float | None) -> FlushReport:
        """Wait at most `timeout` s for queued traces; the report adds those no store took (never raises)."""
        registry = open_registry(self.db)
        return (registry.flush(timeout) if registry is not None else FlushReport()) + self.unrecorded.report()

    def close(self, timeout: float | None) -> FlushReport:
        """Abandon the running refits of this wrapper's versions, then flush (together within about `timeout` s)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        abandoned = abandon_refits(list(self.tracers.values()), timeout)
        report = self.flush(None if deadline is None else max(deadline - time.monotonic(), 0.0))
        return report + FlushReport(abandoned_refits=abandoned)

    @staticmethod
    def _metadata(call: Call, run_id: Any, **extra: Any) -> dict[str, Any]:
        metadata = {"integration": "langchain", "run_id": str(run_id), **extra}
        if call.mode != "on":
            metadata["tracer_mode"] = call.mode
        return metadata

    def warn_once(self, kind: str, exc: BaseException) -> None:
        """Log the first failure of each kind; the call goes on through the chain."""
        with self._lock:
            if kind in self._warned:
                return
            self._warned.add(kind)
        log.warning("tracer %s failed, using the chain instead: %s: %s", kind, type(exc).__name__, exc)


def _pending_groups(calls: list[Call]) -> list[tuple[Tracer, list[int]]]:
    """The calls still to be routed, grouped by Tracer (one embedding batch per task version)."""
    groups: dict[int, tuple[Tracer, list[int]]] = {}
    for i, call in enumerate(calls):
        if call.decision is None:
            tracer, _ = call.routed()
            groups.setdefault(id(tracer), (tracer, []))[1].append(i)
    return list(groups.values())


def mode_of(config: RunnableConfig) -> str:
    """The per-call `tracer_mode` ("on" unless `configurable.tracer_mode` says otherwise)."""
    mode = (config.get("configurable") or {}).get("tracer_mode", "on")
    if mode not in MODES:
        raise IntegrationConfigError(f"configurable tracer_mode must be one of {MODES}, got {mode!r}")
    return mode
