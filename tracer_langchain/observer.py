"""Observe-only adoption: a callback handler that records traces of chain runs without routing anything.

    observer = observe(task="support-intent", chain=chain)   # process-wide, no other code change
    ...
    stop_observing(observer)

It records each top-level chain run (optionally only those named `run_name`) as a teacher
trace of the task version `with_tracer(chain, ...)` would give the same input (see
`tracer_langchain.identity`): the run's input text, its output as a label, latency and the
token usage its LLM calls reported. Runs of `with_tracer` wrappers are skipped (they record
themselves).
"""

from __future__ import annotations

import threading
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.outputs import LLMResult
from langchain_core.runnables import Runnable
from langchain_core.tracers import context as tracer_context

from tracer_langchain.bridge import SURROGATE_TAG, TEACHER_TAG, TracerBridge
from tracer_langchain.codec import CustomCodec
from tracer_langchain.errors import AmbiguousTextError, IntegrationConfigError
from tracer_langchain.identity import ChainIdentity
from tracer_langchain.text import TextFn
from tracer_langchain.usage import UsageCollector


@dataclass
class _Watched:
    """A top-level run being watched."""

    input: Any
    started: float = field(default_factory=time.perf_counter)
    usage: UsageCollector = field(default_factory=UsageCollector)


class TracerObserver(BaseCallbackHandler):
    """Records top-level chain runs as teacher traces of their task versions; never changes what a chain returns."""

    run_inline = True

    def __init__(self, bridge: TracerBridge, *, run_name: str | None = None) -> None:
        super().__init__()
        self.bridge = bridge
        self.run_name = run_name
        self._lock = threading.Lock()
        self._watched: dict[UUID, _Watched] = {}
        self._root_of: dict[UUID, UUID] = {}

    def flush(self) -> None:
        for tracer in list(self.bridge.tracers.values()):
            tracer.flush()

    def on_chain_start(
        self,
        serialized: dict[str, Any] | None,
        inputs: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        with self._lock:
            if parent_run_id is not None:
                self._note_child(run_id, parent_run_id)
            elif self._selected(name, tags):
                self._watched[run_id] = _Watched(inputs)

    def on_chat_model_start(self, serialized: Any, messages: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        with self._lock:
            self._note_child(run_id, parent_run_id)

    def on_llm_start(self, serialized: Any, prompts: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        with self._lock:
            self._note_child(run_id, parent_run_id)

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        with self._lock:
            watched = self._watched.get(self._root_of.pop(run_id, run_id))
        if watched is not None:
            watched.usage.on_llm_end(response)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        with self._lock:
            self._root_of.pop(run_id, None)

    def on_chain_end(self, outputs: Any, *, run_id: UUID, inputs: Any = None, **kwargs: Any) -> None:
        with self._lock:
            self._root_of.pop(run_id, None)
            watched = self._watched.pop(run_id, None)
        if watched is None:
            return
        value = inputs if inputs is not None else watched.input
        try:
            call = self.bridge.prepare(value, {})
        except AmbiguousTextError as exc:  # the run is over: say so once, record nothing
            self.bridge.warn_once("text", exc)
            return
        latency_ms = (time.perf_counter() - watched.started) * 1000.0
        # recorded outside routing (no decision) unless the identity blocks routing (history, non-text)
        self.bridge.record_teacher(call, outputs, latency_ms, watched.usage, run_id)

    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        with self._lock:
            self._root_of.pop(run_id, None)
            self._watched.pop(run_id, None)

    def _note_child(self, run_id: UUID, parent_run_id: UUID | None) -> None:
        if parent_run_id is not None:
            self._root_of[run_id] = self._root_of.get(parent_run_id, parent_run_id)

    def _selected(self, name: str | None, tags: list[str] | None) -> bool:
        if tags and (SURROGATE_TAG in tags or TEACHER_TAG in tags):
            return False
        return self.run_name is None or name == self.run_name


_hooks: dict[int, ContextVar] = {}


def observe(
    task: str,
    chain: Runnable,
    *,
    db: Any = None,
    run_name: str | None = None,
    text_fn: TextFn | None = None,
    input_key: str | None = None,
    ignore_inputs: tuple[str, ...] = (),
    fingerprint: str | None = None,
    to_label: Any = None,
    **tracer_options: Any,
) -> TracerObserver:
    """Attach a `TracerObserver` of `chain`'s task versions to every LangChain run in this process (all threads).

    The traces land in the versions `with_tracer(chain, task=task, ...)` with the same options
    will route later; give `run_name=` to watch only runs of that name.
    """
    if not isinstance(task, str) or not task.strip():
        raise IntegrationConfigError(f"observe needs task= (a non-empty string), got task={task!r}")
    if not isinstance(chain, Runnable):
        raise IntegrationConfigError(f"observe needs the observed chain (a Runnable), got {type(chain).__name__}")
    identity = ChainIdentity(chain, input_key=input_key, ignore_inputs=ignore_inputs, pinned=fingerprint)
    # An observer never builds answers, so a custom codec needs only to_label.
    codec = CustomCodec(to_label, str) if to_label is not None else None
    bridge = TracerBridge(task, identity, db=db, text_fn=text_fn, input_key=input_key, codec=codec,
                          tracer_options=tracer_options)
    observer = TracerObserver(bridge, run_name=run_name)
    var: ContextVar = ContextVar(f"tracer_observer_{id(observer)}", default=observer)
    tracer_context.register_configure_hook(var, inheritable=True)
    _hooks[id(observer)] = var
    return observer


def stop_observing(observer: TracerObserver) -> None:
    """Detach an observer attached by `observe` and flush its traces."""
    var = _hooks.pop(id(observer), None)
    if var is not None:
        tracer_context._configure_hooks[:] = [hook for hook in tracer_context._configure_hooks if hook[0] is not var]
    observer.flush()
