"""The trace store on PostgreSQL beside SQLite: batched appends/s, the caller's hand-off, and 8 threads x 4
processes appending at once with nothing lost. The server is a throwaway cluster (tests/pgcluster.py)."""

from __future__ import annotations

import multiprocessing
import statistics
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from bench.store_bench import BATCH, HANDOFF_P50_TARGET_US, batched_throughput, queued_handoff
from tests.pgcluster import ThrowawayCluster
from tracer_core.storage.store import TraceStore
from tracer_core.storage.trace import make_trace

THROUGHPUT_TARGET = 10_000
THREADS, PROCESSES, PER_WRITER = 8, 4, 2_500
QUEUED = 20_000


def _write(db: str, writer: str, use_queue: bool) -> None:
    traces = [make_trace("load", f"{writer} input {i}", f"label{i % 7}", metadata={"w": writer}) for i in range(PER_WRITER)]
    with TraceStore(db, queue_size=1_000) as store:
        if use_queue:
            for trace in traces:
                store.enqueue(trace)
            store.flush(timeout=120)
        else:
            for i in range(0, PER_WRITER, 250):
                store.append_many(traces[i:i + 250])


def _process(db: str, writer: str, use_queue: bool, start) -> None:
    start.wait()
    _write(db, writer, use_queue)


def concurrent_writers(db: str) -> tuple[int, int, float]:
    """(traces expected, traces stored once each, wall s): 8 threads and 4 processes, half queued, half batched."""
    TraceStore(db).close()
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    processes = [ctx.Process(target=_process, args=(db, f"p{n}", n % 2 == 0, start)) for n in range(PROCESSES)]
    for p in processes:
        p.start()
    threads = [threading.Thread(target=_write, args=(db, f"t{n}", n % 2 == 0)) for n in range(THREADS)]
    time.sleep(3.0)  # the spawned interpreters import tracer before the start signal
    began = time.perf_counter()
    start.set()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in processes:
        p.join(timeout=600)
    wall = time.perf_counter() - began
    with TraceStore(db) as store:
        seen = Counter((t.metadata["w"], t.input) for t in store.iter_traces("load"))
    expected = (THREADS + PROCESSES) * PER_WRITER
    stored_once = sum(1 for n in seen.values() if n == 1)
    return expected, stored_once if len(seen) == sum(seen.values()) else -1, wall


def measure(db: str | Path, concurrent_db: str | Path) -> dict:
    with TraceStore(db, queue_size=QUEUED) as store:
        throughput = batched_throughput(store)
        latencies, end_to_end = queued_handoff(store)
    expected, stored, wall = concurrent_writers(str(concurrent_db))
    p50 = statistics.median(latencies)
    return {
        f"append_many/s (batches of {BATCH})": round(throughput),
        "hand-off p50 (µs)": round(p50, 1),
        "hand-off p99 (µs)": round(statistics.quantiles(latencies, n=100)[98], 1),
        "queued end-to-end/s": round(end_to_end),
        f"{THREADS} threads x {PROCESSES} processes: stored / sent": f"{stored:,} / {expected:,}",
        "their wall time (s)": round(wall, 1),
        "ok": throughput >= THROUGHPUT_TARGET and p50 <= HANDOFF_P50_TARGET_US and stored == expected,
    }


def run() -> list[dict]:
    cluster = ThrowawayCluster().init()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            rows = [{"backend": "SQLite (file)", **measure(Path(tmp) / "a.db", Path(tmp) / "b.db")}]
            rows.append({"backend": "PostgreSQL 127.0.0.1", **measure(cluster.fresh_url(), cluster.fresh_url())})
    finally:
        cluster.destroy()
    return rows


NOTE = (f"Targets: >= {THROUGHPUT_TARGET:,} traces/s batched, hand-off p50 <= {HANDOFF_P50_TARGET_US:g} µs, every "
        "trace of the concurrent writers stored exactly once (half the writers enqueue, half append_many; a queue "
        "of 1,000 that fills spills to the local spill file, which the writer replays, so those count too). The "
        "PostgreSQL server is a local throwaway cluster (fsync off), on the same 2 cores as the writers.")
