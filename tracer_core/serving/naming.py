"""Which task a version's calls belong to, whichever integration made them: one trace set and one policy per prompt.

A LangChain chain names its task (`task=`); a LiteLLM call may not (no `tracer_task`), and then
gets the automatic name `litellm-<fingerprint12>`. The rule, the same in every process:

- a call that names no task joins the oldest task registered at its fingerprint (so a LiteLLM call
  finds the chain's `intent`), and takes the automatic name only when the fingerprint has none;
- a call that names a task keeps its name, unless the fingerprint is registered under its automatic
  name and not under that name: it then joins the automatic one (a version keeps the name it was
  first recorded under: its certification history is salted with that name, see
  `tracer_core.learning.split`). Two tasks explicitly named at one fingerprint stay two tasks.

The store is asked off the caller's path (`tracer_core.background`), once per (fingerprint, name) and
again every CHECK_S, so a version another process registers later is found then. Until the first
answer, a call goes under its own name, its decision defers (the registered Tracer's state is not
read yet) and its traces are recorded there; when the answer names another task, those traces are
moved to it (`TraceStore.move_traces`, only from a name with no certification history).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from tracer_core.background import CALLER_BUDGET_S, Job, Late
from tracer_core.errors import StoreError
from tracer_core.identity import PREFIX, auto_task
from tracer_core.storage.store import WRITER_LOCK_BUDGET_S, TraceStore

log = logging.getLogger("tracer")

CHECK_S = 1.0  # how often a resolution is asked again (the default policy check of a Tracer)


def choose_task(registered: list[str], fingerprint: str, task: str, *, named: bool) -> str:
    """The task a call of `fingerprint` belongs to, given the names it is registered under (oldest first)."""
    automatic = auto_task(fingerprint)
    if named:
        return automatic if automatic in registered and task not in registered else task
    return registered[0] if registered else automatic


@dataclass
class _Naming:
    """What is known of one (fingerprint, name) asked by calls."""

    task: str | None = None  # the answer, None until the store first gave one
    checked_at: float = -float("inf")
    job: Job[str] | None = None
    used: set[str] = field(default_factory=set)  # names traces went under before an answer


class TaskNames:
    """The resolutions of one store's calls, cached per (fingerprint, name)."""

    def __init__(self, store: TraceStore) -> None:
        self.store = store
        self._namings: dict[tuple[str, str, bool], _Naming] = {}
        self._lock = threading.Lock()
        self._joined: set[tuple[str, str]] = set()  # (name, fingerprint) whose joining was logged

    def task_for(self, fingerprint: str, task: str, *, named: bool) -> tuple[str, bool]:
        """(the task the call goes under, whether the store confirmed it); waits at most CALLER_BUDGET_S."""
        key = (fingerprint, task if named else "", named)  # every unnamed call of a fingerprint gets one answer
        with self._lock:
            naming = self._namings.setdefault(key, _Naming())
            job = naming.job
            if job is None and time.monotonic() - naming.checked_at >= CHECK_S:
                naming.checked_at = time.monotonic()
                job = naming.job = self.store.background_read(
                    lambda: self._ask(fingerprint, task, named), lambda done: self._answered(key, done))
            if naming.task is not None:
                return naming.task, True
        if job is not None:
            try:
                return job.result(CALLER_BUDGET_S), True
            except (Late, StoreError):
                pass
        with self._lock:
            if naming.task is not None:
                return naming.task, True
            naming.used.add(task)
            return task, False

    def _ask(self, fingerprint: str, task: str, named: bool) -> str:
        chosen = choose_task(self.store.versions_by_fingerprint(fingerprint), fingerprint, task, named=named)
        if chosen != task and named and (task, fingerprint) not in self._joined:
            self._joined.add((task, fingerprint))
            log.warning("tracer task %r: version %s was first recorded as %r (a LiteLLM call without tracer_task); "
                        "its calls join that task, its traces and its policy", task, fingerprint[:PREFIX], chosen)
        return chosen

    def _answered(self, key: tuple[str, str, bool], job: Job[str]) -> None:
        with self._lock:
            naming = self._namings[key]
            naming.job = None
            if job.error is not None or job.value is None:
                return
            naming.task = job.value
            moved_from = [name for name in naming.used if name != job.value]
        for name in moved_from:
            self._move(name, key[0], job.value)

    def _move(self, source: str, fingerprint: str, task: str) -> None:
        """Move the traces recorded under `source` before the answer to `task`, on the writing thread; asked
        again at the next check while any may still be queued."""

        def move() -> int:
            if not self.store.has_traces(source, fingerprint):
                return 0
            return self.store.move_traces(source, fingerprint, task, budget_s=WRITER_LOCK_BUDGET_S)

        self.store.background_write(move, self._moved)

    @staticmethod
    def _moved(job: Job[int]) -> None:
        if job.error is not None:
            log.debug("tracer: traces of an unresolved task not moved yet (%s); tried again", job.error)
