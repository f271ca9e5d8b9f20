"""Faults on the caller's path (issue 22): what a call waits for when the store is locked, hung or
unreachable at its first call, how fast a process ends during a refit, and what close() says about
traces no store took.

Each first-call row makes CALLS calls through an integration or the registry both integrations
use, spread over FAULT_S while the fault lasts, then lifts the fault, closes and counts the traces
that reached the store (after a restart, which replays the spill file). The wait is tracer's own
work on the caller's thread minus the embedding (`bench.caller_clock`); target 50 ms.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench.caller_clock import CallerClock
from bench.faults import FAULT_S, _count, _policy_rows, _row
from tests.faultkit import REFIT_THEN_CLOSE, SUBSET, drop_traces_table, run_to_exit, subprocess_env

TASK = "caller-faults"
CALLS = 20
SYSTEM = "Classify the banking query. Answer with the label only."
CLOSE_TIMEOUT_S = 10.0


def hold_write_lock(db: Path, seconds: float) -> subprocess.Popen:
    """Another process that holds the store's write lock (BEGIN IMMEDIATE) for `seconds`, from now."""
    script = ("import sqlite3, sys, time\n"
              "conn = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
              "conn.execute('BEGIN IMMEDIATE')\n"
              "print('held', flush=True)\n"
              "time.sleep(float(sys.argv[2]))\n"
              "conn.execute('ROLLBACK')\n")
    holder = subprocess.Popen([sys.executable, "-c", script, str(db), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None
    holder.stdout.readline()
    return holder


def _spread(calls: int, seconds: float, call: Callable[[int], bool], clock: CallerClock) -> int:
    """Make `calls` calls evenly over `seconds`, each measured by `clock`; how many answered correctly."""
    started = time.monotonic()
    completed = 0
    for i in range(calls):
        with clock.call():
            completed += call(i)
        time.sleep(max(0.0, started + seconds * (i + 1) / calls - time.monotonic()))
    return completed


def _langchain(teacher, db: Path, embed, rows: list[dict]) -> tuple[Callable[[int], bool], Callable[[], object]]:
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_openai import ChatOpenAI
    from pydantic import SecretStr

    from tracer_langchain import with_tracer

    chain = (ChatPromptTemplate([("system", SYSTEM), ("human", "{text}")])
             | ChatOpenAI(base_url=teacher.base_url, api_key=SecretStr("sk-test"), model="teacher", max_retries=0) | StrOutputParser())
    wrapper = with_tracer(chain, task=TASK, alpha=0.9, db=db, embedder=embed)
    return (lambda i: wrapper.invoke({"text": rows[i]["input"]}) == rows[i]["label"],
            lambda: wrapper.close(timeout=CLOSE_TIMEOUT_S))


def _litellm(teacher, db: Path, embed, rows: list[dict]) -> tuple[Callable[[int], bool], Callable[[], object]]:
    import litellm

    from tracer_litellm import TracerCallback

    callback = TracerCallback(alpha=0.9, db=str(db), embedder=embed)
    litellm.callbacks = [callback]

    def call(i: int) -> bool:
        response = litellm.completion(model="openai/teacher", api_base=teacher.base_url, api_key="sk-test",
                                      messages=[{"role": "system", "content": SYSTEM},
                                                {"role": "user", "content": rows[i]["input"]}])
        return response.choices[0].message.content == rows[i]["label"]

    def close() -> object:
        try:
            return callback.close(timeout=CLOSE_TIMEOUT_S)
        finally:
            litellm.logging_callback_manager._reset_all_callbacks()

    return call, close


INTEGRATIONS = {"LangChain invoke": _langchain, "LiteLLM completion": _litellm}


def first_call_under_lock(folder: Path, embed, rows: list[dict], integration: str) -> dict:
    """A new process's first calls while another process holds the SQLite write lock for FAULT_S."""
    from tracer_demo.local_teacher import LocalTeacher

    db = folder / f"locked-{integration.split()[0].lower()}.db"
    from tracer_core import TraceStore

    TraceStore(db).close()  # the store exists: an earlier process made it
    clock = CallerClock()
    with LocalTeacher({r["input"]: r["label"] for r in rows[:CALLS]}) as teacher:
        call, close = INTEGRATIONS[integration](teacher, db, clock.embedder(embed), rows)
        holder = hold_write_lock(db, FAULT_S)
        with clock:
            completed = _spread(CALLS, FAULT_S, call, clock)
        holder.wait(timeout=60)
        report = close()
    stored = _count(db)
    return _row(f"first calls of a process, SQLite write lock held by another process for {FAULT_S:.0f} s: "
                f"{integration}", CALLS, completed, CALLS, CALLS - stored, "-", None, None,
                f"first call {clock.waits_ms[0]:.1f} ms{clock.gc_note}; close: {report}", wait_ms=clock.longest_ms)


def postgres_rows(folder: Path, embed, rows: list[dict]) -> list[dict]:
    """First calls of new task versions (and of a process) while the PostgreSQL server hangs or is down."""
    from tests.pgcluster import ThrowawayCluster

    os.environ["TRACER_SPILL_DIR"] = str(folder / "pg-caller-spill")
    cluster = ThrowawayCluster().init()
    paused = False

    def pause() -> None:
        nonlocal paused
        cluster.pause()
        paused = True

    def resume() -> None:
        nonlocal paused
        cluster.resume()
        paused = False

    try:
        return [
            _new_versions(cluster.fresh_url(), embed, rows, "server hung (SIGSTOP)", pause, resume, warm=True),
            _new_versions(cluster.fresh_url(), embed, rows, "server down", cluster.stop, cluster.start, warm=True),
            _new_versions(cluster.fresh_url(), embed, rows, "server hung (SIGSTOP)", pause, resume, warm=False),
        ]
    finally:
        if paused:
            cluster.resume()
        cluster.destroy()


def _identity(i: int):
    from tracer_core import identify

    return identify(model="openai/teacher", messages=[("system", SYSTEM), ("user", "{text}")], routed_text="{text}",
                    params={"temperature": round(0.01 * i, 2)})


def _new_versions(url: str, embed, rows: list[dict], fault: str, fault_on: Callable[[], object],
                  fault_off: Callable[[], object], *, warm: bool) -> dict:
    """CALLS calls, each the first of a new task version, through the registry both integrations use.

    `warm`: the process used the store before the fault (else its first call opens the store)."""
    from tracer_core import TraceStore, registry_for

    TraceStore(url).close()  # the schema exists
    clock = CallerClock()
    embed = clock.embedder(embed)
    reasons: set[str] = set()

    def call(i: int) -> bool:
        tracer = registry_for(url).tracer(TASK, _identity(i), alpha=0.9, embedder=embed)
        decision = tracer.route(rows[i]["input"])
        tracer.record(rows[i]["input"], rows[i]["label"], decision=decision)
        reasons.add(str(decision.reason))
        return True

    if warm:
        call(CALLS)  # another version, routed before the fault
        registry_for(url).flush(CLOSE_TIMEOUT_S)
    fault_on()
    with clock:
        completed = _spread(CALLS, FAULT_S, call, clock)
    fault_off()
    report = registry_for(url).flush(CLOSE_TIMEOUT_S)
    inputs = {r["input"] for r in rows[:CALLS]}
    with TraceStore(url) as store:  # a restart replays what was spilled
        stored = sum(1 for t in store.iter_traces(TASK) if t.input in inputs)
    when = "first calls of new task versions" if warm else "first calls of a process (the store opens)"
    return _row(f"PostgreSQL {fault} for {FAULT_S:.0f} s: {when}, through the integrations' registry", CALLS, completed,
                CALLS, CALLS - stored, report.spilled, None, None,
                f"first call {clock.waits_ms[0]:.1f} ms{clock.gc_note}; reasons {', '.join(sorted(reasons))}; flush: {report}",
                wait_ms=clock.longest_ms)


def exit_after_close(folder: Path) -> dict:
    """A script's last call and close() while its refit embeds: the time to the end of the exit hooks and
    of the process, what it printed after close(), and the policy rows the abandoned refit left (none)."""
    db = folder / "exit-close.db"
    run = run_to_exit(REFIT_THEN_CLOSE, str(db), str(SUBSET),
                      env=subprocess_env(TRACER_CACHE_DIR=str(folder / "fresh-cache-close")))
    before, marker, rest = run.stderr.partition("closed: ")
    closed, _, after_close = rest.partition("\n")
    if not marker:
        closed, after_close = "close() never returned", before
    policies = _policy_rows(db)
    row = _row("last call, then close(), while a refit embeds (subprocess)", 1, int(run.returncode == 0), 1_601,
               1_601 - _count(db), "-", None, None,
               f"{closed}; printed after close(): {len(after_close.strip())} characters; {len(policies)} policy rows",
               exit_s=run.exit_s, hooks_s=run.hooks_s)
    row["ok"] = row["ok"] and not after_close.strip() and not policies
    return row


def close_unwritable(folder: Path, embed, rows: list[dict]) -> list[dict]:
    """Five calls, then close(), with a store no trace reaches: Tracer (its traces table dropped),
    LangChain and LiteLLM (db is a directory). The report must say so: ok False, nothing lost unsaid."""
    from tracer_core import Tracer
    from tracer_demo.local_teacher import LocalTeacher

    out = []
    db = folder / "unwritable.db"
    clock = CallerClock()
    timed = clock.embedder(embed)
    tracer = Tracer(TASK, db=db, alpha=0.9, embedder=timed)
    drop_traces_table(db)

    def route_and_record(i: int) -> bool:
        tracer.record(rows[i]["input"], rows[i]["label"], decision=tracer.route(rows[i]["input"]))
        return True

    with clock:
        completed = _spread(5, 0.5, route_and_record, clock)
    out.append(_close_row("Tracer, its traces table dropped", completed, clock, lambda: tracer.close(timeout=5)))
    directory = folder / "a-directory"
    directory.mkdir()
    with LocalTeacher({r["input"]: r["label"] for r in rows[:5]}) as teacher:
        for integration, make in INTEGRATIONS.items():
            clock = CallerClock()
            call, close = make(teacher, directory, clock.embedder(embed), rows)
            with clock:
                completed = _spread(5, 0.5, call, clock)
            out.append(_close_row(f"{integration}, db is a directory", completed, clock, close))
    return out


def _close_row(what: str, completed: int, clock: CallerClock, close: Callable[[], object]) -> dict:
    started = time.monotonic()
    try:
        report = close()
    except Exception as exc:  # noqa: BLE001 - the contract is a report, never an exception
        report = exc
    close_s = time.monotonic() - started
    ok = getattr(report, "ok", True) is False and getattr(report, "lost", 0) + getattr(report, "spilled", 0) == 5
    row = _row(f"close() after 5 calls, no trace reaches the store: {what}", 5, completed, 5,
               getattr(report, "lost", 5), getattr(report, "spilled", "-"), None, None,
               f"close {close_s:.2f} s: {report!r}"[:300] + clock.gc_note, wait_ms=clock.longest_ms, lost_ok=True)
    row["ok"] = row["ok"] and ok
    return row


def caller_faults(folder: Path, embed, rows: list[dict]) -> list[dict]:
    """Every row of issue 22's caller-path faults (see the module docstring)."""
    return [
        *(first_call_under_lock(folder, embed, rows, integration) for integration in INTEGRATIONS),
        *postgres_rows(folder, embed, rows),
        exit_after_close(folder),
        *close_unwritable(folder, embed, rows),
    ]
