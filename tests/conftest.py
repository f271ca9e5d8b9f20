"""Shared fixtures: a temporary store path, the real MiniLM embedder and a deterministic fake one,
Banking77 rows and a local teacher.

Only model-quality tests take `embedder` (the real MiniLM model); they are marked `slow`, and
collection fails if one is not. Plumbing tests take `fake_embedder`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One BLAS thread, here and in subprocesses: the tests' matrices are small, and on a busy machine
# OpenBLAS threads waiting for each other make a fit tens of times slower (0.9 s vs 44 s measured).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
threadpool_limits(limits=1, user_api="blas")

pytest_plugins = ["tests.postgres"]  # pg_cluster, pg_url, store_db

DATA = Path(__file__).parent / "data"
WORD = re.compile(r"[a-z0-9']+")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test that loads MiniLM through the `embedder` fixture must be marked slow."""
    unmarked = [item.nodeid for item in items if "embedder" in getattr(item, "fixturenames", ()) and
                item.get_closest_marker("slow") is None]
    if unmarked:
        raise pytest.UsageError("tests using the real MiniLM `embedder` must be marked slow: " + ", ".join(unmarked))


class HashEmbedder:
    """A deterministic stand-in for MiniLM: signed hashed bag of words, word prefixes and word pairs,
    L2-normalised.

    Texts sharing words get similar vectors, so Banking77 intents separate well enough for a fit
    to certify; `texts` lists every text embedded, in order (to check what was embedded and when).
    """

    def __init__(self, dimension: int = 512):
        self.dimension = dimension
        self.texts: list[str] = []

    def __call__(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            self.texts.append(text)
            words = WORD.findall(text.lower())
            features = words + [w[:4] for w in words if len(w) > 4] + [f"{a} {b}" for a, b in zip(words, words[1:])]
            for feature in features:
                h = int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8).digest(), "little")
                out[row, h % self.dimension] += 1.0 if (h >> 32) & 1 else -1.0
            norm = np.linalg.norm(out[row])
            if norm > 0:
                out[row] /= norm
            else:  # no word at all: one fixed unit vector
                out[row, 0] = 1.0
        return out


@pytest.fixture(autouse=True)
def _store_answers_in_time(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A call waits at most 25 ms for the store and defers meanwhile (issue 22): on this busy 2-core
    machine a store that is still opening, or a policy still loading, can take longer. Tests of
    something else give it half a second, as if the process were warm; tests marked `caller_budget`
    keep the real budget."""
    if request.node.get_closest_marker("caller_budget") is None:
        from tracer_core import background

        monkeypatch.setattr(background, "CALLER_BUDGET_S", 0.5)


@pytest.fixture(scope="session", autouse=True)
def _embedding_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep the embedding cache of the test session out of the user's home."""
    os.environ["TRACER_CACHE_DIR"] = str(tmp_path_factory.mktemp("embedding-cache"))


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "tracer.db"


@pytest.fixture(scope="session")
def embedder(_embedding_cache: None):
    """The real default embedder (MiniLM): for tests whose outcome depends on the model."""
    from tracer_core.learning.embedder import get_default_embedder

    return get_default_embedder()


@pytest.fixture(scope="session")
def fake_embedder() -> HashEmbedder:
    """A deterministic, model-free embedder for plumbing tests (session-wide, like the real one)."""
    return HashEmbedder()


@pytest.fixture(scope="session")
def banking_subset() -> list[tuple[str, str]]:
    """800 real Banking77 training rows: 20 intents x 40 queries (CC BY 4.0)."""
    rows = [json.loads(line) for line in (DATA / "banking77_subset.jsonl").open(encoding="utf-8")]
    return [(r["input"], r["label"]) for r in rows]


@pytest.fixture
def teacher(banking_subset):
    from tracer_demo.local_teacher import LocalTeacher

    with LocalTeacher(dict(banking_subset)) as server:
        yield server
