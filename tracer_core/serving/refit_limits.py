"""Keep a background refit off the cores that serve calls: one numerical thread, a lower priority.

A refit's numerical libraries otherwise start a thread per core and crowd out the surrogate
answers served beside it. `background_refit_limits()` is entered by the refit's own thread
(`Fitter.refit`), never by an explicit `Tracer.fit()`:

- the thread's nice value goes up by `REFIT_NICE` (Linux gives each thread its own; the thread
  ends with the refit, so it is never lowered back, which an unprivileged process cannot do);
- OpenMP (scikit-learn's and torch's libgomp) uses one thread: a per-thread setting, restored on
  exit (not `torch.set_num_threads`, which also sets the default of threads started later);
- OpenBLAS uses one thread: its setting is process-wide, so the first running background refit
  lowers it and the last restores it (serving calls multiply one row at a time, which OpenBLAS
  never splits across threads).

Limits are best effort: if one cannot be applied the refit runs anyway, and says so once."""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from threadpoolctl import OpenBLASController, threadpool_limits

log = logging.getLogger("tracer")

REFIT_NICE = 10
MAX_NICE = 19

_blas_lock = threading.Lock()
_blas_users = 0
_blas_limit: Any = None  # threadpoolctl's limiter, restored by the last refit to leave
_warned: set[str] = set()


@contextmanager
def background_refit_limits() -> Iterator[None]:
    """Run the body in this (refit) thread at a lower priority with one BLAS and one OpenMP thread."""
    lower_thread_priority()
    with _one_blas_thread(), _one_openmp_thread():
        yield


def lower_thread_priority(step: int = REFIT_NICE) -> None:
    """Raise the calling thread's nice value by `step` (at most 19); Linux only, other threads unchanged."""
    if not sys.platform.startswith("linux"):
        return  # elsewhere PRIO_PROCESS with a thread id would renice the whole process, or nothing
    try:
        thread = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, thread, min(os.getpriority(os.PRIO_PROCESS, thread) + step, MAX_NICE))
    except OSError as exc:
        _warn_once("priority", exc)


@contextmanager
def _one_openmp_thread() -> Iterator[None]:
    try:
        limit = threadpool_limits(limits=1, user_api="openmp")
    except Exception as exc:
        _warn_once("openmp", exc)
        yield
        return
    try:
        yield
    finally:
        limit.restore_original_limits()


@contextmanager
def _one_blas_thread() -> Iterator[None]:
    global _blas_users, _blas_limit
    with _blas_lock:
        if _blas_users == 0:
            _blas_limit = _as_controller(lambda: threadpool_limits(limits=1, user_api="blas"), "blas")
        _blas_users += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0 and _blas_limit is not None:
                _as_controller(_blas_limit.restore_original_limits, "blas")
                _blas_limit = None


def _as_controller(change: Callable[[], Any], kind: str) -> Any:
    """Run `change` as threadpoolctl's controlling thread of OpenBLAS's process-wide setting (it ignores
    other threads), then hand control back, so the first and the last refit may be different threads."""
    try:
        OpenBLASController.clear_controlling_thread(force=True)
        try:
            return change()
        finally:
            OpenBLASController.clear_controlling_thread()
    except Exception as exc:
        _warn_once(kind, exc)
        return None


def _warn_once(kind: str, exc: BaseException) -> None:
    if kind not in _warned:
        _warned.add(kind)
        log.warning("tracer: cannot limit the background refit's %s (%s: %s); it runs unlimited",
                    kind, type(exc).__name__, exc)
