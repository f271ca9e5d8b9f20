"""Issue 22, cases 1, 2, 3 and 5: a call never waits on tracer's own work, a process exits in seconds
during a refit, and every close() returns a FlushReport whose `ok` says whether traces were recorded.

Every step that could hang runs in a thread with a time limit. Tests of the caller's budget are
marked `caller_budget`: they keep the real 25 ms budget (conftest gives other tests half a second).
"""

from __future__ import annotations

import functools
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import litellm
import pytest

from tests.faultkit import REFIT_THEN_CLOSE, SUBSET, drop_traces_table, run_to_exit, subprocess_env
from tests.pgcluster import ThrowawayCluster
from tracer_core import FlushReport, Tracer, TraceStore, identify, registry_for

TASK = "caller-path"
SYSTEM = "Classify the banking query. Answer with the label only."
CALL_S = 1.0  # the longest a call may take here: generous for a promise of 50 ms on a loaded 2-core machine

Caller = tuple[Callable[[str], str], Callable[..., FlushReport]]


def timed(seconds: float, fn: Callable[[], Any]) -> tuple[Any, float]:
    """(fn(), its wall time); fails unless it returns within `seconds` (it runs in a thread meanwhile)."""
    box: dict = {}

    def run() -> None:
        started = time.perf_counter()
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            box["error"] = exc
        box["s"] = time.perf_counter() - started

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"the call did not return within {seconds} s"
    if "error" in box:
        raise box["error"]
    return box["value"], box["s"]


def langchain_caller(teacher, db: Path, embedder) -> Caller:
    """(ask, close) of a with_tracer chain over HTTP to the local teacher."""
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_openai import ChatOpenAI

    from tracer_langchain import with_tracer

    chain = (ChatPromptTemplate([("system", SYSTEM), ("human", "{text}")])
             | ChatOpenAI(base_url=teacher.base_url, api_key="sk-test", model="teacher", max_retries=0) | StrOutputParser())
    chain.invoke({"text": "warm up the HTTP client"})  # the chain's own first-call cost is not tracer's
    wrapper = with_tracer(chain, task=TASK, alpha=0.9, db=db, embedder=embedder)
    return (lambda text: wrapper.invoke({"text": text})), wrapper.close


@pytest.fixture
def litellm_caller() -> Iterator[Callable[..., Caller]]:
    """Makes (ask, close) of LiteLLM completion calls through a TracerCallback; restores LiteLLM after."""
    from tracer_litellm import TracerCallback
    from tracer_litellm.logging_queue import wait_for_logging

    made: list[TracerCallback] = []

    def make(teacher, db: Path, embedder) -> Caller:
        def ask(text: str) -> str:
            response = litellm.completion(model="openai/teacher", api_base=teacher.base_url, api_key="sk-test",
                                          messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}])
            return response.choices[0].message.content

        litellm.callbacks = []
        ask("warm up LiteLLM")  # LiteLLM's own first-call cost is not tracer's
        wait_for_logging(10)  # (its success is logged before the callback comes)
        callback = TracerCallback(alpha=0.9, db=str(db), embedder=embedder)
        litellm.callbacks = [callback]
        made.append(callback)
        return ask, callback.close

    yield make
    litellm.logging_callback_manager._reset_all_callbacks()
    for callback in made:
        timed(30, functools.partial(callback.close, timeout=10))


@pytest.fixture(params=["langchain", "litellm"])
def caller(request, litellm_caller) -> Callable[..., Caller]:
    return langchain_caller if request.param == "langchain" else litellm_caller


# -- 1. the first call of a process while another process holds the SQLite write lock ----------------

@pytest.mark.caller_budget
def test_case1_the_first_calls_of_a_process_do_not_wait_for_a_held_write_lock(
    caller, db_path, teacher, banking_subset, fake_embedder
) -> None:
    """Issue 22, case 1: while another connection held the SQLite write lock, the first with_tracer call
    waited 22.5 s and the first LiteLLM call 20 s (the version was registered on the caller's path).
    The calls now go on at once, and their traces reach the store when the lock goes."""
    TraceStore(db_path).close()  # the store exists: an earlier process made it
    holder = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    try:
        ask, close = caller(teacher, db_path, fake_embedder)
        for text, label in banking_subset[:3]:
            answer, seconds = timed(30, functools.partial(ask, text))
            assert answer == label and seconds < CALL_S, f"a call took {seconds:.2f} s under a held write lock"
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    report, _ = timed(30, lambda: close(timeout=10))
    assert report.lost == 0 and report.pending == 0
    with TraceStore(db_path) as store:  # a restart replays whatever was spilled meanwhile
        assert len(list(store.iter_traces(store.tasks()[0]["task"]))) == 3


