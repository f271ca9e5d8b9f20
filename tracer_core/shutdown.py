"""Stopping background refits: at `close()` and at interpreter exit, within a second or so.

A refit runs in a daemon thread and checks, between its steps and between embedding chunks
(`check_exit`), whether it should stop: the interpreter is exiting (`EXITING`), or its tracer
was closed (the cancel event `RefitScheduler` gives the thread, see `cancellable`). It then
raises `FitCancelled` and writes nothing more (no policy row from an abandoned fit).

Nobody waits for a refit to finish. `close()` waits at most STOP_BOUND_S for it to stop, and so
does the exit hook, with one exception: interrupting the embedding model (torch) at interpreter
exit aborts the process (`terminate called without an active exception`), so the exit hook
waits for a refit inside an embedding chunk to leave it (chunks are short: `embedder.EMBED_STEP` texts).
Anywhere else (scikit-learn, numpy, the store) the daemon thread is simply left to the exit.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Iterator

from tracer_core.errors import TracerError

log = logging.getLogger("tracer")

EXITING = threading.Event()
STOP_BOUND_S = 0.5  # the longest close() or the exit hook waits for a refit to stop
EMBED_BOUND_S = 10.0  # the longest the exit hook waits for a refit to leave an embedding chunk
_REFITS: weakref.WeakSet[threading.Thread] = weakref.WeakSet()
_EMBEDDING: weakref.WeakSet[threading.Thread] = weakref.WeakSet()  # refit threads inside the embedding model
_scope = threading.local()


class FitCancelled(TracerError):
    """A background fit stopped because its tracer was closed or the interpreter is exiting."""


def cancelled() -> bool:
    """Whether the fit running in this thread was asked to stop."""
    event = getattr(_scope, "cancel", None)
    return EXITING.is_set() or (event is not None and event.is_set())


def check_exit() -> None:
    """Raise FitCancelled if the fit running in this thread was asked to stop (call between fit steps)."""
    if cancelled():
        raise FitCancelled("the fit was abandoned between two steps (its tracer closed, or the interpreter exits)")


@contextlib.contextmanager
def cancellable(cancel: threading.Event) -> Iterator[None]:
    """Run a background fit in this thread that stops once `cancel` is set."""
    _scope.cancel = cancel
    try:
        yield
    finally:
        _scope.cancel = None


def register_refit(thread: threading.Thread) -> None:
    """Have the exit hook stop `thread` (a started background refit)."""
    _REFITS.add(thread)


@atexit.register
def stop_refits() -> None:
    """Ask running refits to stop and wait briefly (longer only while one is inside the embedding model).

    Runs once, before the stores are closed (their exit hook calls it first)."""
    if EXITING.is_set():
        return
    EXITING.set()
    deadline = time.monotonic() + STOP_BOUND_S
    for thread in list(_REFITS):
        thread.join(max(deadline - time.monotonic(), 0.0))
        embedding_until = time.monotonic() + EMBED_BOUND_S
        while thread.is_alive() and thread in _EMBEDDING and time.monotonic() < embedding_until:
            thread.join(0.01)
        if thread.is_alive():
            log.debug("background refit %s left to the interpreter exit", thread.name)


@contextlib.contextmanager
def embedding() -> Iterator[None]:
    """Mark this thread as inside the embedding model (the exit hook waits for it to leave)."""
    thread = threading.current_thread()
    _EMBEDDING.add(thread)
    try:
        yield
    finally:
        _EMBEDDING.discard(thread)
