"""calibration_ids stored packed (tracer_core.storage.packed_ids) and the m004 step that packs earlier stores."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from tests import clustered
from tracer_core.errors import StoreError
from tracer_core.learning.policy import Policy
from tracer_core.serving.tracer import Tracer
from tracer_core.storage import migrations
from tracer_core.storage.packed_ids import pack_ids, unpack_ids
from tracer_core.storage.store import TraceStore

RELEASE1 = Path(__file__).parent / "data" / "release1.db"


@pytest.mark.parametrize("ids", [[], [7], [3, 4, 5, 9, 2**40], [5, 3, 1], list(range(1, 185_001, 3))])
def test_pack_round_trips_in_order(ids: list[int]) -> None:
    packed = pack_ids(ids)
    assert unpack_ids(json.loads(json.dumps(packed))) == ids and packed["n"] == len(ids)


def test_185000_ids_take_a_tenth_of_the_json_list() -> None:
    ids = list(range(1_000_000, 1_000_000 + 185_000 * 3, 3))
    assert len(json.dumps(pack_ids(ids))) < len(json.dumps(ids)) / 10


@pytest.mark.parametrize("bad", [{"packed": "other", "n": 0, "data": ""}, {"packed": "delta-int64-zlib-base64"},
                                 {"packed": "delta-int64-zlib-base64", "n": 2, "data": "not base64!"},
                                 {**pack_ids([1, 2, 3]), "n": 4}])
def test_a_damaged_array_is_a_clear_store_error(bad: dict) -> None:
    with pytest.raises(StoreError, match="packed trace ids cannot be read"):
        unpack_ids(bad)


def stored_certificate(path: Path, version: int = 1) -> str:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT certificate FROM policies WHERE version = ?", (version,)).fetchone()[0]


def test_a_release1_store_opens_with_its_calibration_ids_packed_and_intact(tmp_path: Path) -> None:
    db = tmp_path / "release1.db"
    shutil.copy(RELEASE1, db)
    before = json.loads(stored_certificate(db))["calibration_ids"]
    assert isinstance(before, list) and len(before) == 120
    with TraceStore(db) as store:
        assert store.counts("release1")["teacher"] == 406
        (row,) = store.policies("release1")
        assert row["certificate"]["calibration_ids"] == before
        policy = Policy.from_row(store.latest_policy("release1", fingerprint=row["fingerprint"]))
        assert policy.certificate.calibration_ids == before
    stored = json.loads(stored_certificate(db))["calibration_ids"]
    assert stored["packed"] == "delta-int64-zlib-base64" and stored["n"] == 120


def test_a_fitted_policy_reads_back_with_its_ids_range_and_seal(db_path: Path) -> None:
    texts = clustered.texts(2000)
    with Tracer("intent", db_path, alpha=0.9, embedder=clustered.embed, auto_refit=False, audit_rate=0.0) as tracer:
        for text in texts:
            tracer.record(text, clustered.label_of(text))
        cert = tracer.fit()
        assert cert.deployed
        row = tracer.store.latest_policy("intent", fingerprint=tracer.fingerprint)
    assert row["certificate"]["calibration_ids"] == cert.calibration_ids
    ids = row["certificate"]["calibration_ids"]
    assert row["certificate"]["calibration_id_range"] == [min(ids), max(ids)]
    assert Policy.from_row(row).certificate.calibration_ids == ids  # the seal holds
    assert '"packed": "delta-int64-zlib-base64"' in stored_certificate(db_path)


def test_m004_packs_a_previous_release_store_on_either_backend(store_db, monkeypatch) -> None:
    """A store at m003 (the previous release) with a JSON list gets it packed; the ids read back the same."""
    with monkeypatch.context() as m:
        m.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:3])
        with TraceStore(store_db) as store:
            certificate = json.dumps({"deployed": False, "reason": "refused", "calibration_ids": [4, 9, 12]})
            store._write(lambda conn: conn.execute(
                "INSERT INTO policies (task, fingerprint, version, created_at, status, n_traces, certificate, artifact) "
                "VALUES ('t', 'f', 1, 0, 'refused', 3, ?, ?)", (certificate, b"")), serial=True)
            store._write(lambda conn: conn.execute(
                "INSERT INTO policies (task, fingerprint, version, created_at, status, n_traces, certificate, artifact) "
                "VALUES ('t', 'f', 2, 0, 'refused', 3, ?, ?)", ("{not json", b"")), serial=True)
    with TraceStore(store_db) as store:
        rows = {r["version"]: r for r in store.policies("t", fingerprint="f")}
        assert rows[1]["certificate"]["calibration_ids"] == [4, 9, 12]
        assert rows[2]["certificate"]["reason_code"] == "corrupt_certificate"
        stored = store._read("SELECT certificate FROM policies WHERE version = 1")[0][0]
    assert json.loads(stored)["calibration_ids"]["packed"] == "delta-int64-zlib-base64"
