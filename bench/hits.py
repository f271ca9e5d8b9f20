"""Hits while tracer learns: the latency of surrogate answers idle and during a background refit.

One process serves surrogate answers from one task version of a LangChain chain (Banking77 T1,
~3,000 teacher traces, alpha 0.90) while that version refits in the background, as a service
does. Three kinds of hit are timed in turn: `Tracer.route()` of a text whose embedding is cached,
`Tracer.route()` of a text never seen (the model embeds it), and `chain.invoke()` of the wrapped
chain answered by the surrogate (no LLM call). Windows alternate: idle, then a background refit
started by 200 new teacher traces (as `Fitter.refit` runs it: lower priority, one numerical
thread), repeated; then the same fit run unlimited (`Tracer.fit()` in a thread, as every
background refit ran before issue 23) for comparison. A refit window lasts from the fit's start
until `POLICY_SETTLE_S` after its end, so the loading of the new policy by the next policy check
is timed too. Only calls answered by the surrogate count.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from bench.data import teacher_split, train_order
from bench.speed import _pct

TRACES = 3_000
REFIT_TRACES = 200  # new teacher traces that start each background refit (the Tracer's refit_every)
ROUNDS = 2  # background refits; and as many unlimited fits
IDLE_CYCLES = 100  # cycles of the three kinds of hit per idle window
ALPHA = 0.90
POLICY_CHECK_S = 1.0  # the Tracer's default
POLICY_SETTLE_S = POLICY_CHECK_S + 0.5
TARGET_RATIO = 3.0
KINDS = ("Tracer.route(), cached embedding", "Tracer.route(), new text (model runs)", "LangChain chain.invoke()")
NOTE = (f"{TRACES:,} Banking77 T1 teacher traces (alpha {ALPHA}) in one process; each refit adds {REFIT_TRACES} "
        "traces first. Hits are timed in turn (a cached text, a text never embedded, a chain call answered by "
        f"the surrogate); idle windows of {IDLE_CYCLES} turns alternate with refit windows, which last from the "
        f"fit's start until {POLICY_SETTLE_S:g} s after its end (the new policy is loaded by the next policy "
        "check). background refit = `Fitter.refit` (nice +10, one BLAS and OpenMP thread, "
        "tracer_core/serving/refit_limits.py); unlimited fit = `Tracer.fit()` in a thread, as background refits ran "
        f"before. Target: p99 during a background refit <= {TARGET_RATIO:g} x idle p99. The library defaults "
        "(no OMP_NUM_THREADS) apply, as in a service.")


@dataclass
class Timings:
    """Milliseconds of the hits of each kind, by condition."""

    by: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    fit_seconds: dict[str, list[float]] = field(default_factory=dict)

    def add(self, condition: str, kind: str, ms: float) -> None:
        self.by.setdefault((condition, kind), []).append(ms)

    def get(self, condition: str, kind: str) -> list[float]:
        return self.by.get((condition, kind), [])


class Service:
    """A wrapped chain, its task version's Tracer and the texts to time hits with."""

    def __init__(self, chain: Any, tracer: Any, teacher: Any, cached: list[str], new: Iterator[str]) -> None:
        self.chain, self.tracer, self.teacher = chain, tracer, teacher
        self.cached, self.new = cached, new
        self._turn = 0

    def cycle(self, timings: Timings, condition: str) -> None:
        """Time one hit of each kind (misses are not counted)."""
        text = self.cached[self._turn % len(self.cached)]
        self._turn += 1
        for kind, call in zip(KINDS, (lambda: self._route(text), lambda: self._route(next(self.new)),
                                      lambda: self._invoke(text)), strict=True):
            started = time.perf_counter()
            hit = call()
            elapsed = (time.perf_counter() - started) * 1e3
            if hit:
                timings.add(condition, kind, elapsed)

    def _route(self, text: str) -> bool:
        return bool(self.tracer.route(text).handled)

    def _invoke(self, text: str) -> bool:
        asked = self.teacher.request_count
        self.chain.invoke({"text": text})
        return self.teacher.request_count == asked

    def during(self, fit: Callable[[], Any], timings: Timings, condition: str) -> None:
        """Time hits from `fit()`'s start (in its own thread) until POLICY_SETTLE_S after its end."""
        started = time.perf_counter()
        thread = threading.Thread(target=fit, name=f"bench-{condition}")
        thread.start()
        self.timed_while(lambda: thread.is_alive(), timings, condition)
        timings.fit_seconds.setdefault(condition, []).append(time.perf_counter() - started)
        settle = time.perf_counter() + POLICY_SETTLE_S
        self.timed_while(lambda: time.perf_counter() < settle, timings, condition)

    def timed_while(self, going: Callable[[], bool], timings: Timings, condition: str) -> None:
        while going():
            self.cycle(timings, condition)

    def idle(self, timings: Timings) -> None:
        for _ in range(IDLE_CYCLES):
            self.cycle(timings, "idle")


