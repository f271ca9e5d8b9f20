"""Trace store benchmark: batched append throughput and the caller cost of one queued append."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from tracer_core.storage.store import TraceStore
from tracer_core.storage.trace import make_trace

N_BATCHED = 50_000
BATCH = 1_000
N_QUEUED = 20_000
THROUGHPUT_TARGET = 20_000
HANDOFF_P50_TARGET_US = 50.0


def _traces(task: str, n: int) -> list:
    return [
        make_trace(task, f"customer message number {i} about my card payment", f"label_{i % 77}",
                   fingerprint="fp", model="gpt-4o-mini", latency_ms=420.0, prompt_tokens=80,
                   completion_tokens=3, cost_usd=0.00002, metadata={"deferred_reason": "uncertain"})
        for i in range(n)
    ]


def batched_throughput(store: TraceStore) -> float:
    """Traces/s appended by one thread with append_many in batches of BATCH."""
    traces = _traces("batched", N_BATCHED)
    start = time.perf_counter()
    for i in range(0, N_BATCHED, BATCH):
        store.append_many(traces[i:i + BATCH])
    return N_BATCHED / (time.perf_counter() - start)


def queued_handoff(store: TraceStore) -> tuple[list[float], float]:
    """Per-call latencies (µs) of enqueue, and end-to-end traces/s until flushed."""
    traces = _traces("queued", N_QUEUED)
    store.enqueue(traces[0])  # start the writer thread outside the measurement
    store.flush()
    latencies = []
    start = time.perf_counter()
    for trace in traces[1:]:
        t0 = time.perf_counter_ns()
        store.enqueue(trace)
        latencies.append((time.perf_counter_ns() - t0) / 1_000)
    store.flush()
    return latencies, (N_QUEUED - 1) / (time.perf_counter() - start)


def run() -> list[dict]:
    """Benchmark rows: {"metric", "value", "target", "ok"}."""
    with tempfile.TemporaryDirectory() as tmp, TraceStore(Path(tmp) / "bench.db", queue_size=N_QUEUED) as store:
        throughput = batched_throughput(store)
        latencies, end_to_end = queued_handoff(store)
        assert store.counts()["teacher"] == N_BATCHED + N_QUEUED
    p50 = statistics.median(latencies)
    p99 = statistics.quantiles(latencies, n=100)[98]
    return [
        {"metric": f"store: append_many throughput, 1 thread, batches of {BATCH} (traces/s)",
         "value": round(throughput), "target": f">= {THROUGHPUT_TARGET:,}", "ok": throughput >= THROUGHPUT_TARGET},
        {"metric": "store: enqueue caller latency (queue hand-off) p50 (µs)", "value": round(p50, 1),
         "target": f"< {HANDOFF_P50_TARGET_US:g}", "ok": p50 < HANDOFF_P50_TARGET_US},
        {"metric": "store: enqueue caller latency p99 (µs)", "value": round(p99, 1), "target": "-", "ok": True},
        {"metric": "store: queued end-to-end throughput until flushed (traces/s)", "value": round(end_to_end),
         "target": "-", "ok": True},
    ]


def markdown(rows: list[dict]) -> str:
    """Rows as a Markdown table."""
    lines = ["| metric | value | target | ok |", "|---|---|---|---|"]
    lines += [f"| {r['metric']} | {r['value']:,} | {r['target']} | {'yes' if r['ok'] else 'NO'} |" for r in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(run()))
