"""8 threads and 4 processes append 5,000 traces each to one SQLite file at once: nothing is lost."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from multiprocessing.synchronize import Event as EventType
from pathlib import Path

import pytest

from tracer_core.store import TraceStore
from tracer_core.trace import make_trace

PER_WRITER = 5_000
THREADS = 8
PROCESSES = 4
BATCH = 250


def write_traces(store: TraceStore, writer: str, use_queue: bool) -> None:
    """Write PER_WRITER traces tagged `writer`, through the queue or in append_many batches."""
    traces = (make_trace("load", f"{writer} input {i}", f"label{i % 7}", metadata={"w": writer}) for i in range(PER_WRITER))
    if use_queue:
        for trace in traces:
            store.enqueue(trace)
        store.flush()
        return
    batch = []
    for trace in traces:
        batch.append(trace)
        if len(batch) == BATCH:
            store.append_many(batch)
            batch = []
    store.append_many(batch)


def process_main(path: str, writer: str, use_queue: bool, start: EventType) -> None:
    start.wait()
    with TraceStore(path, queue_size=500) as store:
        write_traces(store, writer, use_queue)


@pytest.mark.slow  # 4 subprocess Pythons
def test_threads_and_processes_lose_nothing(db_path: Path) -> None:
    TraceStore(db_path).close()  # create the schema once, as an application would
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    processes = [
        ctx.Process(target=process_main, args=(str(db_path), f"p{n}", n % 2 == 0, start)) for n in range(PROCESSES)
    ]
    for p in processes:
        p.start()

    errors: list[BaseException] = []
    with TraceStore(db_path, queue_size=1_000) as store:

        def thread_main(n: int) -> None:
            try:
                write_traces(store, f"t{n}", use_queue=n % 2 == 0)
            except BaseException as exc:  # noqa: BLE001 - surfaced by the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=thread_main, args=(n,)) for n in range(THREADS)]
        start.set()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for p in processes:
        p.join(timeout=300)

    assert errors == []
    assert [p.exitcode for p in processes] == [0] * PROCESSES
    with sqlite3.connect(db_path) as conn:
        total = conn.execute("SELECT count(*) FROM traces").fetchone()[0]
        per_writer = dict(conn.execute("SELECT json_extract(metadata, '$.w'), count(*) FROM traces GROUP BY 1"))
        distinct = conn.execute("SELECT count(DISTINCT input) FROM traces").fetchone()[0]
    assert total == (THREADS + PROCESSES) * PER_WRITER == 60_000
    assert per_writer == {w: PER_WRITER for w in [f"t{n}" for n in range(THREADS)] + [f"p{n}" for n in range(PROCESSES)]}
    assert distinct == total
