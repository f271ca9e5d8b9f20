"""Fault benchmark: inject store, file, policy and process faults while calls run; measure what the caller sees.

Each scenario runs CALLS calls of `route()` + `record()` (what an integration does per LLM call)
through a Tracer with a certified Banking77 policy (real MiniLM, real SQLite file), injects its
fault after a third of the calls (the rest spread over FAULT_S; a store fault is then repaired), closes the
Tracer with a timeout, reopens the store (which replays the spill file) and counts the traces
recorded after the fault that did not reach the store. Targets: no call on the caller's path
stalls above 1 s or waits on tracer's own work more than 50 ms beyond the embedding
(`bench.caller_clock`), nothing is lost that was not spilled and replayed, no surrogate answer comes
from a broken policy, and a process exits within 2 s of its last call. The faults of issue 22
(first calls, hung servers, exit during a refit, close() on an unwritable store) are in
`bench.caller_faults`.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.caller_clock import CallerClock
from bench.faults_trust import edited_policy_scenarios, malformed_urls, other_embedder
from tests.faultkit import (
    RECORD_THEN_WAIT,
    REFIT_AT_EXIT,
    SUBSET,
    drop_traces_table,
    nan_threshold,
    nan_weights,
    run_sql,
    run_to_exit,
    subprocess_env,
    tamper,
)

TASK = "faults-bench"
CALLS = 300
FIT_ROWS = 1_500
STALL_TARGET_S = 1.0
WAIT_TARGET_MS = 50.0  # tracer's own work on the caller's path, beyond the embedding (issue 22)
EXIT_TARGET_S = 2.0  # from the last call to the end of the process
CLOSE_TIMEOUT_S = 10.0
FAULT_S = 6.0  # how long every fault lasts while calls go on


@dataclass
class Run:
    """What one scenario saw."""

    completed: int = 0
    stall_s: float = 0.0
    wait_ms: float = 0.0  # the longest wait on tracer's own work (bench.caller_clock)
    after_fault: set[int] = field(default_factory=set)  # call numbers recorded after the fault
    broken_answers: int = 0  # surrogate answers while the policy was broken
    spilled: int = 0
    note: str = ""


def _rows() -> list[dict]:
    from tracer_demo import banking77_rows

    return banking77_rows()[:FIT_ROWS]


def _fitted_db(folder: Path, embed) -> Path:
    from tracer_core import Tracer

    path = folder / "fitted.db"
    rows = _rows()
    with Tracer(TASK, path, alpha=0.9, embedder=embed, auto_refit=False) as tracer:
        tracer.record_many([r["input"] for r in rows], [r["label"] for r in rows])
        cert = tracer.fit()
    assert cert.deployed, cert.reason
    return path


class Locker:
    """Holds the database's write lock from another connection (another process would do the same)."""

    def __init__(self, db: Path):
        self.conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)

    def lock(self) -> None:
        self.conn.execute("BEGIN EXCLUSIVE")

    def unlock(self) -> None:
        self.conn.execute("ROLLBACK")
        self.conn.close()


def _scenarios(db: Path) -> list[tuple[str, dict]]:
    """(name, {"fault": fn, "restore": fn run FAULT_S after the fault, "queue": size, "policy_fault": bool})."""
    create = {}

    def drop() -> None:
        create["sql"] = drop_traces_table(db)

    locker: dict = {}

    def lock() -> None:
        locker["l"] = Locker(db)
        locker["l"].lock()

    def replace() -> None:
        from tracer_core import TraceStore

        other = db.with_name("replacement.db")
        TraceStore(other).close()
        os.replace(other, db)

    return [
        (f"traces table dropped, restored {FAULT_S:.0f} s later",
         dict(fault=drop, restore=lambda: run_sql(db, create["sql"]))),
        (f"write lock held by another connection for {FAULT_S:.0f} s",
         dict(fault=lock, restore=lambda: locker["l"].unlock())),
        (f"full queue (50) + write lock held for {FAULT_S:.0f} s",
         dict(fault=lock, restore=lambda: locker["l"].unlock(), queue=50)),
        ("database file deleted", dict(fault=lambda: db.unlink())),
        ("database file replaced", dict(fault=replace)),
        ("policy threshold set to NaN (a process starting after it)",
         dict(fault=lambda: tamper(db, nan_threshold), policy_fault=True, fresh=True)),
        ("policy weights set to NaN (a process starting after it)",
         dict(fault=lambda: tamper(db, nan_weights), policy_fault=True, fresh=True)),
        ("every policy row deleted", dict(fault=lambda: run_sql(db, "DELETE FROM policies"), policy_fault=True)),
    ]


