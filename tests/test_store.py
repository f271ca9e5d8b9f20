"""TraceStore on a real SQLite file and a real PostgreSQL server: API, schema/migrations, policies, bad input.

Tests taking `store` or `store_db` run on both backends; those taking `db_path` are about the SQLite file.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tracer_core.errors import CorruptStoreError, InvalidTraceError, PolicyError, StoreError, TracerError
from tracer_core.storage import migrations
from tracer_core.storage import store as store_module
from tracer_core.storage.store import SCHEMA_VERSION, TraceStore, input_hash
from tracer_core.storage.trace import MAX_INPUT_CHARS, Trace, make_trace


@pytest.fixture
def store(store_db):
    with TraceStore(store_db) as s:
        yield s


def row_count(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT count(*) FROM traces").fetchone()[0]


# --- opening, schema, migrations ------------------------------------------------------------

def test_fresh_file_is_migrated_to_current_schema_in_wal_mode(db_path: Path) -> None:
    TraceStore(db_path).close()
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        policy_columns = {r[1] for r in conn.execute("PRAGMA table_info(policies)")}
    assert {"traces", "policies"} <= tables
    assert "idx_traces_task_source_id" in indexes
    assert {"fingerprint", "n_traces", "certificate", "artifact", "status", "version"} <= policy_columns


def test_migration_steps_run_in_order_from_an_older_version(db_path: Path, monkeypatch) -> None:
    TraceStore(db_path).close()

    def add_column(db) -> None:
        db.table("traces").add_column("review", str)

    step = migrations.Migration("m999_review", add_column, ("ALTER TABLE traces ADD COLUMN review TEXT",))
    monkeypatch.setattr(migrations, "MIGRATIONS", [*migrations.MIGRATIONS, step])
    TraceStore(db_path).close()
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
        assert "review" in {r[1] for r in conn.execute("PRAGMA table_info(traces)")}
        assert [r[0] for r in conn.execute("SELECT name FROM tracer_migrations ORDER BY rowid")] == [
            "m001_traces_and_policies", "m002_routing_context", "m003_certification_attempts",
            "m004_packed_calibration_ids", "m999_review"]


def test_a_store_of_an_earlier_release_gets_its_steps_recorded(db_path: Path) -> None:
    shutil.copy(Path(__file__).parent / "data" / "release1.db", db_path)  # user_version 1, no steps table
    TraceStore(db_path).close()
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
        names = [r[0] for r in conn.execute("SELECT name FROM tracer_migrations ORDER BY rowid")]
    assert names == ["m001_traces_and_policies", "m002_routing_context", "m003_certification_attempts",
                     "m004_packed_calibration_ids"]


def test_unknown_future_schema_version_is_refused(db_path: Path) -> None:
    with sqlite3.connect(db_path) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match="schema version 99.*upgrade tracer"):
        TraceStore(db_path)


def test_path_defaults_to_tracer_db_env(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TRACER_DB", str(tmp_path / "from-env.db"))
    with TraceStore() as s:
        assert s.path == tmp_path / "from-env.db"
    monkeypatch.delenv("TRACER_DB")
    monkeypatch.chdir(tmp_path)
    with TraceStore() as s:
        assert s.path == Path("tracer.db")
    assert (tmp_path / "tracer.db").exists()


# --- traces ---------------------------------------------------------------------------------

def test_append_and_iterate_round_trip_every_field(store: TraceStore) -> None:
    trace = make_trace(
        "intent", "where is my card?", " card_arrival ", source="audit", fingerprint="fp1",
        model="gpt-x", latency_ms=12.5, prompt_tokens=30, completion_tokens=2, cost_usd=0.0001,
        created_at=1000.0, metadata={"reason": "audit-sample", "n": [1, 2]},
    )
    new_id = store.append(trace)
    assert new_id == trace.id == 1
    (got,) = store.iter_traces("intent")
    assert got == trace
    assert got.label == "card_arrival"
    assert store._read("SELECT input_hash FROM traces") == [(input_hash("where is my card?"),)]


def test_append_many_counts_tasks_and_filters(store: TraceStore) -> None:
    batch = [make_trace("a", f"text {i}", "x" if i % 2 else "y", fingerprint="f1") for i in range(10)]
    batch += [make_trace("a", f"s {i}", "x", source="surrogate", route="handled", policy_version=1) for i in range(3)]
    batch += [make_trace("b", "other", "z", fingerprint="f2", route="low_confidence")]
    assert store.append_many(batch) == 14
    assert store.counts() == {"teacher": 11, "surrogate": 3, "audit": 0, "cached": 0, "unparsed": 0}
    assert store.counts("a") == {"teacher": 10, "surrogate": 3, "audit": 0, "cached": 0, "unparsed": 0}
    tasks = {t["task"]: t for t in store.tasks()}
    assert tasks["a"]["teacher"] == 10 and tasks["a"]["surrogate"] == 3 and tasks["a"]["fingerprints"] == 2
    assert tasks["b"]["fingerprints"] == 1 and tasks["b"]["last_trace_at"] > 0
    inputs, labels, ids = store.teacher_examples("a", fingerprint="f1")
    assert inputs == [f"text {i}" for i in range(10)] and labels[:2] == ["y", "x"] and ids == sorted(ids)
    assert store.max_id("a") == ids[-1]
    assert store.max_id("a", source="surrogate") == 13
    assert store.max_id("a", source="audit") == 0
    assert [t.id for t in store.iter_traces("a", since_id=3, until_id=6)] == [4, 5, 6]
    assert len(list(store.iter_traces("a", source="surrogate"))) == 3
    assert store.counts_since("a", 0) == [
        {"source": "surrogate", "reason": "handled", "n": 3},
        {"source": "teacher", "reason": None, "n": 10},
    ]
    assert store.counts_since("b", 0) == [{"source": "teacher", "reason": "low_confidence", "n": 1}]
    assert store.counts_since("a", 0, fingerprint="f1") == [{"source": "teacher", "reason": None, "n": 10}]
    versions = {(v["task"], v["fingerprint"]): v for v in store.versions()}
    assert set(versions) == {("a", "f1"), ("a", ""), ("b", "f2")}
    assert versions[("a", "f1")]["teacher"] == 10 and versions[("a", "")]["surrogate"] == 3
    assert store.counts_since("a", 2**40) == []


def test_iter_traces_reads_past_one_chunk(store: TraceStore) -> None:
    n = store_module.ITER_CHUNK * 2 + 7
    store.append_many(make_trace("big", f"t{i}", "l") for i in range(n))
    ids = [t.id for t in store.iter_traces("big")]
    assert ids == list(range(1, n + 1))


def test_enqueue_is_committed_by_flush_and_by_close(store_db) -> None:
    s = TraceStore(store_db, queue_size=4)
    for i in range(50):
        s.enqueue(make_trace("q", f"in {i}", "lab"))
    s.flush(timeout=30)
    assert s.counts("q")["teacher"] == 50
    for i in range(20):
        s.enqueue(make_trace("q", f"more {i}", "lab"))
    s.close()
    s.close()  # idempotent
    with TraceStore(store_db) as again:
        assert again.counts("q")["teacher"] == 70
    with pytest.raises(StoreError, match="closed"):
        s.append(make_trace("q", "late", "lab"))


def test_full_queue_blocks_and_logs_instead_of_dropping(db_path: Path, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="tracer.store")
    with TraceStore(db_path, queue_size=1) as s:
        blocker = sqlite3.connect(db_path, check_same_thread=False)
        blocker.execute("BEGIN IMMEDIATE")  # the writer thread now waits on the lock, so the queue fills
        threading.Timer(1.0, blocker.rollback).start()
        for i in range(300):
            s.enqueue(make_trace("q", f"in {i}", "lab"))
        s.flush(timeout=30)
        blocker.close()
        assert s.counts("q")["teacher"] == 300
    assert any("queue is full" in r.getMessage() for r in caplog.records)


def test_store_is_shared_safely_between_threads(store: TraceStore) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(100):
                store.append(make_trace("th", f"{n}-{i}", "l"))
                assert store.max_id("th") > 0
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.counts("th")["teacher"] == 400


# --- policies -------------------------------------------------------------------------------

def test_policy_versions_and_latest(store: TraceStore) -> None:
    assert store.latest_policy("t") is None and store.latest_policy_version("t") is None
    v1 = store.save_policy("t", fingerprint="f", certificate={"alpha": 0.9}, artifact=b"one", status="deployed", n_traces=10)
    v2 = store.save_policy("t", fingerprint="f", certificate={"alpha": 0.95}, artifact=b"two", status="rejected", n_traces=20)
    v1_other = store.save_policy("t", fingerprint="g", certificate={}, artifact=b"g", status="deployed", n_traces=5)
    assert (v1, v2, v1_other) == (1, 2, 1)
    latest = store.latest_policy("t", fingerprint="f")
    assert latest["version"] == 1 and latest["artifact"] == b"one" and latest["certificate"] == {"alpha": 0.9}
    assert store.latest_policy("t", fingerprint="f", status=None)["artifact"] == b"two"
    assert store.latest_policy_version("t", fingerprint="f") == 1
    assert store.latest_policy_version("t", fingerprint="f", status=None) == 2
    listed = store.policies("t", fingerprint="f")
    assert [p["version"] for p in listed] == [2, 1] and "artifact" not in listed[0]
    assert len(store.policies("t")) == 3


def test_save_policy_versions_are_unique_under_concurrent_writers(store_db) -> None:
    stores = [TraceStore(store_db) for _ in range(4)]
    versions: list[int] = []

    def save(s: TraceStore) -> None:
        for _ in range(10):
            versions.append(s.save_policy("t", fingerprint="", certificate={}, artifact=b"", status="deployed", n_traces=0))

    threads = [threading.Thread(target=save, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    assert sorted(versions) == list(range(1, 41))


def test_bad_policy_inputs_raise_policy_error(store: TraceStore) -> None:
    with pytest.raises(PolicyError, match="artifact must be bytes"):
        store.save_policy("t", fingerprint="", certificate={}, artifact="text", status="deployed", n_traces=0)
    with pytest.raises(PolicyError, match="certificate is not JSON"):
        store.save_policy("t", fingerprint="", certificate={"x": object()}, artifact=b"", status="deployed", n_traces=0)
    assert store.policies("t") == []


# --- bad input: clear TracerError, nothing already stored is lost ----------------------------

BAD_TRACES = [
    (lambda: make_trace("t", "hello", 3), "label must be a string"),
    (lambda: make_trace("t", "hello", None), "label must be a string"),
    (lambda: make_trace("t", "", "l"), "input is empty"),
    (lambda: make_trace("t", "   \n", "l"), "input is empty"),
    (lambda: make_trace("t", b"\xff\xfe bad", "l"), "input is not valid UTF-8"),
    (lambda: make_trace("t", "x" * 1_000_000, "l"), "input is too large: 1,000,000 characters"),
    (lambda: make_trace("t", "\ud800", "l"), "input is not valid UTF-8"),
    (lambda: make_trace("t", "hi", "l", source="robot"), "source must be one of"),
    (lambda: make_trace("t", "hi", "l", metadata={"x": {1, 2}}), "metadata is not JSON"),
    (lambda: make_trace("t", "hi", "l", prompt_tokens=-1), "prompt_tokens must be a non-negative integer"),
    (lambda: make_trace("", "hi", "l"), "task is empty"),
    (lambda: make_trace("t", "hi", "l", colour="red"), "invalid trace field"),
    (lambda: make_trace("t", "nul \x00 inside", "l"), "input contains a NUL character at position 4"),
]


@pytest.mark.parametrize("build, message", BAD_TRACES)
def test_make_trace_rejects_bad_input_with_a_named_problem(build, message: str) -> None:
    with pytest.raises(InvalidTraceError, match=message):
        build()


def test_utf8_bytes_input_is_decoded_and_max_size_accepted() -> None:
    assert make_trace("t", "é".encode(), "l").input == "é"
    assert len(make_trace("t", "x" * MAX_INPUT_CHARS, "l").input) == MAX_INPUT_CHARS


BAD_RAW = [
    (Trace(task="t", input="hello", label=7), "label must be a string"),
    (Trace(task="t", input="", label="l"), "input is empty"),
    (Trace(task="t", input=b"\xc3\x28", label="l"), "input is not valid UTF-8"),
    (Trace(task="t", input="y" * 1_000_000, label="l"), "input is too large"),
    (Trace(task="t", input="fine", label="nul\x00"), "label contains a NUL character"),
]


@pytest.mark.parametrize("bad, message", BAD_RAW)
@pytest.mark.parametrize("path", ["append", "append_many", "enqueue"])
def test_bad_trace_raises_in_caller_and_keeps_stored_rows(store: TraceStore, bad: Trace, message: str, path: str) -> None:
    store.append_many([make_trace("t", f"good {i}", "ok") for i in range(5)])
    call = {
        "append": lambda: store.append(bad),
        "append_many": lambda: store.append_many([make_trace("t", "fine", "ok"), bad]),
        "enqueue": lambda: store.enqueue(bad),
    }[path]
    with pytest.raises(InvalidTraceError, match=message):
        call()
    store.enqueue(make_trace("t", "after", "ok"))
    store.flush(timeout=30)
    assert [t.input for t in store.iter_traces("t")] == [f"good {i}" for i in range(5)] + ["after"]


def test_non_sqlite_file_is_a_corrupt_store_error_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    content = b"these are my notes, not a database\n" * 200
    path.write_bytes(content)
    with pytest.raises(CorruptStoreError, match="not a usable SQLite database"):
        TraceStore(path)
    assert path.read_bytes() == content


def test_corrupt_store_does_not_touch_a_good_store(db_path: Path, tmp_path: Path) -> None:
    with TraceStore(db_path) as good:
        good.append(make_trace("t", "kept", "l"))
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"\x00garbage" * 1000)
    with pytest.raises(TracerError):
        TraceStore(bad)
    assert row_count(db_path) == 1


@pytest.mark.parametrize("make_path, message", [
    (lambda tmp: tmp, "it is a directory"),
    (lambda tmp: tmp / "missing" / "tracer.db", "does not exist"),
])
def test_unopenable_path_is_a_store_error(tmp_path: Path, make_path, message: str) -> None:
    with pytest.raises(StoreError, match=message):
        TraceStore(make_path(tmp_path))


def test_failed_writes_are_spilled_not_lost(db_path: Path, caplog) -> None:
    caplog.set_level(logging.ERROR, logger="tracer.store")
    s = TraceStore(db_path)
    s.enqueue(make_trace("t", "first", "l"))
    s.flush(timeout=30)
    with sqlite3.connect(db_path) as conn:  # make every later insert fail
        conn.execute("CREATE TRIGGER no_insert BEFORE INSERT ON traces BEGIN SELECT RAISE(FAIL, 'disk says no'); END")
    s.enqueue(make_trace("t", "second", "l"))
    s.close()
    spill = db_path.with_name(db_path.name + ".spill.jsonl")
    assert '"input": "second"' in spill.read_text()
    assert any("saved them to" in r.getMessage() for r in caplog.records)
    assert row_count(db_path) == 1


@pytest.mark.slow  # a subprocess Python
def test_queued_traces_are_flushed_at_interpreter_exit(db_path: Path) -> None:
    script = (
        "import sys\n"
        "from tracer_core.storage.store import TraceStore\n"
        "from tracer_core.storage.trace import make_trace\n"
        "store = TraceStore(sys.argv[1])\n"
        "for i in range(2000):\n"
        "    store.enqueue(make_trace('exit', f'in {i}', 'l'))\n"
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-c", script, str(db_path)], check=True, env=env, timeout=120)
    assert row_count(db_path) == 2000
