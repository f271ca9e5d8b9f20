"""Issue 22, cases 6 and 7: a policy answers only with the embedder it was fitted with, and only with a
certificate that vouches for its artifact (SHA-256 of the artifact and of its labels, deployed: true)."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tests import clustered
from tests.conftest import HashEmbedder
from tests.faultkit import (
    HANDLE_EVERYTHING,
    edit_certificate,
    handle_everything,
    rotated_labels,
    subprocess_env,
    tamper,
)
from tracer_core import Reason, Tracer, TraceStore
from tracer_core.cli.commands import main as cli
from tracer_core.errors import PolicyError
from tracer_core.learning.embedder_identity import PROBES
from tracer_core.learning.policy import Policy
from tracer_core.learning.policy_seal import labels_digest

TASK = "bound"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def fitted_db(tmp_path_factory, banking_subset, fake_embedder) -> Path:
    """A store whose policy was fitted with the 512-d `fake_embedder` (an embedding function, not MiniLM)."""
    path = tmp_path_factory.mktemp("bound") / "tracer.db"
    with Tracer(TASK, path, alpha=0.9, embedder=fake_embedder, auto_refit=False) as tracer:
        tracer.record_many([t for t, _ in banking_subset], [label for _, label in banking_subset])
        cert = tracer.fit()
    assert cert.deployed, cert.reason
    return path


@pytest.fixture
def fitted(fitted_db: Path, tmp_path: Path) -> Path:
    path = tmp_path / "copy.db"
    shutil.copy(fitted_db, path)
    return path


@pytest.fixture
def texts(banking_subset) -> list[str]:
    return [t for t, _ in banking_subset[:400]]


def routed(db: Path, embed, texts: list[str], times: int = 3) -> tuple[list, dict]:
    """Decisions of the last of `times` route_many calls of a fresh Tracer, and its status."""
    with Tracer(TASK, db, alpha=0.9, embedder=embed, auto_refit=False, audit_rate=0.0) as tracer:
        for _ in range(times):
            decisions = tracer.route_many(texts)
        return decisions, tracer.status()


def flipped(texts: list[str]) -> np.ndarray:
    """A 512-d embedder that is not the fitted one: the same dimension, other embeddings."""
    return -HashEmbedder()(texts)


# -- case 6: the embedder is part of the policy ---------------------------------------------

@pytest.mark.parametrize("other", [HashEmbedder(384), flipped], ids=["another dimension", "same dimension"])
def test_case6_a_policy_fitted_with_another_embedder_never_answers(fitted, fake_embedder, texts, other, caplog) -> None:
    """Case 6 (fails at 19ccbfc: a 384-d embedder makes every call 'error' after a logged traceback,
    a 512-d one that is not the fitted one is answered from)."""
    assert sum(d.handled for d in routed(fitted, fake_embedder, texts)[0]) > 100  # with its own embedder it answers
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="tracer"):
        decisions, status = routed(fitted, other, texts)
    assert not any(d.handled for d in decisions) and {d.reason for d in decisions} == {Reason.EMBEDDER_MISMATCH}
    needs = status["embedder_mismatch"]
    assert "conftest.HashEmbedder(...) (512-d" in needs and "pass Tracer(..., embedder=" in needs
    assert [r.levelname for r in caplog.records] == ["ERROR"] and "does not answer" in caplog.records[0].message


def test_case6_the_caller_embedder_is_identified_once_per_loaded_policy(fitted, fake_embedder, texts) -> None:
    """Case 6: the probes cost one embedding batch per Tracer, not one per call."""
    probe_batches = []

    def counting(batch: list[str]) -> np.ndarray:
        if batch == list(PROBES):
            probe_batches.append(1)
        return fake_embedder(batch)

    decisions, _ = routed(fitted, counting, texts[:20], times=10)
    assert any(d.handled for d in decisions) and len(probe_batches) == 1


def test_case6_the_certificate_records_the_embedder(fitted) -> None:
    with TraceStore(fitted) as store:
        recorded = store.latest_policy(TASK)["certificate"]["embedder"]
    assert recorded["kind"] == "callable" and recorded["name"].endswith("conftest.HashEmbedder(...)")
    assert recorded["dimension"] == 512 and len(recorded["checksum"]) == 16


@pytest.mark.slow
def test_case6_route_report_status_and_suspects_say_which_embedder_the_policy_needs(fitted, tmp_path) -> None:
    """Case 6 (fails at 19ccbfc: `tracer report` died with 'matmul: dimension mismatch', `tracer route`
    answered reason 'error'). The CLI embeds with MiniLM; the policy needs the 512-d fake embedder."""
    runner = CliRunner()
    common = ["--task", TASK, "--db", str(fitted)]
    out = runner.invoke(cli, ["route", *common, "I lost my card"])
    assert out.exit_code == 0 and json.loads(out.stdout)["reason"] == "embedder_mismatch", out.output
    assert out.stderr.count("was fitted with the embedding function") == 1  # a note on stderr, once, no traceback
    assert "Traceback" not in out.output
    out = runner.invoke(cli, ["report", *common, "--no-refit", "--out", str(tmp_path / "r.html")])
    assert out.exit_code == 0, (out.output, out.exception)
    assert ("not re-measured on calibration traces: policy v1 was fitted with the embedding function "
            "conftest.HashEmbedder(...) (512-d") in out.output and "all-MiniLM-L6-v2 (384-d" in out.output
    html = (tmp_path / "r.html").read_text()
    assert "conftest.HashEmbedder(...) (512-d" in html and "pass Tracer(..., embedder=" in html
    out = runner.invoke(cli, ["status", *common])
    assert out.exit_code == 0 and "embedder it needs" in out.output and "HashEmbedder(...) (512-d" in out.output
    assert "conftest.HashEmbedder(...)) from Python" in " ".join(out.output.split())
    out = runner.invoke(cli, ["suspects", *common, "--limit", "1"])
    assert out.exit_code == 0 and "which the deployed policy does not take" in out.stderr, out.output


@pytest.mark.slow
def test_case6_minilm_identity_is_the_same_with_one_and_two_blas_threads(tmp_path) -> None:
    """The checksum of the real MiniLM's probe embeddings, each computed afresh in its own process."""
    script = ("import json; from tracer_core.learning.embedder import Embedder; from tracer_core.learning.embedder_identity import identify;"
              "import sys; print(json.dumps(identify(Embedder(cache_dir=sys.argv[1]))))")
    found = []
    for threads in ("1", "2"):
        env = subprocess_env(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads)
        done = subprocess.run([sys.executable, "-c", script, str(tmp_path / f"cache-{threads}")], env=env,
                              capture_output=True, text=True, timeout=300, check=True)
        found.append(json.loads(done.stdout))
    assert found[0] == found[1] and found[0]["name"] == "all-MiniLM-L6-v2" and found[0]["dimension"] == 384


