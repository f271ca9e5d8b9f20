"""One Tracer per task version and store in a process, shared by every integration.

The LangChain wrapper and the LiteLLM callback both ask `registry_for(db).tracer(task, identity)`,
so the same prompt and model reach the same Tracer (and the same traces, policy and
refit schedule) whichever integration made the call, and a version already in the store is
found by its fingerprint whatever integration named it (`tracer_core.serving.naming`). Nothing here waits on the store: it is
opened in the background, and a new version is registered in the background.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from typing import Any

from tracer_core.background import Job
from tracer_core.errors import StoreError, TracerError
from tracer_core.identity import TaskIdentity
from tracer_core.serving.naming import TaskNames
from tracer_core.serving.tracer import Tracer
from tracer_core.storage.store import WRITER_LOCK_BUDGET_S, TraceStore
from tracer_core.storage.writer import DEFAULT_FLUSH_TIMEOUT_S, FlushReport
from tracer_core.store_address import resolve_path, store_key

MAX_TRACERS = 512  # least recently used task versions beyond this are let go (their data stays in the store)
REGISTER_RETRY_S = 5.0  # a version whose registration failed (e.g. a locked store) is tried again after this
_SHARED_SETTINGS = ("alpha", "delta")


class TracerRegistry:
    """The Tracers of one store, keyed by (task, fingerprint)."""

    def __init__(self, store: TraceStore) -> None:
        self.store = store
        self.names = TaskNames(store)
        self._tracers: OrderedDict[tuple[str, str], Tracer] = OrderedDict()
        self._registered: set[tuple[str, str]] = set()
        self._registering: dict[tuple[str, str], Job[None]] = {}
        self._lock = threading.Lock()

    def tracer(self, task: str, identity: TaskIdentity | None = None, *, fingerprint: str | None = None,
               named: bool = True, **options: Any) -> Tracer:
        """The Tracer of `task` at `identity`'s fingerprint (or `fingerprint`), made on first use.

        With an identity the task is the one the version is stored under (`tracer_core.serving.naming`):
        `named=False` says the call named none (`task` is then its automatic name).
        """
        fp = identity.fingerprint if identity is not None else (fingerprint or "")
        confirmed = True
        if identity is not None:
            task, confirmed = self.names.task_for(fp, task, named=named)
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
        if identity is not None and confirmed:  # a name the store has not confirmed yet is not registered
            self._register(key, identity)
        return tracer

    def _register(self, key: tuple[str, str], identity: TaskIdentity) -> None:
        """Record what a version describes on the store's writing thread (a locked or hung store never
        holds up the call); a failed registration is tried again by a call REGISTER_RETRY_S later."""
        with self._lock:
            job = self._registering.get(key)
            if key in self._registered or (job is not None and (job.finished is None or job.age < REGISTER_RETRY_S)):
                return
            task, fp = key
            self._registering[key] = self.store.background_write(
                lambda: self.store.register_version(task, fp, identity.description(), identity.origin,
                                                    budget_s=WRITER_LOCK_BUDGET_S),
                lambda done: self._registered_now(key, done),
            )

    def _registered_now(self, key: tuple[str, str], job: Job[None]) -> None:
        if job.error is None:
            with self._lock:
                self._registered.add(key)
                self._registering.pop(key, None)

    def tracers(self) -> list[Tracer]:
        with self._lock:
            return list(self._tracers.values())

    def flush(self, timeout: float | None = DEFAULT_FLUSH_TIMEOUT_S) -> FlushReport:
        """Wait at most `timeout` s for the store's queued traces and version registrations; the report
        says what was not written."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            registering = [job for job in self._registering.values() if job.finished is None]
        for job in registering:
            try:
                job.result(None if deadline is None else max(deadline - time.monotonic(), 0.0))
            except Exception:  # noqa: BLE001 - a description not written yet is retried, and is not a trace
                pass
        return self.store.flush(None if deadline is None else max(deadline - time.monotonic(), 0.0))

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
    """The process-wide registry of a store (opened once per path, in the background).

    Raises StoreError at once for an address that cannot be a store (a directory, a malformed URL, ...).
    """
    key = db.key if isinstance(db, TraceStore) else store_key(resolve_path(db))
    with _REGISTRIES_LOCK:
        registry = _REGISTRIES.get(key)
        if registry is None or registry.store.closed:
            registry = TracerRegistry(db if isinstance(db, TraceStore) else TraceStore(key, background=True))
            _REGISTRIES[key] = registry
        return registry


def open_registry(db: str | os.PathLike | TraceStore | None = None) -> TracerRegistry | None:
    """The registry of `db` if this process has opened its store (opens nothing)."""
    try:
        key = db.key if isinstance(db, TraceStore) else store_key(resolve_path(db))
    except StoreError:
        return None
    with _REGISTRIES_LOCK:
        registry = _REGISTRIES.get(key)
        return None if registry is None or registry.store.closed else registry


class Unrecorded:
    """Traces an integration meant to record that no store took (it could not be opened, or was closed):
    its flush() and close() report them as lost."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0
        self._why: str | None = None

    def add(self, exc: BaseException) -> None:
        with self._lock:
            self._count += 1
            self._why = str(exc)

    def report(self) -> FlushReport:
        with self._lock:
            return FlushReport(lost=self._count, degraded=self._why)
