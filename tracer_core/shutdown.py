"""Clean interpreter exit during a background refit.

A refit runs in a daemon thread and spends most of its time in native code (the embedding model,
BLAS). If the interpreter finalises while such a thread is inside native code, the process can
abort (`terminate called without an active exception`). So at exit an atexit hook sets `EXITING`
and joins every running refit thread (bounded); a fit checks `EXITING` between its steps and
between embedding chunks (`check_exit`) and stops with `FitCancelled`.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from collections.abc import Callable

import numpy as np

from tracer_core.embedder import embed_checked
from tracer_core.errors import EmbedderError, TracerError

log = logging.getLogger("tracer")

EXITING = threading.Event()
JOIN_BOUND_S = 60.0
_REFITS: weakref.WeakSet[threading.Thread] = weakref.WeakSet()


class FitCancelled(TracerError):
    """A background fit stopped because the interpreter is exiting."""


def check_exit() -> None:
    """Raise FitCancelled if the interpreter is exiting (call between fit steps)."""
    if EXITING.is_set():
        raise FitCancelled("the interpreter is exiting; the fit stopped between two steps")


def register_refit(thread: threading.Thread) -> None:
    """Have the exit hook wait for `thread` (a started background refit)."""
    _REFITS.add(thread)


@atexit.register
def _stop_refits() -> None:
    """Ask running refits to stop at their next step and wait for them to leave native code."""
    EXITING.set()
    deadline = time.monotonic() + JOIN_BOUND_S
    for thread in list(_REFITS):
        thread.join(max(deadline - time.monotonic(), 0.0))
        if thread.is_alive():
            log.warning("background refit %s did not stop within %.0f s of exit", thread.name, JOIN_BOUND_S)


EMBED_STEP = 128


def embed_in_steps(embed: Callable[[list[str]], np.ndarray], texts: list[str]) -> np.ndarray:
    """`embed_checked(embed, texts)` in chunks of EMBED_STEP, checking for exit between chunks.

    The chunks are written into one preallocated matrix (no second copy of every vector).
    """
    out: np.ndarray | None = None
    for start in range(0, len(texts), EMBED_STEP):
        check_exit()
        part = embed_checked(embed, texts[start : start + EMBED_STEP])
        if out is None:
            out = np.empty((len(texts), part.shape[1]), dtype=np.float32)
        elif part.shape[1] != out.shape[1]:
            raise EmbedderError(f"embedding function returned {part.shape[1]} dimensions after {out.shape[1]}")
        out[start : start + len(part)] = part
    return out if out is not None else embed_checked(embed, texts)