def _run_scenario(db: Path | str, spec: dict, rows: list[dict], embed) -> Run:
    from tracer_core import Tracer, TraceStore

    run = Run()
    clock = CallerClock()
    embed = clock.embedder(embed)
    store = TraceStore(db, queue_size=spec.get("queue", 10_000))
    tracer = Tracer(TASK, db=store, alpha=0.9, embedder=embed, auto_refit=False, policy_check_s=0.2)
    fault_at = CALLS // 3
    faulted_at = None
    with clock:
        for i in range(CALLS):
            if i == fault_at:
                spec["fault"]()
                faulted_at = time.monotonic()
                if spec.get("fresh"):  # the process that loads the broken row; the running one keeps its valid copy
                    tracer = Tracer(TASK, db=store, alpha=0.9, embedder=embed, auto_refit=False, policy_check_s=0.2)
            row = rows[i % len(rows)]
            start = time.perf_counter()
            with clock.call():
                decision = tracer.route(row["input"])
                tracer.record(row["input"], row["label"], metadata={"call": i})
            run.stall_s = max(run.stall_s, time.perf_counter() - start)
            run.completed += 1
            if faulted_at is not None:  # spread the calls after the fault over FAULT_S
                time.sleep(max(0.0, faulted_at + FAULT_S * (i - fault_at + 1) / (CALLS - fault_at) - time.monotonic()))
            if i >= fault_at:
                run.after_fault.add(i)
                # a policy fault counts once every process has had policy_check_s to notice it
                if (spec.get("policy_fault") and decision.handled and faulted_at is not None
                        and time.monotonic() - faulted_at > tracer.policy_check_s):
                    run.broken_answers += 1
    run.wait_ms = clock.longest_ms
    gc_note = clock.gc_note
    if spec.get("restore"):
        spec["restore"]()
        deadline = time.monotonic() + 15
        while (store.degraded or store.spill_path.exists()) and time.monotonic() < deadline:
            time.sleep(0.1)  # the writer probes the repaired store and replays its spill
    start = time.perf_counter()
    tracer.close(timeout=CLOSE_TIMEOUT_S)
    report = store.close(timeout=CLOSE_TIMEOUT_S)
    run.spilled = store._writer.spilled_total if store._writer else 0
    run.note = f"{report.spilled} still in the spill file at close; "
    run.note += f"close {time.perf_counter() - start:.2f} s{gc_note}"
    return run


def _postgres_restart(folder: Path, fitted: Path, rows: list[dict], embed) -> dict:
    """The scenario loop on a PostgreSQL copy of the fitted store: the server stops, and starts FAULT_S later."""
    from tests.pgcluster import ThrowawayCluster
    from tracer_core import TraceStore
    from tracer_core.storage.copy_store import copy_tasks

    os.environ["TRACER_SPILL_DIR"] = str(folder / "pg-spill")
    cluster = ThrowawayCluster().init()
    try:
        url = cluster.fresh_url()
        with TraceStore(fitted) as source, TraceStore(url) as target:
            copy_tasks(source, target, TASK)
        run = _run_scenario(url, dict(fault=cluster.stop, restore=cluster.start), rows, embed)
        lost = len(run.after_fault - _stored_calls(url))
    finally:
        cluster.destroy()
    return _row(f"PostgreSQL server stopped, restarted {FAULT_S:.0f} s later", CALLS, run.completed,
                len(run.after_fault), lost, run.spilled, None, run.stall_s, run.note, wait_ms=run.wait_ms)


def _stored_calls(db: Path | str) -> set[int]:
    """Call numbers of the scenario's traces in the store after a restart (which replays the spill)."""
    from tracer_core import TraceStore

    with TraceStore(db) as store:
        return {int(t.metadata["call"]) for t in store.iter_traces(TASK) if "call" in t.metadata}


def _exit_during_refit(folder: Path) -> dict:
    """The script ends (no close()) while its refit embeds: the time from its last line to the process's end."""
    run = run_to_exit(REFIT_AT_EXIT, str(folder / "exit.db"), str(SUBSET),
                      env=subprocess_env(TRACER_CACHE_DIR=str(folder / "fresh-cache")))
    aborted = run.returncode != 0 or "terminate called" in run.stderr
    return _row("process exits while a refit embeds (subprocess, no close())", 1, 0 if aborted else 1, 1_600,
                1_600 - _count(folder / "exit.db"), "-", None, None,
                f"exit code {run.returncode}; exit hooks done {run.hooks_s:.2f} s after the last line, then the "
                f"interpreter's teardown; {len(_policy_rows(folder / 'exit.db'))} policy rows", exit_s=run.exit_s,
                hooks_s=run.hooks_s)


def _policy_rows(db: Path) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT version, status FROM policies").fetchall()
    finally:
        conn.close()


