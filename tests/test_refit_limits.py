"""A background refit runs in its own thread at a lower priority with one BLAS and one OpenMP thread;
the caller's thread keeps its priority and, once no refit runs, its thread counts (issue 23, point 8).
The latency this buys is measured by `python -m bench --only hits`."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from tracer_core import Tracer
from tracer_core.serving.refit_limits import MAX_NICE, background_refit_limits

TRACES, ALPHA = 200, 0.8  # enough for a fit to train (not necessarily to deploy)
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")


def nice_of(thread_id: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, thread_id)


def threads_of(user_api: str) -> set[int]:
    """The thread counts the calling thread's `user_api` libraries would use (OpenMP's are per thread)."""
    return {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == user_api}


def probing(embed: Callable, caller: int, seen: dict) -> Callable:
    """`embed`, noting the state of the refit thread (and of the caller's thread, meanwhile) on its first call there."""

    def probe(texts: list[str]) -> np.ndarray:
        if threading.current_thread().name.startswith("tracer-refit") and "refit" not in seen:
            seen["refit"] = (nice_of(threading.get_native_id()), threads_of("blas"), threads_of("openmp"))
            seen["caller nice"] = nice_of(caller)
        return embed(texts)

    return probe


def test_background_refit_runs_niced_with_one_numerical_thread_and_leaves_the_caller_alone(
    db_path, banking_subset, fake_embedder
):
    caller = threading.get_native_id()
    seen: dict = {}
    with threadpool_limits(limits=2, user_api="blas"):
        before = (nice_of(caller), threads_of("blas"), threads_of("openmp"))
        assert before[1] == {2}
        tracer = Tracer("intents", db=db_path, alpha=ALPHA, embedder=probing(fake_embedder, caller, seen), refit_every=TRACES,
                        audit_rate=0.0)
        try:
            tracer.record_many([t for t, _ in banking_subset[:TRACES]], [label for _, label in banking_subset[:TRACES]])
            assert tracer.wait_for_refit(120)
            assert tracer.certificate is not None  # the refit ran to the end (deployed or refused)
            after = (nice_of(caller), threads_of("blas"), threads_of("openmp"))
        finally:
            tracer.close()
    nice, blas, openmp = seen["refit"]
    assert nice == min(before[0] + 10, MAX_NICE) and (nice > before[0] or before[0] == MAX_NICE)
    assert blas == {1} and openmp == {1}
    assert seen["caller nice"] == before[0]  # while the refit ran
    assert after == before  # the caller's priority, BLAS threads (restored) and OpenMP threads


def test_explicit_fit_is_not_limited(db_path, banking_subset, fake_embedder):
    caller = threading.get_native_id()
    seen: dict = {}

    def probe(texts: list[str]) -> np.ndarray:
        seen.setdefault("fit", (nice_of(threading.get_native_id()), threads_of("openmp")))
        return fake_embedder(texts)

    with threadpool_limits(limits=2, user_api="openmp"):  # this thread's own setting
        with Tracer("intents", db=db_path, alpha=ALPHA, embedder=probe, auto_refit=False, audit_rate=0.0) as tracer:
            tracer.record_many([t for t, _ in banking_subset[:TRACES]], [label for _, label in banking_subset[:TRACES]])
            tracer.fit()
        assert seen["fit"] == (nice_of(caller), {2})


def test_blas_limit_is_restored_by_the_last_of_overlapping_refits():
    # OpenBLAS has one process-wide setting: two refits of two task versions overlap in time
    entered = [threading.Event(), threading.Event()]
    leave = [threading.Event(), threading.Event()]
    left = [threading.Event(), threading.Event()]

    def refit(i: int) -> None:
        with background_refit_limits():
            entered[i].set()
            leave[i].wait(30)
        left[i].set()

    with threadpool_limits(limits=2, user_api="blas"):
        threads = [threading.Thread(target=refit, args=(i,)) for i in (0, 1)]
        threads[0].start()
        assert entered[0].wait(30)
        threads[1].start()
        assert entered[1].wait(30)
        leave[0].set()
        assert left[0].wait(30)
        assert threads_of("blas") == {1}  # the other refit still runs
        leave[1].set()
        for thread in threads:
            thread.join(30)
        assert threads_of("blas") == {2}
