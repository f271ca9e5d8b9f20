"""`with_tracer`: wrap a LangChain classification chain so certified inputs are answered by the surrogate.

The wrapper is a `RunnableSerializable` (the pattern of langchain-core's `RunnableWithFallbacks`):
it opens its own run, tagged `tracer:surrogate` or `tracer:llm` with metadata `tracer_handled`,
`tracer_policy_version`, `tracer_fingerprint` and `tracer_reason`; on a miss the wrapped chain
runs nested under it and its answer is recorded as a teacher trace; a hit is reported as a
chat-model run nested under it (see `tracer_langchain.emit`).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from langchain_core.callbacks.manager import (
    AsyncCallbackManager,
    AsyncCallbackManagerForChainRun,
    CallbackManager,
    CallbackManagerForChainRun,
)
from langchain_core.runnables import Runnable, RunnableConfig, RunnableSerializable
from langchain_core.runnables.config import (
    ensure_config,
    get_async_callback_manager_for_config,
    get_callback_manager_for_config,
    get_config_list,
    patch_config,
    set_config_context,
)
from langchain_core.runnables.utils import ConfigurableFieldSpec, Input, Output, coro_with_context, get_unique_config_specs
from langchain_core.tracers._streaming import _StreamingCallbackHandler
from langchain_core.utils.pydantic import TypeBaseModel
from pydantic import ConfigDict

from tracer_core import Tracer
from tracer_core.serving.tracer import DEFAULT_CLOSE_TIMEOUT_S
from tracer_core.settings import check
from tracer_core.storage.writer import DEFAULT_FLUSH_TIMEOUT_S, FlushReport
from tracer_langchain.bridge import Call, TracerBridge
from tracer_langchain.codec import CustomCodec
from tracer_langchain.emit import aemit_chat_model_run, emit_chat_model_run
from tracer_langchain.errors import IntegrationConfigError
from tracer_langchain.identity import ChainIdentity
from tracer_langchain.text import TextFn
from tracer_langchain.usage import UsageCollector

TRACER_MODE_SPEC = ConfigurableFieldSpec(
    id="tracer_mode",
    annotation=str,
    name="tracer mode",
    description='"on" routes through tracer; "observe" records but never answers; "off" calls the chain, records nothing.',
    default="on",
)


TRACER_OPTIONS = frozenset(inspect.signature(Tracer).parameters) - {"task", "db", "fingerprint", "self"}


class TracedRunnable(RunnableSerializable[Input, Output]):
    """A chain whose certified inputs are answered by tracer's surrogate; same inputs, same outputs."""

    runnable: Runnable[Input, Output]
    """The wrapped chain (the teacher)."""
    bridge: TracerBridge
    """Task identity, routing, codec and recording against the Tracers of the chain's task versions."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    @property
    def tracer(self) -> Tracer:
        """The Tracer of the task version of the latest call (see `tracer_for` for a given input)."""
        if self.bridge.last_tracer is None:
            raise IntegrationConfigError("no call has been made yet; use tracer_for(input) to get a version's Tracer")
        return self.bridge.last_tracer

    @property
    def tracers(self) -> list[Tracer]:
        """The Tracers of every task version this wrapper has called."""
        return list(self.bridge.tracers.values())

    def tracer_for(self, input: Input, config: RunnableConfig | None = None) -> Tracer:
        """The Tracer of the task version `input` would be routed by."""
        call = self.bridge.prepare(input, ensure_config(config))
        if call.tracer is None:
            raise IntegrationConfigError(f"this input reaches no task version ({call.reason})")
        return call.tracer

    def flush(self, timeout: float | None = DEFAULT_FLUSH_TIMEOUT_S) -> FlushReport:
        """Wait at most `timeout` s for queued traces to be written; the report says what was not
        (`ok` is False while any trace of this wrapper is not in the store). Never raises."""
        return self.bridge.flush(timeout)

    def close(self, timeout: float | None = DEFAULT_CLOSE_TIMEOUT_S) -> FlushReport:
        """Abandon running background refits (they write nothing) and flush traces within about `timeout` s
        (the stores stay open for other users in the process), like `Tracer.close()`; the report says
        what could not be written and which refits were given up. Never raises."""
        return self.bridge.close(timeout)

    # -- schema delegation ---------------------------------------------------------------
    @property
    def InputType(self) -> type[Input]:  # noqa: N802
        return self.runnable.InputType

    @property
    def OutputType(self) -> type[Output]:  # noqa: N802
        return self.runnable.OutputType

    def get_input_schema(self, config: RunnableConfig | None = None) -> TypeBaseModel:
        return self.runnable.get_input_schema(config)

    def get_output_schema(self, config: RunnableConfig | None = None) -> TypeBaseModel:
        return self.runnable.get_output_schema(config)

    @property
    def config_specs(self) -> list[ConfigurableFieldSpec]:
        return get_unique_config_specs([*self.runnable.config_specs, TRACER_MODE_SPEC])

    # -- run helpers ---------------------------------------------------------------------
    def _callback_manager(self, config: RunnableConfig, route: Call, manager: Any) -> Any:
        """The config's callback manager with this run's tracer tag and metadata (not inherited)."""
        manager.add_metadata(route.run_metadata(self.bridge.task), inherit=False)
        manager.add_tags([route.tag], inherit=False)
        return manager

    def _hit(self, value: Any, route: Call, run: CallbackManagerForChainRun) -> None:
        """Report a surrogate answer as a chat-model run under `run`, then record it."""
        try:
            _, view = route.answered()
            emit_chat_model_run(run, view, self.bridge.answer_message(route), route.run_metadata(self.bridge.task))
        except Exception as exc:
            self.bridge.warn_once("events", exc)
        self.bridge.record_surrogate(route, value, run.run_id)

    async def _ahit(self, value: Any, route: Call, run: AsyncCallbackManagerForChainRun) -> None:
        try:
            _, view = route.answered()
            await aemit_chat_model_run(run, view, self.bridge.answer_message(route), route.run_metadata(self.bridge.task))
        except Exception as exc:
            self.bridge.warn_once("events", exc)
        self.bridge.record_surrogate(route, value, run.run_id)

    def _start(self, value: Any, config: RunnableConfig, route: Call) -> CallbackManagerForChainRun:
        manager: CallbackManager = self._callback_manager(config, route, get_callback_manager_for_config(config))
        return manager.on_chain_start(
            None, value, name=config.get("run_name") or self.get_name(), run_id=config.pop("run_id", None)
        )

    async def _astart(self, value: Any, config: RunnableConfig, route: Call) -> AsyncCallbackManagerForChainRun:
        manager: AsyncCallbackManager = self._callback_manager(
            config, route, get_async_callback_manager_for_config(config)
        )
        return await manager.on_chain_start(
            None, value, name=config.get("run_name") or self.get_name(), run_id=config.pop("run_id", None)
        )

    @staticmethod
    def _child(config: RunnableConfig, run: Any) -> tuple[RunnableConfig, UsageCollector]:
        """The inner chain's config: nested under `run`, with a collector for token usage."""
        usage = UsageCollector()
        child = run.get_child()
        child.add_handler(usage, inherit=True)
        return patch_config(config, callbacks=child), usage

    # -- invoke --------------------------------------------------------------------------
    def invoke(self, input: Input, config: RunnableConfig | None = None, **kwargs: Any) -> Output:
        config = ensure_config(config)
        route = self.bridge.route(input, config)
        run = self._start(input, config, route)
        if route.hit:
            self._hit(input, route, run)
            run.on_chain_end(route.output)
            return route.output
        child_config, usage = self._child(config, run)
        started = time.perf_counter()
        try:
            with set_config_context(child_config) as context:
                output = context.run(self.runnable.invoke, input, child_config, **kwargs)
        except BaseException as exc:
            run.on_chain_error(exc)
            raise
        self.bridge.record_teacher(route, output, _ms_since(started), usage, run.run_id)
        run.on_chain_end(output)
        return output

    async def ainvoke(self, input: Input, config: RunnableConfig | None = None, **kwargs: Any) -> Output:
        config = ensure_config(config)
        route = await self.bridge.aroute(input, config)
        run = await self._astart(input, config, route)
        if route.hit:
            await self._ahit(input, route, run)
            await run.on_chain_end(route.output)
            return route.output
        child_config, usage = self._child(config, run)
        started = time.perf_counter()
        try:
            with set_config_context(child_config) as context:
                coro = context.run(self.runnable.ainvoke, input, child_config, **kwargs)
                output = await coro_with_context(coro, context)
        except BaseException as exc:
            await run.on_chain_error(exc)
            raise
        self.bridge.record_teacher(route, output, _ms_since(started), usage, run.run_id)
        await run.on_chain_end(output)
        return output

    # -- batch ---------------------------------------------------------------------------
    def batch(
        self,
        inputs: list[Input],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Output]:
        if not inputs:
            return []
        configs = get_config_list(config, len(inputs))
        routes = self.bridge.route_many(inputs, configs)
        runs = [self._start(x, c, r) for x, c, r in zip(inputs, configs, routes, strict=True)]
        misses = self._end_hits(inputs, routes, runs)
        outputs: dict[int, Any] = {}
        if misses:
            children = [self._child(configs[i], runs[i]) for i in misses]
            started = time.perf_counter()
            results = self.runnable.batch(
                [inputs[i] for i in misses], [c for c, _ in children], return_exceptions=True, **kwargs
            )
            latency = _ms_since(started)
            for i, (_, usage), result in zip(misses, children, results, strict=True):
                if isinstance(result, BaseException):
                    runs[i].on_chain_error(result)
                else:
                    self.bridge.record_teacher(routes[i], result, latency, usage, runs[i].run_id)
                    runs[i].on_chain_end(result)
                outputs[i] = result
        return _collect(routes, outputs, return_exceptions)

    async def abatch(
        self,
        inputs: list[Input],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Output]:
        if not inputs:
            return []
        configs = get_config_list(config, len(inputs))
        routes = await self.bridge.aroute_many(inputs, configs)
        runs = [await self._astart(x, c, r) for x, c, r in zip(inputs, configs, routes, strict=True)]
        misses = await self._aend_hits(inputs, routes, runs)
        outputs: dict[int, Any] = {}
        if misses:
            children = [self._child(configs[i], runs[i]) for i in misses]
            started = time.perf_counter()
            results = await self.runnable.abatch(
                [inputs[i] for i in misses], [c for c, _ in children], return_exceptions=True, **kwargs
            )
            latency = _ms_since(started)
            for i, (_, usage), result in zip(misses, children, results, strict=True):
                if isinstance(result, BaseException):
                    await runs[i].on_chain_error(result)
                else:
                    self.bridge.record_teacher(routes[i], result, latency, usage, runs[i].run_id)
                    await runs[i].on_chain_end(result)
                outputs[i] = result
        return _collect(routes, outputs, return_exceptions)

    def _end_hits(self, inputs: list[Any], routes: list[Call], runs: list[CallbackManagerForChainRun]) -> list[int]:
        """End the runs answered by the surrogate; return the indices that need the chain."""
        for value, route, run in zip(inputs, routes, runs, strict=True):
            if route.hit:
                self._hit(value, route, run)
                run.on_chain_end(route.output)
        return [i for i, route in enumerate(routes) if not route.hit]

    async def _aend_hits(
        self, inputs: list[Any], routes: list[Call], runs: list[AsyncCallbackManagerForChainRun]
    ) -> list[int]:
        for value, route, run in zip(inputs, routes, runs, strict=True):
            if route.hit:
                await self._ahit(value, route, run)
                await run.on_chain_end(route.output)
        return [i for i, route in enumerate(routes) if not route.hit]

    # -- stream --------------------------------------------------------------------------
    def stream(self, input: Input, config: RunnableConfig | None = None, **kwargs: Any) -> Iterator[Output]:
        config = ensure_config(config)
        route = self.bridge.route(input, config, chunk=True)
        run = self._start(input, config, route)
        if route.hit:
            self._hit(input, route, run)
            yield from _tap(run, iter([route.output]))
            run.on_chain_end(route.output)
            return
        child_config, usage = self._child(config, run)
        started = time.perf_counter()
        final: Any = None
        try:
            for chunk in _tap(run, self.runnable.stream(input, child_config, **kwargs)):
                yield chunk
                final = _add(final, chunk)
        except GeneratorExit:
            run.on_chain_end(final)
            return
        except BaseException as exc:
            run.on_chain_error(exc)
            raise
        self.bridge.record_teacher(route, final, _ms_since(started), usage, run.run_id)
        run.on_chain_end(final)

    async def astream(
        self, input: Input, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[Output]:
        config = ensure_config(config)
        route = await self.bridge.aroute(input, config, chunk=True)
        run = await self._astart(input, config, route)
        if route.hit:
            await self._ahit(input, route, run)
            async for chunk in _atap(run, _once(route.output)):
                yield chunk
            await run.on_chain_end(route.output)
            return
        child_config, usage = self._child(config, run)
        started = time.perf_counter()
        final: Any = None
        try:
            async for chunk in _atap(run, self.runnable.astream(input, child_config, **kwargs)):
                yield chunk
                final = _add(final, chunk)
        except GeneratorExit:
            await run.on_chain_end(final)
            return
        except BaseException as exc:
            await run.on_chain_error(exc)
            raise
        self.bridge.record_teacher(route, final, _ms_since(started), usage, run.run_id)
        await run.on_chain_end(final)


def with_tracer(
    chain: Runnable,
    task: str,
    *,
    alpha: float = 0.95,
    delta: float = 0.05,
    audit_rate: float | None = None,
    db: Any = None,
    fingerprint: str | None = None,
    embedder: Callable | None = None,
    text_fn: TextFn | None = None,
    input_key: str | None = None,
    ignore_inputs: Sequence[str] = (),
    to_label: Callable[[Any], str] | None = None,
    from_label: Callable[[str], Any] | None = None,
    **tracer_options: Any,
) -> TracedRunnable:
    """Wrap `chain` so tracer answers the inputs its certified surrogate covers; everything else runs the chain.

    Each call is routed by the Tracer of its task version: the chain's prompt rendered with
    the call's input, its chat model and parameters, its output schema and the inputs the
    prompt does not consume (see `tracer_langchain.identity`). `input_key` names the routed
    field; `ignore_inputs` names inputs that do not change the answer (rendered with a fixed
    placeholder, left out of the version); `fingerprint` pins one version for every call
    (the user vouches that nothing else changes the answer; history and non-text content
    still go to the chain). `audit_rate` is the share of covered calls the chain still
    answers so the certificate keeps fresh evidence (`tracer_core.Tracer`'s default if None).
    """
    _check_arguments(chain, task, text_fn, input_key, ignore_inputs, to_label, from_label, fingerprint)
    unknown = sorted(set(tracer_options) - TRACER_OPTIONS)
    if unknown:
        raise IntegrationConfigError(
            f"with_tracer got unknown option(s) {unknown}; Tracer options are {sorted(TRACER_OPTIONS)} "
            "(each task version's Tracer is shared through tracer_core.registry_for(db))"
        )
    options = {"alpha": check("alpha", alpha), "delta": check("delta", delta), "embedder": embedder, **tracer_options}
    if audit_rate is not None:
        options["audit_rate"] = check("audit_rate", audit_rate)
    identity = ChainIdentity(chain, input_key=input_key, ignore_inputs=tuple(ignore_inputs), pinned=fingerprint)
    # _check_arguments let through both or neither
    codec = CustomCodec(to_label, from_label) if to_label is not None and from_label is not None else None
    bridge = TracerBridge(
        task, identity, db=db, text_fn=text_fn, input_key=input_key, codec=codec, tracer_options=options
    )
    return TracedRunnable(runnable=chain, bridge=bridge)


def _check_arguments(
    chain: Any, task: Any, text_fn: Any, input_key: Any, ignore_inputs: Any, to_label: Any, from_label: Any,
    fingerprint: Any,
) -> None:
    if not isinstance(chain, Runnable):
        raise IntegrationConfigError(f"with_tracer needs a LangChain Runnable, got {type(chain).__name__}")
    if not isinstance(task, str) or not task.strip():
        raise IntegrationConfigError(f"task must be a non-empty string, got {task!r}")
    if text_fn is not None and not callable(text_fn):
        raise IntegrationConfigError(f"text_fn must be callable, got {type(text_fn).__name__}")
    if input_key is not None and (not isinstance(input_key, str) or not input_key):
        raise IntegrationConfigError(f"input_key must be a non-empty string, got {input_key!r}")
    if isinstance(ignore_inputs, str) or not all(isinstance(k, str) and k for k in ignore_inputs):
        raise IntegrationConfigError(f"ignore_inputs must be a sequence of input names, got {ignore_inputs!r}")
    if input_key is not None and input_key in ignore_inputs:
        raise IntegrationConfigError(f"input_key {input_key!r} is the routed input; it cannot also be ignored")
    if fingerprint is not None and (not isinstance(fingerprint, str) or not fingerprint.strip()):
        raise IntegrationConfigError(f"fingerprint must be a non-empty string, got {fingerprint!r}")
    if (to_label is None) != (from_label is None):
        raise IntegrationConfigError("to_label and from_label go together: pass both or neither")
    for name, fn in (("to_label", to_label), ("from_label", from_label)):
        if fn is not None and not callable(fn):
            raise IntegrationConfigError(f"{name} must be callable, got {type(fn).__name__}")


def _collect(routes: list[Call], outputs: dict[int, Any], return_exceptions: bool) -> list[Any]:
    """Outputs in input order; the first chain error is raised unless `return_exceptions`."""
    results = [route.output if route.hit else outputs[i] for i, route in enumerate(routes)]
    if not return_exceptions:
        for result in results:
            if isinstance(result, BaseException):
                raise result
    return results


def _add(final: Any, chunk: Any) -> Any:
    """Merge stream chunks like LangChain does (`+`); unaddable chunks (cumulative dicts) keep the latest."""
    if final is None:
        return chunk
    try:
        return final + chunk
    except TypeError:
        return chunk


def _tap(run: CallbackManagerForChainRun, iterator: Iterator[Any]) -> Iterator[Any]:
    """Let astream_log / astream_events see this run's streamed output."""
    handler = next((h for h in run.handlers if isinstance(h, _StreamingCallbackHandler)), None)
    return handler.tap_output_iter(run.run_id, iterator) if handler else iterator


def _atap(run: AsyncCallbackManagerForChainRun, iterator: AsyncIterator[Any]) -> AsyncIterator[Any]:
    handler = next((h for h in run.handlers if isinstance(h, _StreamingCallbackHandler)), None)
    return handler.tap_output_aiter(run.run_id, iterator) if handler else iterator


async def _once(value: Any) -> AsyncIterator[Any]:
    yield value


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