def _sigkill(folder: Path, queue_size: int = 100) -> dict:
    db = folder / "kill.db"
    child = subprocess.Popen([sys.executable, "-c", RECORD_THEN_WAIT, str(db), str(queue_size)], env=subprocess_env(),
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        child.stdout.readline()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    lost = 5_000 - _count(db)
    row = _row(f"SIGKILL right after 5,000 record() calls (queue {queue_size})", 5_000, 5_000, 5_000, lost, "-", None, None,
               f"bound: queue + one batch = {2 * queue_size}")
    row["ok"] = lost <= 2 * queue_size
    return row


def _count(db: Path) -> int:
    from tracer_core import TraceStore

    with TraceStore(db) as store:
        return sum(store.counts().values())


def _litellm_broken_store(folder: Path, embed) -> dict:
    """40 acompletion calls through TracerCallback over HTTP to a local teacher, traces table dropped."""
    import litellm

    from tracer_demo.local_teacher import LocalTeacher
    from tracer_litellm import TracerCallback

    rows = _rows()[:41]
    db = folder / "litellm.db"
    system = {"role": "system", "content": "Classify the banking query. Answer with the label only."}
    stall = 0.0
    completed = 0
    create: dict = {}
    with LocalTeacher({r["input"]: r["label"] for r in rows}) as teacher:
        callback = TracerCallback(alpha=0.9, db=str(db), embedder=embed)
        litellm.callbacks = [callback]

        async def calls() -> None:
            nonlocal stall, completed
            for i, r in enumerate(rows):
                if i == 1:
                    for _ in range(200):
                        if db.exists() and _sql_count(db) >= 1:
                            break
                        await asyncio.sleep(0.05)
                    create["sql"] = drop_traces_table(db)
                start = time.perf_counter()
                response = await asyncio.wait_for(litellm.acompletion(
                    model="openai/teacher", api_base=teacher.base_url, api_key="sk-test",
                    messages=[system, {"role": "user", "content": r["input"]}]), timeout=30)
                stall = max(stall, time.perf_counter() - start)
                completed += response.choices[0].message.content == r["label"]
            await asyncio.sleep(1)  # LiteLLM logs each success in a task on this loop

        asyncio.run(calls())
        start = time.perf_counter()
        report = callback.close(timeout=CLOSE_TIMEOUT_S)
        close_s = time.perf_counter() - start
        litellm.logging_callback_manager._reset_all_callbacks()
    run_sql(db, create["sql"])  # repaired after the process ended: the next start replays the spill
    stored = _count(db)
    after = len(rows) - 1
    return _row("LiteLLM acompletion, traces table dropped (HTTP to a local teacher)", len(rows), completed,
                after, after - stored, report.spilled, None, stall,
                f"table restored after close, then replayed at the next start; close {close_s:.2f} s; "
                "stall includes the teacher's HTTP round trip")


def _sql_count(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT count(*) FROM traces").fetchone()[0]
    except sqlite3.Error:
        return 0
    finally:
        conn.close()


def _row(fault: str, calls: int, completed: int, recorded_after: int, lost: int, spilled: int | str,
         broken: int | None, stall_s: float | None, note: str, *, wait_ms: float | None = None,
         exit_s: float | None = None, hooks_s: float | None = None, lost_ok: bool = False) -> dict:
    """One table row. `hooks_s`: from the last call to the end of the exit hooks (tracer's part of an exit,
    the target), `exit_s`: to the end of the process (the interpreter's teardown too); `lost_ok` when the
    traces could not be recorded by design (the row then checks the report says so)."""
    return {
        "fault": fault, "calls": calls, "completed": completed, "traces after fault": recorded_after,
        "lost": lost, "spilled then replayed": spilled, "answers from a broken policy": "-" if broken is None else broken,
        "longest stall (ms)": "-" if stall_s is None else f"{stall_s * 1000:.0f}",
        "longest caller-path wait beyond the embedding (ms)": "-" if wait_ms is None else f"{wait_ms:.1f}",
        "exit hooks done after the last call (s)": "-" if hooks_s is None else f"{hooks_s:.2f}",
        "process ended after the last call (s)": "-" if exit_s is None else f"{exit_s:.2f}",
        "note": note,
        "ok": (completed == calls and (lost == 0 or lost_ok) and (stall_s or 0.0) <= STALL_TARGET_S and not broken
               and (wait_ms or 0.0) <= WAIT_TARGET_MS and (hooks_s or 0.0) <= EXIT_TARGET_S),
    }


def faults() -> list[dict]:
    from tracer_core.learning.embedder import get_default_embedder

    embed = get_default_embedder()
    rows = _rows()
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        fitted = _fitted_db(folder, embed)
        for name, spec in [*_scenarios(folder / "run.db"), *edited_policy_scenarios(folder / "run.db")]:
            db = folder / "run.db"
            for leftover in folder.glob("run.db*"):
                leftover.unlink()
            shutil.copy(fitted, db)
            run = _run_scenario(db, spec, rows, embed)
            stored = _stored_calls(db)
            lost = len(run.after_fault - stored)
            out.append(_row(name, CALLS, run.completed, len(run.after_fault), lost, run.spilled,
                            run.broken_answers if spec.get("policy_fault") else None, run.stall_s, run.note,
                            wait_ms=run.wait_ms))
        out += [malformed_urls(), other_embedder(folder, rows, embed, CALLS)]
        out.append(_postgres_restart(folder, fitted, rows, embed))
        out.append(_litellm_broken_store(folder, embed))
        out.append(_exit_during_refit(folder))
        out.append(_sigkill(folder))
        from bench.caller_faults import caller_faults

        out.extend(caller_faults(folder, embed, [{"input": r["input"], "label": r["label"]} for r in rows]))
    return out
