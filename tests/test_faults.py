"""Fault injection (issue 16): tracer never hangs the caller, never aborts, never answers from a broken policy.

Each test reproduces one numbered case of the issue against a real SQLite file (and, where the
issue names them, LiteLLM and LangChain over HTTP to a local teacher). Every step that could
hang runs in a thread or subprocess with a time limit.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import litellm
import numpy as np
import pytest
from click.testing import CliRunner

from tests.faultkit import (
    RECORD_THEN_WAIT,
    REFIT_AT_EXIT,
    SUBSET,
    drop_traces_table,
    nan_threshold,
    nan_weights,
    run_sql,
    subprocess_env,
    tamper,
)
from tracer_core import Tracer, TraceStore
from tracer_core.cli.commands import main as cli
from tracer_core.errors import InvalidTraceError, PolicyError, StoreError
from tracer_core.learning.policy import Policy
from tracer_core.storage.jsonl import export_jsonl
from tracer_core.storage.trace import make_trace

TASK = "faults"
STALL_S = 1.0  # the longest any single call on the caller's path may take


def within(seconds: float, fn, *args, **kwargs):
    """Run `fn` in a thread; fail unless it returns within `seconds`; return its result."""
    box: dict = {}

    def run() -> None:
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{getattr(fn, '__name__', fn)} did not return within {seconds} s"
    if "error" in box:
        raise box["error"]
    return box["value"]


def rows(db: Path, sql: str = "SELECT count(*) FROM traces") -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def wait_until(predicate, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# -- 1. a store that cannot be written never hangs the caller ---------------------------------

def test_1_dropped_table_flush_returns_and_reports_the_spill(db_path: Path) -> None:
    tracer = Tracer("t", db=db_path)
    tracer.record("a", "x")
    assert within(10, tracer.flush).ok
    drop_traces_table(db_path)
    tracer.record("b", "x")
    report = within(10, tracer.flush, timeout=5)
    assert report.spilled == 1 and report.lost == 0 and not report.ok
    assert "no such table" in report.degraded
    assert tracer.status()["degraded"] == report.degraded
    assert tracer.route("hello").reason == "store_unavailable"
    closed = within(10, tracer.close, timeout=5)
    assert closed.spilled == 1
    assert '"input": "b"' in Path(f"{db_path}.spill.jsonl").read_text()


def test_1_degraded_mode_recovers_when_the_store_does_and_replays_the_spill(db_path: Path) -> None:
    tracer = Tracer("t", db=db_path, auto_refit=False)
    tracer.record("first", "x")
    within(10, tracer.flush)
    create = drop_traces_table(db_path)
    for i in range(50):
        within(STALL_S, tracer.record, f"while broken {i}", "x")
    assert within(10, tracer.flush, timeout=5).spilled == 50
    assert tracer.route("hello").reason == "store_unavailable"
    run_sql(db_path, create)  # the operator repairs the store
    assert wait_until(lambda: tracer.store.degraded is None, 15), "the writer did not notice the store recovered"
    assert within(10, tracer.flush).ok
    assert rows(db_path) == [(50,)]
    assert tracer.route("hello").reason == "no_policy"
    tracer.close()
    assert not Path(f"{db_path}.spill.jsonl").exists()


def test_1_full_queue_and_locked_store_never_block_and_lose_nothing(db_path: Path) -> None:
    store = TraceStore(db_path, queue_size=10)
    tracer = Tracer("t", db=store, auto_refit=False)
    locker = sqlite3.connect(db_path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock

    def record_all() -> list[float]:
        stalls = []
        for i in range(2_000):
            start = time.perf_counter()
            tracer.record(f"queued {i}", "x")
            stalls.append(time.perf_counter() - start)
        return stalls

    try:
        assert max(within(60, record_all)) < STALL_S
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert wait_until(lambda: store.degraded is None, 15)
    report = within(15, tracer.flush)
    assert report.ok, report
    assert rows(db_path) == [(2_000,)]
    within(10, store.close)


def test_1_spill_is_replayed_at_the_next_start_and_only_once(db_path: Path) -> None:
    store = TraceStore(db_path)
    create = drop_traces_table(db_path)
    for i in range(5):
        store.enqueue(make_trace("t", f"spilled {i}", "x"))
    assert within(10, store.close).spilled == 5
    spill = Path(f"{db_path}.spill.jsonl")
    with spill.open("a") as fh:
        fh.write('{"task": "t", "input": "torn li')  # a crash in the middle of a spill write
    run_sql(db_path, create)
    within(10, lambda: TraceStore(db_path).close())
    assert rows(db_path) == [(5,)] and not spill.exists()
    within(10, lambda: TraceStore(db_path).close())
    assert rows(db_path) == [(5,)]


def test_1_a_replay_cut_short_is_not_written_twice(db_path: Path) -> None:
    traces = [make_trace("t", f"once {i}", "x") for i in range(3)]
    with TraceStore(db_path) as store:
        store.append_many(traces)
    taken = db_path.with_name(db_path.name + ".spill.jsonl.replaying.999999999.1")  # its replayer died
    taken.write_text("".join(json.dumps({**t.__dict__, "id": None}) + "\n" for t in traces))
    within(10, lambda: TraceStore(db_path).close())
    assert rows(db_path) == [(3,)] and not taken.exists()


@pytest.fixture
def litellm_callback():
    from tracer_litellm import TracerCallback

    made = []

    def install(**kwargs) -> TracerCallback:
        callback = TracerCallback(**kwargs)
        litellm.callbacks = [callback]
        made.append(callback)
        return callback

    saved_cache = litellm.cache
    yield install
    litellm.logging_callback_manager._reset_all_callbacks()
    litellm.cache = saved_cache
    for callback in made:
        within(30, callback.close, timeout=10)


@pytest.mark.slow
async def test_1_litellm_acompletion_keeps_answering_with_a_broken_store(
    litellm_callback, teacher, db_path, banking_subset, embedder
) -> None:
    callback = litellm_callback(alpha=0.9, db=str(db_path), embedder=embedder)
    system = {"role": "system", "content": "Classify the banking query. Answer with the label only."}

    async def ask(text: str) -> str:
        call = litellm.acompletion(model="openai/teacher", api_base=teacher.base_url, api_key="sk-test",
                                   messages=[system, {"role": "user", "content": text}])
        response = await asyncio.wait_for(call, timeout=20)
        return response.choices[0].message.content

    text, label = banking_subset[0]
    assert await ask(text) == label
    for _ in range(400):  # LiteLLM logs the success on this event loop: wait without blocking it
        if db_path.exists() and rows(db_path) == [(1,)]:
            break
        await asyncio.sleep(0.05)
    assert rows(db_path) == [(1,)]
    drop_traces_table(db_path)
    for text, label in banking_subset[1:41]:
        assert await ask(text) == label
    report = await asyncio.wait_for(asyncio.to_thread(callback.flush, timeout=5), timeout=10)
    assert report.lost == 0 and report.spilled > 0 and "no such table" in report.degraded
    closed = await asyncio.wait_for(asyncio.to_thread(callback.close, timeout=5), timeout=10)
    assert closed.lost == 0 and closed.pending == 0
    assert teacher.request_count == 41


@pytest.mark.slow
def test_1_langchain_invoke_keeps_answering_with_a_broken_store(teacher, db_path, banking_subset, embedder) -> None:
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_openai import ChatOpenAI

    from tracer_langchain import with_tracer

    prompt = ChatPromptTemplate([("system", "Classify the banking query into one intent."), ("human", "{text}")])
    chain = prompt | ChatOpenAI(base_url=teacher.base_url, api_key="sk-test", model="teacher", max_retries=0) | StrOutputParser()
    wrapper = with_tracer(chain, task=TASK, alpha=0.9, db=db_path, embedder=embedder, auto_refit=False)
    text, label = banking_subset[0]
    assert within(20, wrapper.invoke, {"text": text}) == label
    within(10, wrapper.tracer.flush)
    drop_traces_table(db_path)
    for text, label in banking_subset[1:41]:
        assert within(20, wrapper.invoke, {"text": text}) == label
    report = within(10, wrapper.close, timeout=5)
    assert report.spilled == 40 and report.lost == 0 and report.pending == 0
    assert teacher.request_count == 41


# -- 2. a background refit at interpreter exit does not abort the process ---------------------

@pytest.mark.slow  # a subprocess Python
def test_2_process_exits_cleanly_while_a_refit_embeds(tmp_path: Path) -> None:
    data = SUBSET
    env = subprocess_env(TRACER_CACHE_DIR=str(tmp_path / "fresh-cache"))
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", REFIT_AT_EXIT, str(tmp_path / "exit.db"), str(data)],
                          env=env, capture_output=True, text=True, timeout=240)
    assert "last line" in done.stdout
    assert "terminate called" not in done.stderr, done.stderr[-2000:]
    assert done.returncode == 0, done.stderr[-2000:]
    assert time.monotonic() - started < 240
    assert rows(tmp_path / "exit.db") == [(1_600,)]


# -- 3. and 5. stored policies are validated on load; odd rows do not crash anything ----------

@pytest.fixture(scope="module")
def fitted_db(tmp_path_factory, banking_subset, embedder) -> Path:
    path = tmp_path_factory.mktemp("fitted-faults") / "tracer.db"
    with Tracer(TASK, path, alpha=0.9, embedder=embedder, auto_refit=False) as tracer:
        tracer.record_many([t for t, _ in banking_subset], [label for _, label in banking_subset])
        cert = tracer.fit()
    assert cert.deployed, cert.reason
    return path


@pytest.fixture
def fitted(fitted_db: Path, tmp_path: Path) -> Path:
    path = tmp_path / "copy.db"
    shutil.copy(fitted_db, path)
    return path


def _nan_ood_threshold(arrays, meta):
    meta["ood_threshold"] = float("nan")


def _weights_cut_to_5_labels(arrays, meta):
    """The output layer of the surrogate (of an ensemble: of its first member) cut to 5 labels."""
    ensemble = meta["surrogate"] == "ensemble"
    prefix, kind = ("s_m0_", str(arrays["s_kinds"][0])) if ensemble else ("s_", meta["surrogate"])
    last = max(k for k in arrays if k.startswith(prefix + "w"))
    bias = prefix + "b" + last[len(prefix) + 1:]
    if kind == "logistic":
        arrays[last], arrays[bias] = arrays[last][:5], arrays[bias][:5]
    else:
        arrays[last], arrays[bias] = arrays[last][:, :5], arrays[bias][:5]


def _duplicate_labels(arrays, meta):
    meta["labels"][1] = meta["labels"][0]


def _threshold_out_of_range(arrays, meta):
    meta["threshold"] = -3.0


@pytest.mark.parametrize("change, problem", [
    (nan_threshold, "threshold"),
    (_nan_ood_threshold, "ood_threshold"),
    (nan_weights, "NaN"),
    (_weights_cut_to_5_labels, "shape"),
    (_duplicate_labels, "not unique"),
    (_threshold_out_of_range, "threshold"),
])
@pytest.mark.slow
def test_3_an_invalid_policy_is_never_used_and_status_says_why(
    fitted: Path, embedder, banking_subset, change, problem: str
) -> None:
    texts = [t for t, _ in banking_subset[:200]] + ["What is the capital of France?"]
    with Tracer(TASK, fitted, alpha=0.9, embedder=embedder, auto_refit=False) as tracer:
        assert any(d.handled for d in tracer.route_many(texts))
    tamper(fitted, change)
    with pytest.raises(PolicyError, match=problem):
        with TraceStore(fitted) as store:
            Policy.from_row(store.latest_policy(TASK))
    with Tracer(TASK, fitted, alpha=0.9, embedder=embedder, auto_refit=False) as tracer:
        decisions = tracer.route_many(texts)
        assert not any(d.handled for d in decisions)
        assert {d.reason for d in decisions} == {"invalid_policy"}
        status = tracer.status()
        assert problem in status["policy_error"] and status["policy_version"] is None
    result = CliRunner().invoke(cli, ["status", "--db", str(fitted), "--task", TASK])
    assert result.exit_code == 0, result.output
    assert "not used" in result.output


@pytest.mark.slow
def test_3_a_vanished_policy_row_is_dropped_within_policy_check_s(fitted: Path, embedder, banking_subset) -> None:
    texts = [t for t, _ in banking_subset[:200]]
    with Tracer(TASK, fitted, alpha=0.9, embedder=embedder, auto_refit=False, policy_check_s=0.2) as tracer:
        assert any(d.handled for d in tracer.route_many(texts))
        with TraceStore(fitted) as other:  # a newer refused fit, then the deployed row disappears
            other.save_policy(TASK, fingerprint="", certificate={"reason": "refused"}, artifact=b"",
                              status="refused", n_traces=0)
        run_sql(fitted, "DELETE FROM policies WHERE status = 'deployed'")
        time.sleep(0.3)
        assert not any(d.handled for d in tracer.route_many(texts))
        assert tracer.policy_version is None


@pytest.mark.slow
def test_9_after_every_policy_row_is_deleted_other_processes_stop_answering(fitted: Path, embedder, banking_subset) -> None:
    texts = [t for t, _ in banking_subset[:200]]
    with Tracer(TASK, fitted, alpha=0.9, embedder=embedder, auto_refit=False, policy_check_s=0.2) as tracer:
        assert any(d.handled for d in tracer.route_many(texts))
        run_sql(fitted, "DELETE FROM policies")
        time.sleep(0.3)
        decisions = tracer.route_many(texts)
        assert not any(d.handled for d in decisions) and {d.reason for d in decisions} == {"no_policy"}


@pytest.mark.slow
def test_5_a_null_certificate_crashes_nothing(fitted: Path, embedder, tmp_path: Path) -> None:
    run_sql(fitted, "UPDATE policies SET certificate = 'null'")
    with Tracer(TASK, fitted, alpha=0.9, embedder=embedder, auto_refit=False) as tracer:
        status = tracer.status()
        assert "corrupt certificate" in status["policy_error"]
        assert "corrupt certificate" in status["last_fit"]
        assert tracer.route("I lost my card").reason == "invalid_policy"
    for args in (["status"], ["status", "--task", TASK],
                 ["report", "--task", TASK, "--no-refit", "--out", str(tmp_path / "r.html")]):
        result = CliRunner().invoke(cli, [*args, "--db", str(fitted)])
        assert result.exit_code == 0, (args, result.output, result.exception)


@pytest.mark.slow
def test_5_a_nan_weight_policy_does_not_crash_the_report(fitted: Path, tmp_path: Path) -> None:
    tamper(fitted, nan_weights)
    out = tmp_path / "r.html"
    result = CliRunner().invoke(cli, ["report", "--db", str(fitted), "--task", TASK, "--no-refit", "--out", str(out)])
    assert result.exit_code == 0, (result.output, result.exception)
    facts = json.loads(out.with_suffix(".json").read_text())
    assert "not used" in facts["summary"]["verdict"] and not facts["summary"]["deployed"]


@pytest.mark.slow
def test_9_route_prints_strict_json_even_from_a_nan_policy(fitted: Path) -> None:
    tamper(fitted, nan_weights)
    result = CliRunner().invoke(cli, ["route", "--db", str(fitted), "--task", TASK, "I lost my card", "top up"])
    assert result.exit_code == 0, result.output

    def no_constants(name: str):
        raise AssertionError(f"invalid JSON constant {name}")

    lines = [json.loads(line, parse_constant=no_constants) for line in result.stdout.splitlines()]
    assert [line["handled"] for line in lines] == [False, False]
    assert "policy v1 is not used" in result.stderr  # why, as a note on stderr: stdout stays pure JSON


# -- 4. rich markup in stored strings is printed, never interpreted ---------------------------

@pytest.mark.parametrize("task", ["[/]", "[bold red]RED[/bold red]", ":thumbs_up: [link=x]y[/link]"])
def test_4_markup_in_a_task_name_is_plain_text(db_path: Path, task: str) -> None:
    with TraceStore(db_path) as store:
        store.append(make_trace(task, "some input [i]x[/i]", "[red]label[/red]"))
        store.append(make_trace("plain", "other", "l"))
    for args in (["tasks"], ["status"], ["status", "--task", task]):
        result = CliRunner().invoke(cli, [*args, "--db", str(db_path)], terminal_width=200)
        assert result.exit_code == 0, (args, result.output, result.exception)
        assert task in result.output
        if args != ["status", "--task", task]:
            assert "plain" in result.output


# -- 6. export is a snapshot -----------------------------------------------------------------

def test_6_export_is_a_snapshot_beside_a_live_writer(db_path: Path) -> None:
    with TraceStore(db_path) as store:
        store.append_many([make_trace(TASK, f"before {i}", "x") for i in range(2_500)])

        class LiveWriter(io.StringIO):
            """Every exported line makes the live writer store one more trace of the task (at most 5,000)."""

            added = 0

            def write(self, text: str) -> int:
                if LiveWriter.added < 5_000:
                    store.append(make_trace(TASK, f"during {LiveWriter.added}", "x"))
                    LiveWriter.added += 1
                return super().write(text)

        out = LiveWriter()
        count = within(60, export_jsonl, store, TASK, out)
    exported = [json.loads(line)["input"] for line in out.getvalue().splitlines()]
    assert count == 2_500 and all(text.startswith("before") for text in exported)


# -- 7. another application's database is not adopted silently --------------------------------

def test_7_a_foreign_sqlite_file_is_refused_and_left_untouched(tmp_path: Path) -> None:
    other = tmp_path / "app.db"
    run_sql(other, "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)", "INSERT INTO users (name) VALUES ('ann')")
    before = other.read_bytes()
    with pytest.raises(StoreError, match="another application"):
        TraceStore(other)
    result = CliRunner().invoke(cli, ["tasks", "--db", str(other)])
    assert result.exit_code == 1 and "another application" in result.output
    assert other.read_bytes() == before
    assert rows(other, "PRAGMA journal_mode") == [("delete",)]
    assert rows(other, "PRAGMA user_version") == [(0,)]
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text('{"input": "hello", "label": "greeting"}\n')
    result = CliRunner().invoke(cli, ["import", str(jsonl), "--task", "t", "--db", str(other), "--adopt-foreign-db"])
    assert result.exit_code == 0, result.output
    assert rows(other, "SELECT name FROM users") == [("ann",)] and rows(other) == [(1,)]


# -- 8. a deleted or replaced database file is noticed ----------------------------------------

def test_8_a_deleted_database_file_is_noticed_and_nothing_is_lost(db_path: Path, caplog) -> None:
    caplog.set_level(logging.ERROR, logger="tracer.store")
    tracer = Tracer("t", db=db_path, auto_refit=False)
    tracer.record("before", "x")
    assert within(10, tracer.flush).ok
    db_path.unlink()
    tracer.record("after", "x")
    report = within(10, tracer.flush, timeout=5)
    assert not report.ok and report.spilled == 1 and "deleted" in report.degraded
    assert any("was deleted" in r.getMessage() for r in caplog.records)
    assert tracer.route("x").reason == "store_unavailable"
    within(10, tracer.close, timeout=5)
    with TraceStore(db_path) as store:  # the next start creates the file and replays the spill
        assert [t.input for t in store.iter_traces("t")] == ["after"]


def test_8_a_replaced_database_file_is_noticed(db_path: Path, tmp_path: Path) -> None:
    tracer = Tracer("t", db=db_path, auto_refit=False)
    tracer.record("before", "x")
    within(10, tracer.flush)
    replacement = tmp_path / "other.db"
    TraceStore(replacement).close()
    os.replace(replacement, db_path)
    tracer.record("after", "x")
    report = within(10, tracer.flush, timeout=5)
    assert report.spilled == 1 and "replaced" in report.degraded
    within(10, tracer.close, timeout=5)
    with TraceStore(db_path) as store:  # the old file's write-ahead log was not applied to the new file
        assert [t.input for t in store.iter_traces("t")] == ["after"]


# -- 9. the smaller points ----------------------------------------------------------------------

def test_9_export_errors_are_clear_and_leave_files_alone(db_path: Path, tmp_path: Path) -> None:
    with TraceStore(db_path) as store:
        store.append(make_trace(TASK, "hello", "x"))
    runner = CliRunner()
    result = runner.invoke(cli, ["export", "--db", str(db_path), "--task", TASK, "--out", "/nonexistent/x.jsonl"])
    assert result.exit_code == 1 and "does not exist" in result.output and "Traceback" not in result.output
    out = tmp_path / "keep.jsonl"
    out.write_text("precious\n")
    result = runner.invoke(cli, ["export", "--db", str(db_path), "--task", "unknown", "--out", str(out)])
    assert result.exit_code != 0 and "unknown" in result.output
    assert out.read_text() == "precious\n"


def test_9_reading_commands_do_not_create_a_missing_database(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    for args in (["tasks"], ["status"], ["export", "--task", "t"], ["route", "--task", "t", "hi"]):
        result = CliRunner().invoke(cli, [*args, "--db", str(missing)])
        assert result.exit_code == 1 and "does not exist" in result.output, (args, result.output)
    assert not missing.exists()


def test_9_tracer_arguments(db_path: Path) -> None:
    with pytest.raises(InvalidTraceError, match="task is too long"):
        Tracer("x" * 1_001, db=db_path)
    with Tracer("t", db=db_path, alpha=np.float32(0.9), delta=np.float64(0.05), auto_refit=False) as tracer:
        assert tracer.alpha == pytest.approx(0.9) and isinstance(tracer.alpha, float)
        for texts, labels in (("abc", ["x"] * 3), (["a", "b", "c"], "xyz")):
            with pytest.raises(InvalidTraceError, match="not a single str"):
                tracer.record_many(texts, labels)
        written = tracer.record_many((f"text {i}" for i in range(3)), iter(["x", "y", "z"]))
        assert written == 3
    assert rows(db_path) == [(3,)]


@pytest.mark.slow  # a subprocess Python
def test_9_sigkill_loses_at_most_what_the_queue_holds(db_path: Path) -> None:
    queue_size = 100
    child = subprocess.Popen([sys.executable, "-c", RECORD_THEN_WAIT, str(db_path), str(queue_size)],
                             env=subprocess_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "recorded"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    with TraceStore(db_path) as store:  # replays what the full queue spilled
        kept = store.counts("kill")["teacher"]
    assert 5_000 - 2 * queue_size <= kept <= 5_000