def hits() -> list[dict]:
    """Rows: per kind of hit, p50/p99 idle, during a background refit and during an unlimited fit."""
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_openai import ChatOpenAI
    from pydantic import SecretStr

    from tracer_core.learning.embedder import Embedder
    from tracer_demo.local_teacher import LocalTeacher
    from tracer_langchain import with_tracer

    split = teacher_split("banking77", "T1")
    order = [int(i) for i in train_order("banking77")]
    base = order[:TRACES]
    batches = [order[TRACES + r * REFIT_TRACES: TRACES + (r + 1) * REFIT_TRACES] for r in range(ROUNDS)]
    used = set(base) | {i for batch in batches for i in batch}
    unseen = split.test_texts + [split.train_texts[i] for i in order if i not in used]
    labels = dict(zip(split.train_texts + split.test_texts, split.train_labels + split.test_labels, strict=True))

    timings = Timings()
    with tempfile.TemporaryDirectory() as tmp, LocalTeacher(labels) as teacher:
        embedder = Embedder(cache_dir=Path(tmp) / "embeddings")  # empty: texts never seen make the model run
        # traces were routed (so embedded) before they were recorded, as in a service
        embedder([split.train_texts[i] for i in used])
        prompt = ChatPromptTemplate([("system", "Classify the banking query into one intent."), ("human", "{text}")])
        llm = ChatOpenAI(model="teacher", base_url=teacher.base_url, api_key=SecretStr("sk-bench"), max_retries=0)
        chain = with_tracer(prompt | llm | StrOutputParser(), task="hits", db=str(Path(tmp) / "hits.db"),
                            alpha=ALPHA, audit_rate=0.0, embedder=embedder, refit_every=REFIT_TRACES,
                            policy_check_s=POLICY_CHECK_S)
        tracer = chain.tracer_for({"text": "warm-up"})
        tracer.record_many([split.train_texts[i] for i in base], [split.train_labels[i] for i in base])
        tracer.wait_for_refit(None)  # the first background refit, not timed
        if tracer.policy_version is None:
            return [{"hit": "no policy deployed", "ok": False}]
        candidates = [split.train_texts[i] for i in base]
        cached = [t for t, d in zip(candidates, tracer.route_many(candidates), strict=True) if d.handled]
        service = Service(chain, tracer, teacher, cached, iter(unseen))
        service.idle(Timings())  # warm-up: model, policy, chain

        for batch in batches:
            service.idle(timings)
            texts, batch_labels = [split.train_texts[i] for i in batch], [split.train_labels[i] for i in batch]
            service.during(partial(_background_refit, tracer, texts, batch_labels), timings, "background refit")
        for _ in range(ROUNDS):
            service.idle(timings)
            service.during(tracer.fit, timings, "unlimited fit")
        tracer.close()
    return _rows(timings)


def _background_refit(tracer: Any, texts: list[str], labels: list[str]) -> None:
    """Record a batch of teacher traces (which starts the Tracer's own background refit) and wait for it."""
    tracer.record_many(texts, labels)
    tracer.wait_for_refit(None)


def _rows(timings: Timings) -> list[dict]:
    rows = []
    for kind in KINDS:
        idle = timings.get("idle", kind)
        refit = timings.get("background refit", kind)
        unlimited = timings.get("unlimited fit", kind)
        if not (idle and refit and unlimited):
            rows.append({"hit": kind, "ok": False, "note": "no hits timed"})
            continue
        ratio = _pct(refit, 99) / _pct(idle, 99)
        rows.append({
            "hit": kind,
            "idle p50 / p99 (ms)": f"{_pct(idle, 50):.1f} / {_pct(idle, 99):.1f}",
            "background refit p50 / p99 (ms)": f"{_pct(refit, 50):.1f} / {_pct(refit, 99):.1f}",
            "p99 vs idle": f"{ratio:.2f}x",
            "target": f"<= {TARGET_RATIO:g}x",
            "ok": ratio <= TARGET_RATIO,
            "unlimited fit p50 / p99 (ms)": f"{_pct(unlimited, 50):.1f} / {_pct(unlimited, 99):.1f}",
            "unlimited p99 vs idle": f"{_pct(unlimited, 99) / _pct(idle, 99):.2f}x",
            "hits timed (idle / refit / unlimited)": f"{len(idle)} / {len(refit)} / {len(unlimited)}",
        })
    fits = {c: ", ".join(f"{s:.0f}" for s in v) for c, v in timings.fit_seconds.items()}
    rows.append({"hit": f"fit duration (s): background refits {fits.get('background refit', '-')}; "
                        f"unlimited fits {fits.get('unlimited fit', '-')}"})
    return rows
