"""8 threads and 4 processes append 5,000 traces each to one store at once (an SQLite file, a PostgreSQL
server): nothing is lost."""

from __future__ import annotations

import multiprocessing
import threading
from collections import Counter
from multiprocessing.synchronize import Event as EventType

import pytest

from tracer_core.storage.store import TraceStore
from tracer_core.storage.trace import make_trace

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


@pytest.mark.slow
def test_threads_and_processes_lose_nothing(store_db) -> None:
    TraceStore(store_db).close()  # create the schema once, as an application would
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    processes = [
        ctx.Process(target=process_main, args=(str(store_db), f"p{n}", n % 2 == 0, start)) for n in range(PROCESSES)
    ]
    for p in processes:
        p.start()

    errors: list[BaseException] = []
    with TraceStore(store_db, queue_size=1_000) as store:

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
    with TraceStore(store_db) as store:
        traces = list(store.iter_traces("load"))
    total = len(traces)
    per_writer = Counter(t.metadata["w"] for t in traces)
    distinct = len({t.input for t in traces})
    assert total == (THREADS + PROCESSES) * PER_WRITER == 60_000
    assert per_writer == {w: PER_WRITER for w in [f"t{n}" for n in range(THREADS)] + [f"p{n}" for n in range(PROCESSES)]}
    assert distinct == total
