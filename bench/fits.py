"""Fits shared by several benchmarks, computed once, in a pool of worker processes.

A fit is keyed by (data key, alpha, seed); the seed also salts which traces calibrate (each fit
is the first attempt of its own task version). Workers run one BLAS thread each so that two
fits on two cores do not fight; `fit_seconds` of a pooled fit is therefore measured with
another fit running beside it (the speed benchmark times its fit alone, in this process).
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bench.data import load

if TYPE_CHECKING:
    from tracer_core.learning.certificate import Certificate
    from tracer_core.learning.policy import Policy

DELTA = 0.05


@dataclass(frozen=True)
class FitKey:
    data: tuple  # see bench.data.load
    alpha: float
    seed: int = 0


@dataclass
class FitResult:
    key: FitKey
    policy: Policy | None
    cert: Certificate
    seconds: float  # wall time of fit_policy (embeddings cached)
    pooled: bool  # fitted in a worker beside another fit


def fit_now(key: FitKey, pooled: bool = False) -> FitResult:
    from tracer_core.learning.embedder import get_default_embedder
    from tracer_core.learning.fit import fit_policy

    split = load(key.data)
    embed = get_default_embedder()
    embed(split.train_texts)  # warm the in-memory path; all shared data is already on disk
    started = time.perf_counter()
    policy, cert = fit_policy(split.train_texts, split.train_labels, alpha=key.alpha, delta=DELTA,
                              embed=embed, seed=key.seed, salt=f"seed {key.seed}")
    return FitResult(key, policy, cert, time.perf_counter() - started, pooled)


def _worker_init() -> None:
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:  # pragma: no cover
        pass


def _pooled(key: FitKey) -> FitResult:
    return fit_now(key, pooled=True)


class FitCache:
    """Fits by key. `submit()` queues missing fits in `workers` processes without waiting;
    `many()` yields results as they finish; `get()` waits for one (or fits it here)."""

    def __init__(self, workers: int | None = None):
        self.workers = workers or int(os.environ.get("TRACER_BENCH_WORKERS", "2"))
        self.results: dict[FitKey, FitResult] = {}
        self._futures: dict[FitKey, Future] = {}
        self._pool: ProcessPoolExecutor | None = None

    def put(self, result: FitResult) -> None:
        self.results[result.key] = result

    def submit(self, keys: Iterable[FitKey]) -> None:
        if self.workers <= 1:
            return
        for key in keys:
            if key in self.results or key in self._futures:
                continue
            if self._pool is None:
                self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_worker_init)
            self._futures[key] = self._pool.submit(_pooled, key)

    def get(self, key: FitKey) -> FitResult:
        if key not in self.results:
            future = self._futures.pop(key, None)
            self.results[key] = future.result() if future is not None else fit_now(key)
        return self.results[key]

    def many(self, keys: Iterable[FitKey]) -> Iterator[FitResult]:
        keys = list(dict.fromkeys(keys))
        self.submit(keys)
        for key in keys:
            if key in self.results or key not in self._futures:
                yield self.get(key)
        pending = {self._futures[k]: k for k in keys if k in self._futures}
        for future in as_completed(pending):
            yield self.get(pending[future])

    def close(self) -> None:
        for future in self._futures.values():
            future.cancel()
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None
