"""PostgreSQL fixtures: one throwaway cluster per test session (started on first use), a fresh schema per test,
and `store_db`, which runs a store test once on an SQLite file and once on PostgreSQL."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pgcluster import ThrowawayCluster


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[ThrowawayCluster]:
    cluster = ThrowawayCluster().init()
    yield cluster
    cluster.destroy()


@pytest.fixture
def pg_url(pg_cluster: ThrowawayCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A URL (with its password) of an empty store; spilled traces go under this test's tmp_path."""
    monkeypatch.setenv("TRACER_SPILL_DIR", str(tmp_path / "spill"))
    yield pg_cluster.fresh_url()
    if not (pg_cluster.data / "postmaster.pid").exists():  # a test stopped the server: the next ones need it
        pg_cluster.start()


@pytest.fixture(params=["sqlite", "postgres"])
def store_db(request: pytest.FixtureRequest, tmp_path: Path) -> str | os.PathLike:
    """Where a backend-neutral store test keeps its store: an SQLite file, then a PostgreSQL URL."""
    if request.param == "sqlite":
        return tmp_path / "tracer.db"
    return request.getfixturevalue("pg_url")