# -- case 7: a policy answers only with a certificate that vouches for it --------------------

def _handle_everything_consistently(db: Path) -> None:
    tamper(db, handle_everything)
    edit_certificate(db, **HANDLE_EVERYTHING)


@pytest.mark.parametrize("edit, why", [
    (lambda db: tamper(db, rotated_labels), "does not match the SHA-256"),
    (_handle_everything_consistently, "does not match the SHA-256"),
    (lambda db: edit_certificate(db, deployed=False, alpha=0.5), "says it was not deployed"),
], ids=["labels rotated by one", "threshold 0 and no OOD limit in artifact and certificate", "certificate deployed: false, alpha 0.5"])
def test_case7_an_edited_policy_never_answers(fitted, fake_embedder, texts, edit, why, caplog) -> None:
    """Case 7 (fails at 19ccbfc: 384, 400 and 384 of 400 inputs were answered from the edited policies)."""
    edit(fitted)
    with caplog.at_level(logging.ERROR, logger="tracer"):
        decisions, status = routed(fitted, fake_embedder, texts)
    assert not any(d.handled for d in decisions) and {d.reason for d in decisions} == {Reason.INVALID_POLICY}
    assert why in status["policy_error"]
    assert len([r for r in caplog.records if "is not used" in r.message]) == 1  # logged once
    out = CliRunner().invoke(cli, ["status", "--task", TASK, "--db", str(fitted)])
    assert out.exit_code == 0 and "not used" in out.output and why in " ".join(out.output.split())


def test_case7_the_certificate_holds_the_sha256_of_its_artifact_and_labels(fitted) -> None:
    with TraceStore(fitted) as store:
        row = store.latest_policy(TASK)
    cert = row["certificate"]
    assert cert["artifact_sha256"] == hashlib.sha256(row["artifact"]).hexdigest()
    assert cert["labels_sha256"] == labels_digest(Policy.from_row(row).labels)


@pytest.mark.parametrize("changes, why", [
    ({"artifact_sha256": ""}, "holds no SHA-256"),  # a current artifact: its certificate must hold the hash
    ({"labels_sha256": "0" * 64}, "labels do not match"),
    ({"threshold": 0.0}, "disagree"),
])
def test_case7_a_certificate_edited_alone_is_refused(fitted, changes: dict, why: str) -> None:
    edit_certificate(fitted, **changes)
    with TraceStore(fitted) as store, pytest.raises(PolicyError, match=why):
        Policy.from_row(store.latest_policy(TASK))


def test_case7_a_release1_policy_keeps_answering_unverified_and_checks_its_dimension(tmp_path, caplog) -> None:
    """An earlier release's policy holds no hash and no embedder: it answers with an embedder of its dimension,
    shown as unverified (fails at 19ccbfc: status says nothing; a 512-d embedder makes every call 'error')."""
    db = tmp_path / "release1.db"
    shutil.copy(ROOT / "tests" / "data" / "release1.db", db)
    options = dict(alpha=0.9, fingerprint="0123456789abcdef", audit_rate=0.0, auto_refit=False)
    with Tracer("release1", db, embedder=clustered.embed, **options) as tracer:
        assert tracer.route("lab2 after the upgrade").handled
    with Tracer("release1", db, embedder=HashEmbedder(), **options) as tracer:
        decision = tracer.route("lab2 after the upgrade")
        assert decision.reason == Reason.EMBEDDER_MISMATCH and "earlier release" in tracer.status()["embedder_mismatch"]
    out = CliRunner().invoke(cli, ["status", "--task", "release1", "--db", str(db)])
    text = " ".join(out.output.split())
    assert out.exit_code == 0 and "unverified (an earlier release's policy; refit to bind it)" in text
    assert "not recorded (an earlier release's policy): any 32-d embedder" in text
