"""`with_tracer`: wrap a LangChain classification chain so certified inputs are answered by the surrogate.

The wrapper is a `RunnableSerializable` (the pattern of langchain-core's `RunnableWithFallbacks`):
it opens its own run, tagged `tracer:surrogate` or `tracer:llm` with metadata `tracer_handled`,
`tracer_policy_version`; on a miss the wrapped chain runs nested under it and its answer is
recorded as a teacher trace.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
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

from tracer_core.tracer import DEFAULT_CLOSE_TIMEOUT_S
from tracer_core.writer import FlushReport
from tracer_langchain.bridge import Route, TracerBridge
from tracer_langchain.codec import CustomCodec
from tracer_langchain.errors import IntegrationConfigError
from tracer_langchain.fingerprint import chain_fingerprint
from tracer_langchain.text import TextFn
from tracer_langchain.usage import UsageCollector

TRACER_MODE_SPEC = ConfigurableFieldSpec(
    id="tracer_mode",
    annotation=str,
    name="tracer mode",
    description='"on" routes through tracer; "off" always calls the wrapped chain.',
    default="on",
)


class TracedRunnable(RunnableSerializable[Input, Output]):
    """A chain whose certified inputs are answered by tracer's surrogate; same inputs, same outputs."""

    runnable: Runnable[Input, Output]
    """The wrapped chain (the teacher)."""
    bridge: TracerBridge
    """Routing, codec and recording against the `tracer_core.Tracer`."""
    owns_tracer: bool = False
    """Whether `close()` closes the tracer (it was created by `with_tracer`)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    @property
    def tracer(self) -> Any:
        return self.bridge.tracer

    def close(self, timeout: float | None = DEFAULT_CLOSE_TIMEOUT_S) -> FlushReport:
        """Flush traces and close the tracer if this wrapper created it (within about `timeout` s)."""
        if self.owns_tracer:
            return self.tracer.close(timeout)
        return self.tracer.flush(timeout)

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
    def _callback_manager(self, config: RunnableConfig, route: Route, manager: Any) -> Any:
        """The config's callback manager with this run's tracer tag and metadata (not inherited)."""
        manager.add_metadata(route.run_metadata(self.bridge.tracer.task), inherit=False)
        manager.add_tags([route.tag], inherit=False)
        return manager

    def _start(self, value: Any, config: RunnableConfig, route: Route) -> CallbackManagerForChainRun:
        manager: CallbackManager = self._callback_manager(config, route, get_callback_manager_for_config(config))
        return manager.on_chain_start(
            None, value, name=config.get("run_name") or self.get_name(), run_id=config.pop("run_id", None)
        )

    async def _astart(self, value: Any, config: RunnableConfig, route: Route) -> AsyncCallbackManagerForChainRun:
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
            run.on_chain_end(route.output)
            self.bridge.record_surrogate(route, run.run_id)
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
            await run.on_chain_end(route.output)
            self.bridge.record_surrogate(route, run.run_id)
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
        misses = self._end_hits(routes, runs)
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
        misses = await self._aend_hits(routes, runs)
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

    def _end_hits(self, routes: list[Route], runs: list[CallbackManagerForChainRun]) -> list[int]:
        """End the runs answered by the surrogate; return the indices that need the chain."""
        for route, run in zip(routes, runs, strict=True):
            if route.hit:
                run.on_chain_end(route.output)
                self.bridge.record_surrogate(route, run.run_id)
        return [i for i, route in enumerate(routes) if not route.hit]

    async def _aend_hits(self, routes: list[Route], runs: list[AsyncCallbackManagerForChainRun]) -> list[int]:
        for route, run in zip(routes, runs, strict=True):
            if route.hit:
                await run.on_chain_end(route.output)
                self.bridge.record_surrogate(route, run.run_id)
        return [i for i, route in enumerate(routes) if not route.hit]

    # -- stream --------------------------------------------------------------------------
    def stream(self, input: Input, config: RunnableConfig | None = None, **kwargs: Any) -> Iterator[Output]:
        config = ensure_config(config)
        route = self.bridge.route(input, config, chunk=True)
        run = self._start(input, config, route)
        if route.hit:
            yield from _tap(run, iter([route.output]))
            run.on_chain_end(route.output)
            self.bridge.record_surrogate(route, run.run_id)
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
            async for chunk in _atap(run, _once(route.output)):
                yield chunk
            await run.on_chain_end(route.output)
            self.bridge.record_surrogate(route, run.run_id)
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
    db: Any = None,
    tracer: Any = None,
    fingerprint: str | None = None,
    embedder: Callable | None = None,
    text_fn: TextFn | None = None,
    input_key: str | None = None,
    to_label: Callable[[Any], str] | None = None,
    from_label: Callable[[str], Any] | None = None,
    **tracer_options: Any,
) -> TracedRunnable:
    """Wrap `chain` so tracer answers the inputs its certified surrogate covers; everything else runs the chain.

    `fingerprint` defaults to `chain_fingerprint(chain)`; pass `tracer=` to share an existing
    `tracer_core.Tracer` (then `alpha`, `delta`, `db`, `fingerprint`, `embedder` and options are its own).
    """
    _check_arguments(chain, task, tracer, text_fn, input_key, to_label, from_label)
    owns_tracer = tracer is None
    if tracer is None:
        from tracer_core import Tracer

        tracer = Tracer(
            task=task,
            db=db,
            alpha=alpha,
            delta=delta,
            fingerprint=fingerprint or _fingerprint_of(chain),
            embedder=embedder,
            **tracer_options,
        )
    elif db is not None or fingerprint is not None or embedder is not None or tracer_options:
        raise IntegrationConfigError("pass either tracer= or the options to build one (db, fingerprint, ...), not both")
    elif tracer.task != task:
        raise IntegrationConfigError(f"task {task!r} differs from the given tracer's task {tracer.task!r}")
    codec = CustomCodec(to_label, from_label) if to_label is not None else None
    bridge = TracerBridge(tracer=tracer, text_fn=text_fn, input_key=input_key, codec=codec)
    return TracedRunnable(runnable=chain, bridge=bridge, owns_tracer=owns_tracer)


def _check_arguments(
    chain: Any, task: Any, tracer: Any, text_fn: Any, input_key: Any, to_label: Any, from_label: Any
) -> None:
    if not isinstance(chain, Runnable):
        raise IntegrationConfigError(f"with_tracer needs a LangChain Runnable, got {type(chain).__name__}")
    if tracer is None and (not isinstance(task, str) or not task.strip()):
        raise IntegrationConfigError(f"task must be a non-empty string, got {task!r}")
    if text_fn is not None and not callable(text_fn):
        raise IntegrationConfigError(f"text_fn must be callable, got {type(text_fn).__name__}")
    if input_key is not None and (not isinstance(input_key, str) or not input_key):
        raise IntegrationConfigError(f"input_key must be a non-empty string, got {input_key!r}")
    if (to_label is None) != (from_label is None):
        raise IntegrationConfigError("to_label and from_label go together: pass both or neither")
    for name, fn in (("to_label", to_label), ("from_label", from_label)):
        if fn is not None and not callable(fn):
            raise IntegrationConfigError(f"{name} must be callable, got {type(fn).__name__}")


def _fingerprint_of(chain: Runnable) -> str:
    try:
        return chain_fingerprint(chain)
    except Exception as exc:
        raise IntegrationConfigError(
            f"cannot derive a task fingerprint from this chain ({type(exc).__name__}: {exc}); pass fingerprint="
        ) from exc


def _collect(routes: list[Route], outputs: dict[int, Any], return_exceptions: bool) -> list[Any]:
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