@pytest.mark.caller_budget
def test_case1_a_suspension_by_the_monitor_does_not_wait_for_a_held_write_lock(
    db_path, fake_embedder, monkeypatch
) -> None:
    """Issue 22, case 1: the monitor's suspension was written on the caller's path (up to 60 s for the
    lock). The call now defers as suspended at once; the suspension is written when the lock goes."""
    from tracer_core.serving.monitor import AgreementMonitor

    tracer = Tracer(TASK, db=db_path, embedder=fake_embedder)
    holder = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    try:
        monkeypatch.setattr(AgreementMonitor, "rejected", property(lambda monitor: True))  # audits contradict it
        for _ in range(3):
            decision, seconds = timed(30, functools.partial(tracer.route, "a text"))
            assert decision.reason == "suspended" and seconds < CALL_S, f"a call took {seconds:.2f} s"
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    status, _ = timed(30, tracer.status)
    assert status["suspended"]["reason"].startswith("audits contradict the certificate")
    tracer.close()


# -- 2. the first call of a new task version while the PostgreSQL server hangs or is down ------------

def _identity(temperature: float):
    return identify(model="openai/teacher", messages=[("system", SYSTEM), ("user", "{text}")], routed_text="{text}",
                    params={"temperature": temperature})


@pytest.mark.slow  # needs the PostgreSQL server
@pytest.mark.caller_budget
@pytest.mark.parametrize("fault", ["hung", "down"])
def test_case2_a_new_version_does_not_wait_for_a_hung_or_unreachable_server(
    fault, pg_cluster: ThrowawayCluster, pg_url: str, banking_subset, fake_embedder
) -> None:
    """Issue 22, case 2: with the server stopped by SIGSTOP, each call of a version not seen before waited
    5 s (over 40 s on a reused thread). Calls of new versions now defer at once, and are recorded when the
    server is back."""
    registry = registry_for(pg_url)
    texts = [text for text, _ in banking_subset[:4]]

    def call(version: int, text: str) -> str:
        tracer = registry.tracer(TASK, _identity(version / 10), alpha=0.9, embedder=fake_embedder)
        decision = tracer.route(text)
        tracer.record(text, "label", decision=decision)
        return str(decision.reason)

    timed(30, lambda: call(0, texts[0]))  # a version this process used before the fault
    assert registry.flush(timeout=10).ok
    if fault == "hung":
        pg_cluster.pause()
    else:
        pg_cluster.stop()
    try:
        for version, text in enumerate(texts[1:], start=1):
            reason, seconds = timed(30, functools.partial(call, version, text))
            # a version not read yet says so for the read budget, then the store is unavailable
            assert reason in ("policy_loading", "store_unavailable") and seconds < CALL_S, (
                f"a new version's call took {seconds:.2f} s")
    finally:
        if fault == "hung":
            pg_cluster.resume()
        else:
            pg_cluster.start()
    timed(60, lambda: registry.flush(timeout=30))
    registry.store.close()
    with TraceStore(pg_url) as store:  # a restart replays whatever was spilled meanwhile
        assert sorted(t.input for t in store.iter_traces(TASK)) == sorted(texts)


# -- 3. exit during a refit ----------------------------------------------------------------------

@pytest.mark.slow  # a subprocess Python that loads the real model
def test_case3_close_during_a_refit_abandons_it_and_the_process_ends_in_seconds(tmp_path: Path) -> None:
    """Issue 22, case 3: a script's exit after its last call took 38-62 s because close() waited for the
    running refit, and once printed `background refit failed ... store is closed` after close() had
    returned. Now close() abandons the refit (it writes no policy row) and says so; nothing is printed
    after it; the exit hooks are done within seconds (then the interpreter tears down its modules)."""
    db = tmp_path / "exit.db"
    run = run_to_exit(REFIT_THEN_CLOSE, str(db), str(SUBSET), env=subprocess_env(TRACER_CACHE_DIR=str(tmp_path / "cache")))
    assert run.returncode == 0 and "terminate called" not in run.stderr, run.stderr[-2000:]
    before, marker, after = run.stderr.partition("closed: abandoned_refits=1 ok=True\n")
    assert marker, run.stderr[-2000:]
    assert after == "", f"printed after close(): {after[-2000:]}"
    assert run.hooks_s < 4.0, f"the exit hooks ended {run.hooks_s:.1f} s after the last call (target 2 s)"
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM policies").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM traces").fetchone() == (1_601,)


