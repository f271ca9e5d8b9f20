"""One Tracer per task version and store in a process, shared by every integration.

The LangChain wrapper and the LiteLLM callback both ask `registry_for(db).tracer(task, identity)`,
so the same prompt and model reach the same Tracer (and the same traces, policy and
refit schedule) whichever integration made the call.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Any

from tracer_core.errors import TracerError
from tracer_core.identity import TaskIdentity
from tracer_core.store import TraceStore
from tracer_core.store_address import resolve_path, store_key
from tracer_core.tracer import Tracer
from tracer_core.writer import DEFAULT_FLUSH_TIMEOUT_S, FlushReport

MAX_TRACERS = 512  # least recently used task versions beyond this are let go (their data stays in the store)
_SHARED_SETTINGS = ("alpha", "delta")


class TracerRegistry:
    """The Tracers of one store, keyed by (task, fingerprint)."""

    def __init__(self, store: TraceStore) -> None:
        self.store = store
        self._tracers: OrderedDict[tuple[str, str], Tracer] = OrderedDict()
        self._registered: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def tracer(self, task: str, identity: TaskIdentity | None = None, *, fingerprint: str | None = None,
               **options: Any) -> Tracer:
        """The Tracer of `task` at `identity`'s fingerprint (or `fingerprint`), made on first use."""
        fp = identity.fingerprint if identity is not None else (fingerprint or "")
        key = (task, fp)
        with self._lock:
            tracer = self._tracers.get(key)
            if tracer is None:
                tracer = Tracer(task, self.store, fingerprint=fp, **options)
                self._tracers[key] = tracer
                self._evict()
            else:
                self._tracers.move_to_end(key)
                _check_same(tracer, options)
        if identity is not None and key not in self._registered:
            self.store.register_version(task, fp, identity.description(), identity.origin)
            self._registered.add(key)
        return tracer

    def tracers(self) -> list[Tracer]:
        with self._lock:
            return list(self._tracers.values())

    def flush(self, timeout: float | None = DEFAULT_FLUSH_TIMEOUT_S) -> FlushReport:
        """Wait at most `timeout` s for the store's queued traces; the report says what was not written."""
        return self.store.flush(timeout)

    def _evict(self) -> None:
        while len(self._tracers) > MAX_TRACERS:
            for key, tracer in self._tracers.items():
                if not tracer.refits.running:
                    del self._tracers[key]
                    break
            else:
                return


def _check_same(tracer: Tracer, options: dict[str, Any]) -> None:
    for name in _SHARED_SETTINGS:
        if name in options and float(options[name]) != getattr(tracer, name):
            raise TracerError(
                f"task {tracer.task!r} (version {tracer.fingerprint or '-'}) is already routed in this process "
                f"with {name} {getattr(tracer, name)}; got {options[name]}"
            )


_REGISTRIES: dict[str, TracerRegistry] = {}
_REGISTRIES_LOCK = threading.Lock()


def registry_for(db: str | os.PathLike | TraceStore | None = None) -> TracerRegistry:
    """The process-wide registry of a store (the store is opened once per path)."""
    key = db.key if isinstance(db, TraceStore) else store_key(resolve_path(db))
    with _REGISTRIES_LOCK:
        registry = _REGISTRIES.get(key)
        if registry is None or registry.store.closed:
            registry = TracerRegistry(db if isinstance(db, TraceStore) else TraceStore(key))
            _REGISTRIES[key] = registry
        return registry
