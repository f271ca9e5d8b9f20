"""Time tracer's own work on the caller's thread: its entry points, minus the embedding.

`CallerClock` wraps the methods a call runs through on the caller's thread (the integrations'
hooks, `Tracer.route` and `record`, the registry) and the embedding function; `with clock.call():`
measures one call. Only the outermost wrapped method on a thread is timed (so nested entry points
count once), and time spent embedding on that thread is taken off: what is left is the caller's
wait on tracer's own work (store reads and writes, version registration, locks, connections) that
issue 22 bounds at 50 ms. Pauses of the interpreter's garbage collector inside a measured call are
counted apart (`gc_ms`): any Python code can hit one (a full collection takes about 0.5 s once
torch is loaded), and they are the interpreter's, not a wait on the store.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

# (module, class or None, attribute): every place a call through tracer runs tracer's code on its thread
ENTRY_POINTS = (
    ("tracer_core.serving.registry", None, "registry_for"),
    ("tracer_langchain.bridge", None, "registry_for"),  # imported there by name
    ("tracer_litellm.callback", None, "registry_for"),
    ("tracer_core.serving.registry", "TracerRegistry", "tracer"),
    ("tracer_core.serving.tracer", "Tracer", "route_many"),
    ("tracer_core.serving.tracer", "Tracer", "record"),
    ("tracer_core.serving.tracer", "Tracer", "record_answer"),  # the LLM cache's path; it no longer goes through record
    ("tracer_langchain.bridge", "TracerBridge", "prepare"),
    ("tracer_langchain.bridge", "TracerBridge", "route"),
    ("tracer_langchain.bridge", "TracerBridge", "record_teacher"),
    ("tracer_langchain.bridge", "TracerBridge", "record_surrogate"),
    ("tracer_litellm.callback", "TracerCallback", "answer_sync"),
    ("tracer_litellm.callback", "TracerCallback", "on_response"),
)


class CallerClock:
    """Measures tracer's time on the caller's thread, call by call (see the module docstring)."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._patched: list[tuple[Any, str, Any]] = []
        self.waits_ms: list[float] = []
        self.gc_ms: list[float] = []

    def embedder(self, embed: Callable[[list[str]], np.ndarray]) -> Callable[[list[str]], np.ndarray]:
        """`embed`, with the time it takes on a measured thread taken off that call."""

        def timed(texts: list[str]) -> np.ndarray:
            start = time.perf_counter()
            try:
                return embed(texts)
            finally:
                self._local.embedding = getattr(self._local, "embedding", 0.0) + time.perf_counter() - start

        return timed

    def install(self) -> CallerClock:
        import importlib

        for module_name, class_name, attribute in ENTRY_POINTS:
            owner = importlib.import_module(module_name)
            if class_name is not None:
                owner = getattr(owner, class_name)
            original = getattr(owner, attribute)
            self._patched.append((owner, attribute, original))
            setattr(owner, attribute, self._timed(original))
        gc.callbacks.append(self._on_gc)
        return self

    def remove(self) -> None:
        gc.callbacks.remove(self._on_gc)
        for owner, attribute, original in reversed(self._patched):
            setattr(owner, attribute, original)
        self._patched.clear()

    def __enter__(self) -> CallerClock:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.remove()

    @contextlib.contextmanager
    def call(self) -> Iterator[None]:
        """Measure one call made on this thread; its wait (ms) is appended to `waits_ms`."""
        self._local.tracer = self._local.embedding = self._local.gc = 0.0
        try:
            yield
        finally:
            local = self._local
            self.waits_ms.append(max(local.tracer - local.embedding - local.gc, 0.0) * 1000.0)
            self.gc_ms.append(local.gc * 1000.0)

    @property
    def longest_ms(self) -> float:
        return max(self.waits_ms, default=0.0)

    @property
    def gc_note(self) -> str:
        """What the garbage collector took inside the calls (taken off their waits), if anything."""
        longest = max(self.gc_ms, default=0.0)
        return f"; GC pauses inside calls (taken off) up to {longest:.0f} ms" if longest >= 1.0 else ""

    def _on_gc(self, phase: str, info: dict) -> None:
        """A garbage collection on a thread inside a measured entry point: its pause is not tracer's wait."""
        local = self._local
        if not getattr(local, "depth", 0):
            return
        if phase == "start":
            local.gc_started = time.perf_counter()
        elif getattr(local, "gc_started", None) is not None:
            local.gc = getattr(local, "gc", 0.0) + time.perf_counter() - local.gc_started
            local.gc_started = None

    def _timed(self, fn: Callable) -> Callable:
        local = self._local

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if getattr(local, "depth", 0):
                return fn(*args, **kwargs)
            local.depth = 1
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                local.depth = 0
                local.tracer = getattr(local, "tracer", 0.0) + time.perf_counter() - start

        return timed