def test_case3_a_refit_abandoned_by_close_writes_no_policy_and_logs_nothing(db_path, banking_subset, caplog) -> None:
    """Issue 22, case 3, in process: a refit still fitting when close() returns stops at its next step,
    without a policy row and without a word after close()."""
    started, release = threading.Event(), threading.Event()

    def slow_embedder(texts: list[str]):
        import numpy as np

        started.set()
        release.wait(10)  # the refit is inside a step when close() comes
        return np.eye(len(texts), 8, dtype=np.float32) + 0.01

    tracer = Tracer(TASK, db=db_path, alpha=0.9, embedder=slow_embedder, refit_every=400)
    for text, label in banking_subset[:400]:  # enough traces for a fit that embeds them
        tracer.record(text, label)
    assert started.wait(10)
    report, seconds = timed(10, tracer.close)
    assert report.abandoned_refits == 1 and report.ok and seconds < 2.0
    caplog.clear()
    release.set()
    assert tracer.refits.wait(10)
    assert [r.getMessage() for r in caplog.records if r.levelname in ("WARNING", "ERROR")] == []
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT count(*) FROM policies").fetchone() == (0,)


# -- 5. one close() contract -----------------------------------------------------------------------

def test_case5_close_reports_traces_no_store_took(caller, tmp_path: Path, teacher, banking_subset, fake_embedder) -> None:
    """Issue 22, case 5: with db a directory, five calls worked, then the wrapper's close() raised
    StoreError and LiteLLM's returned ok=True although none of the five calls was recorded."""
    ask, close = caller(teacher, tmp_path, fake_embedder)
    for text, label in banking_subset[:5]:
        assert ask(text) == label
    report, _ = timed(30, lambda: close(timeout=5))
    assert isinstance(report, FlushReport) and not report.ok
    assert report.lost == 5 and "is a directory" in str(report.degraded)


def test_case5_tracer_close_reports_spilled_traces_as_not_recorded_but_not_lost(db_path, banking_subset, fake_embedder) -> None:
    """Issue 22, case 5: the same contract for Tracer: traces in the spill file (replayed later) make
    `ok` False without counting as lost."""
    tracer = Tracer(TASK, db=db_path, alpha=0.9, embedder=fake_embedder)
    drop_traces_table(db_path)
    for text, label in banking_subset[:5]:
        tracer.record(text, label, decision=tracer.route(text))
    report, _ = timed(30, lambda: tracer.close(timeout=5))
    assert isinstance(report, FlushReport) and not report.ok
    assert (report.spilled, report.lost) == (5, 0) and "no such table" in str(report.degraded)


@pytest.mark.caller_budget
def test_a_call_before_the_first_read_says_the_policy_is_loading_and_a_later_stall_says_unavailable(
    db_path, fake_embedder, monkeypatch
) -> None:
    """A fresh process's first calls used to defer as `store_unavailable`, as if the store had failed; they now say
    the policy is still loading. Once the state has been read, a store that stalls still says `store_unavailable`."""
    from tracer_core.serving.watcher import PolicyWatcher

    read = PolicyWatcher._read
    stall = threading.Event()

    def slow_read(self: PolicyWatcher):
        stall.wait(5)
        return read(self)

    monkeypatch.setattr(PolicyWatcher, "_read", slow_read)
    tracer = Tracer(TASK, db=db_path, embedder=fake_embedder, policy_check_s=0.0)
    assert tracer.route("first call").reason == "policy_loading"
    stall.set()
    deadline = time.monotonic() + 10
    while (reason := tracer.route("later call").reason) == "policy_loading" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert reason == "no_policy"
    stall.clear()
    tracer.route("starts a read that stalls")
    assert tracer.route("while it stalls").reason == "store_unavailable"
    stall.set()
    tracer.close()


# -- the store's reads on the caller's behalf -------------------------------------------------------

def test_policy_reads_reuse_one_connection(db_path, fake_embedder) -> None:
    """Each policy read used to open a connection of its own and keep it until close()."""
    tracer = Tracer(TASK, db=db_path, embedder=fake_embedder, policy_check_s=0.0)
    for _ in range(20):
        tracer.route("a text")
    assert len(tracer.store._connections._conns) <= 2  # the constructor's and the store thread's
    tracer.close()
