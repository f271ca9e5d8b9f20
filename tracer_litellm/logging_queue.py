"""Waiting for LiteLLM's queued logging of this process, so every finished call has reached the callbacks.

LiteLLM runs success callbacks off the call path: for async calls in its logging worker (an
asyncio queue bound to the loop that made the calls, drained at interpreter exit if that loop
is gone), for sync calls in a bounded thread pool. A `fit()` right after a batch of calls
must wait for both, or it misses traces still queued there.
"""

from __future__ import annotations

import asyncio
import time

from litellm.litellm_core_utils.logging_worker import GLOBAL_LOGGING_WORKER
from litellm.litellm_core_utils.thread_pool_executor import executor


def wait_for_logging(timeout: float = 30.0) -> None:
    """Block until LiteLLM's queued logging of this process has run (at most `timeout` seconds).

    Called inside a running event loop it cannot wait for that loop's queue (it would block
    the loop that has to run it): use `await_logging` there.
    """
    deadline = time.monotonic() + timeout
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        _drain_worker(timeout)
    _wait_for_threads(deadline)


async def await_logging(timeout: float = 30.0) -> None:
    """`wait_for_logging` from async code."""
    if _worker_loop() is asyncio.get_running_loop():
        await asyncio.wait_for(GLOBAL_LOGGING_WORKER.flush(), timeout)
        await asyncio.to_thread(_wait_for_threads, time.monotonic() + timeout)
    else:
        await asyncio.to_thread(wait_for_logging, timeout)


def _drain_worker(timeout: float) -> None:
    worker = GLOBAL_LOGGING_WORKER
    if worker.pending_count == 0:
        return
    loop = _worker_loop()
    if loop is not None and loop.is_running():  # an event loop in another thread owns the queue
        asyncio.run_coroutine_threadsafe(worker.flush(), loop).result(timeout)
    else:  # the loop that queued the work has finished: the worker carries it onto a new one
        asyncio.run(asyncio.wait_for(worker.flush(), timeout))


def _worker_loop() -> asyncio.AbstractEventLoop | None:
    return getattr(GLOBAL_LOGGING_WORKER, "_bound_loop", None)


def _wait_for_threads(deadline: float) -> None:
    """Until LiteLLM's logging thread pool has no queued or running task (it counts them in a semaphore)."""
    slots, capacity = getattr(executor, "_pending_slots", None), getattr(executor, "_max_pending_tasks", None)
    if slots is None or capacity is None:
        return
    while slots._value < capacity and time.monotonic() < deadline:
        time.sleep(0.01)
