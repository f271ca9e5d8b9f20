"""Speed: fit time on all Banking77 traces, per-input routing latency, batch routing."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from bench.data import load
from bench.fits import FitCache, FitKey, fit_now
from bench.routing import teacher_key

SPEED_ALPHA = 0.95
FIT_TARGET_S, FIT_REF = 60.0, "278 s"
DECIDE_P50_TARGET_MS, DECIDE_REF = 1.0, "10-16 ms"
BATCH_TARGET_MS = 50.0
N_SINGLE = 500
N_TRACER = 200
N_BATCH = 1000


def _pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


def _row(metric: str, value: str, target: str, reference: str, ok: bool | None) -> dict:
    return {"metric": metric, "value": value, "target": target, "reference": reference,
            "ok": "-" if ok is None else "met" if ok else "NOT met"}


def speed(cache: FitCache) -> list[dict]:
    """Fit alone in this process (result cached for the routing table), then the latencies."""
    from tracer_core.learning.embedder import Embedder, get_default_embedder
    from tracer_core.learning.policy_seal import seal
    from tracer_core.serving.tracer import Tracer
    from tracer_core.storage.store import TraceStore

    key = FitKey(teacher_key("banking77", "T1"), SPEED_ALPHA)
    result = cache.results.get(key) if key in cache.results and not cache.results[key].pooled else None
    if result is None:
        result = fit_now(key)
        cache.put(result)
    split = load(key.data)
    rows = [_row(f"fit, all {len(split.train_texts):,} Banking77 T1 traces, alpha {SPEED_ALPHA} (s, embeddings cached)",
                 f"{result.seconds:.1f}", f"<= {FIT_TARGET_S:g}", FIT_REF, result.seconds <= FIT_TARGET_S)]
    policy = result.policy
    if policy is None:
        rows.append(_row("routing latency", "no policy deployed", "-", "-", False))
        return rows

    texts = split.test_texts
    vecs = get_default_embedder()(texts)
    for i in range(20):  # warm-up
        policy.decide([texts[i]], vecs[i][None])
    single = []
    for i in range(min(N_SINGLE, len(texts))):
        t0 = time.perf_counter()
        policy.decide([texts[i]], vecs[i][None])
        single.append((time.perf_counter() - t0) * 1e3)
    p50 = statistics.median(single)
    rows.append(_row(f"decide() one input, embedding excluded, incl. OOD check, p50 over {len(single)} (ms)",
                     f"{p50:.3f}", f"<= {DECIDE_P50_TARGET_MS:g}", DECIDE_REF, p50 <= DECIDE_P50_TARGET_MS))
    rows.append(_row("decide() one input, p99 (ms)", f"{_pct(single, 99):.3f}", "-", "-", None))

    batch = []
    for _ in range(7):
        t0 = time.perf_counter()
        policy.decide(texts[:N_BATCH], vecs[:N_BATCH])
        batch.append((time.perf_counter() - t0) * 1e3)
    med = statistics.median(batch)
    rows.append(_row(f"route_many: decide() of {N_BATCH:,} embedded inputs, median of 7 (ms)", f"{med:.1f}",
                     f"<= {BATCH_TARGET_MS:g}", "-", med <= BATCH_TARGET_MS))

    with tempfile.TemporaryDirectory() as tmp:
        store = TraceStore(Path(tmp) / "speed.db")
        artifact = seal(policy)  # writes the artifact's SHA-256 into its certificate, which vouches for it
        store.save_policy("bench", fingerprint="", certificate=policy.certificate.to_dict(), artifact=artifact,
                          status="deployed", n_traces=len(split.train_texts))
        fresh = Embedder(cache_dir=Path(tmp) / "emb")  # empty cache: every route embeds
        for label, embedder in (("uncached text (model runs)", fresh), ("cached text", get_default_embedder())):
            tracer = Tracer("bench", db=store, embedder=embedder, auto_refit=False)
            tracer.route("warm up the model and load the policy")
            times = []
            for text in texts[:N_TRACER]:
                t0 = time.perf_counter()
                decision = tracer.route(text)
                times.append((time.perf_counter() - t0) * 1e3)
                assert decision.reason != "error"
            rows.append(_row(f"Tracer.route(), {label}, p50 over {len(times)} (ms)", f"{statistics.median(times):.2f}",
                             "-", "-", None))
            rows.append(_row(f"Tracer.route(), {label}, p99 (ms)", f"{_pct(times, 99):.2f}", "-", "-", None))
        store.close()
    return rows
