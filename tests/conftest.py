"""Shared fixtures: a temporary store path, the real MiniLM embedder, Banking77 rows and a local teacher."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session", autouse=True)
def _embedding_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep the embedding cache of the test session out of the user's home."""
    os.environ["TRACER_CACHE_DIR"] = str(tmp_path_factory.mktemp("embedding-cache"))


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "tracer.db"


@pytest.fixture(scope="session")
def embedder(_embedding_cache: None):
    from tracer_core.embedder import get_default_embedder

    return get_default_embedder()


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
