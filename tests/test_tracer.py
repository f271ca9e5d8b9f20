"""The routing core end to end on real Banking77 traces and a real SQLite file.

Tests whose outcome depends on the model (out-of-distribution and rare-label deferrals, the
frontier) use the real MiniLM model and are marked slow; plumbing tests use the fake embedder.
"""

from __future__ import annotations

import io
import json
import random
import shutil
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from tracer_core import Tracer, TraceStore
from tracer_core.cli.commands import main as cli
from tracer_core.errors import InvalidTraceError, PolicyError, TracerError
from tracer_core.learning.fit import SURROGATE
from tracer_core.learning.policy import Policy
from tracer_core.learning.spending import attempt_delta
from tracer_core.storage._sqlite import lock_path

TASK = "intents"
RARE = ["can I buy bitcoin with my balance", "do you support crypto wallets"]
FAR_AWAY = ["A man is playing a guitar on stage", "The dog is running through the snow"]


@pytest.fixture(scope="session")
def fitted_db(tmp_path_factory, banking_subset, embedder):
    """A store with the 800-row subset plus 2 traces of a rare label, fitted once at alpha 0.9."""
    path = tmp_path_factory.mktemp("fitted") / "tracer.db"
    with Tracer(TASK, path, alpha=0.9, embedder=embedder, auto_refit=False) as tracer:
        tracer.record_many([t for t, _ in banking_subset] + RARE, [lab for _, lab in banking_subset] + ["crypto"] * 2)
        cert = tracer.fit()
    assert cert.deployed, cert.reason
    return path


@pytest.fixture
def fitted_copy(fitted_db, tmp_path):
    path = tmp_path / "copy.db"
    shutil.copy(fitted_db, path)
    return path


@pytest.mark.slow
def test_fit_certifies_and_reports_its_evidence(fitted_db, embedder, banking_subset):
    with Tracer(TASK, fitted_db, alpha=0.9, embedder=embedder, auto_refit=False, audit_rate=0.0) as tracer:
        cert = tracer.certificate
        assert cert.deployed and cert.version == 1
        assert cert.n_traces == 802 and 0.25 * 802 < cert.n_calibration < 0.35 * 802
        assert 0.0 < cert.coverage <= 1.0
        assert cert.agreement >= 0.9 and cert.agreement_lower_bound is None  # alpha is what is certified
        assert (cert.attempt, cert.delta_spent) == (1, attempt_delta(0.05, 1)) == (1, cert.delta_spent_total)
        assert cert.model == SURROGATE and set(cert.candidates) == {SURROGATE}
        assert 0.0 < cert.candidates[SURROGATE]["val_coverage"] <= 1.0
        assert set(cert.per_label) == {lab for _, lab in banking_subset} | {"crypto"}
        assert cert.per_label["crypto"]["status"] == "too_rare"
        assert len(cert.calibration_ids) == cert.n_calibration
        assert [p["alpha"] for p in cert.frontier][0] == 0.8 and len(cert.frontier) == 20
        assert all(p["estimate"] and not p["certified"] for p in cert.frontier)  # from validation, not calibration
        # coverage can only shrink as alpha grows, at every step of the frontier
        covs = [p["coverage"] for p in cert.frontier]
        assert all(lower <= higher for higher, lower in zip(covs, covs[1:])), covs
        assert covs[0] > covs[-1]


@pytest.mark.slow
def test_route_many_matches_route(fitted_db, embedder, banking_subset):
    texts = [t for t, _ in banking_subset[:25]] + FAR_AWAY
    with Tracer(TASK, fitted_db, alpha=0.9, embedder=embedder, auto_refit=False, audit_rate=0.0) as tracer:
        batch = tracer.route_many(texts)
        single = [tracer.route(t) for t in texts]
    same = lambda d: (d.label, d.handled, d.reason, d.policy_version)  # noqa: E731
    assert [same(d) for d in batch] == [same(d) for d in single]
    assert [d.score for d in batch] == pytest.approx([d.score for d in single], abs=1e-5)
    assert any(d.handled for d in batch)
    assert all(d.policy_version == 1 for d in batch)


@pytest.mark.slow
def test_far_inputs_and_rare_labels_are_deferred_with_their_own_reason(fitted_db, embedder):
    with Tracer(TASK, fitted_db, alpha=0.9, embedder=embedder, auto_refit=False, audit_rate=0.0) as tracer:
        assert [d.reason for d in tracer.route_many(FAR_AWAY)] == ["out_of_distribution"] * 2
        assert tracer.route(RARE[0]).reason == "unseen_label"
        assert not tracer.route(RARE[0]).handled


def test_too_few_traces_are_refused_with_a_reason(db_path, fake_embedder, banking_subset):
    with Tracer("small", db_path, alpha=0.95, embedder=fake_embedder) as tracer:
        tracer.record_many([t for t, _ in banking_subset[:30]], [lab for _, lab in banking_subset[:30]])
        cert = tracer.fit()
        assert not cert.deployed and cert.reason_code == "too_few_traces"
        assert cert.reason.startswith("30 traces; at alpha 0.95 at least ~")
        decision = tracer.route(banking_subset[0][0])
    assert (decision.handled, decision.reason, decision.label) == (False, "no_policy", None)


def test_labels_that_do_not_follow_the_text_are_refused(db_path, fake_embedder, banking_subset):
    labels = [lab for _, lab in banking_subset]
    random.Random(0).shuffle(labels)
    with Tracer("shuffled", db_path, alpha=0.9, embedder=fake_embedder, auto_refit=False) as tracer:
        tracer.record_many([t for t, _ in banking_subset], labels)
        cert = tracer.fit()
        assert not cert.deployed and cert.attempt == 0  # validation alone shows it: no delta spent
        assert cert.reason_code == "not_attempted"
        assert "does not separate" in cert.reason and "no delta was spent" in cert.reason
        assert tracer.route(banking_subset[0][0]).reason == "no_policy"


def test_free_text_outputs_are_never_routed(db_path, fake_embedder, banking_subset):
    texts = [t for t, _ in banking_subset[:60]]
    with Tracer("summaries", db_path, embedder=fake_embedder, auto_refit=False) as tracer:
        tracer.record_many(texts, [f"A summary of: {t}" for t in texts])
        cert = tracer.fit()
        assert cert.reason_code == "free_text_task"
        assert tracer.route(texts[0]).reason == "free_text_task"


@pytest.mark.slow
def test_policy_round_trip_never_unpickles(fitted_db, embedder, banking_subset):
    texts = [t for t, _ in banking_subset[:40]]
    with TraceStore(fitted_db) as store:
        row = store.latest_policy(TASK)
    policy = Policy.from_row(row)
    with np.load(io.BytesIO(row["artifact"]), allow_pickle=False) as npz:
        assert all(npz[k].dtype != object for k in npz.files)
    with Tracer(TASK, fitted_db, alpha=0.9, embedder=embedder, auto_refit=False, audit_rate=0.0) as tracer:
        reloaded, live = policy.decide(texts, embedder(texts)), tracer.route_many(texts)
        assert [(d.label, d.reason) for d in reloaded] == [(d.label, d.reason) for d in live]
        assert [d.score for d in reloaded] == pytest.approx([d.score for d in live], abs=1e-5)
    # an archive holding a pickled object is refused, not executed
    buf = io.BytesIO()
    np.savez(buf, meta=np.array([{"evil": True}], dtype=object))
    with pytest.raises(PolicyError, match="not a readable tracer policy"):
        Policy.from_bytes(buf.getvalue(), policy.certificate)


@pytest.mark.slow
def test_another_process_fit_is_picked_up_without_restart(fitted_db, tmp_path, embedder):
    """A process routing with no policy starts using the one a CLI fit in another process wrote."""
    path = tmp_path / "shared.db"
    with TraceStore(fitted_db) as src, TraceStore(path) as dst:
        dst.append_many(src.iter_traces(TASK, source="teacher"))
    tracer = Tracer(TASK, path, alpha=0.9, embedder=embedder, auto_refit=False, policy_check_s=0.0, audit_rate=0.0)
    assert tracer.route(FAR_AWAY[0]).reason == "no_policy"
    done = subprocess.run(
        [sys.executable, "-c", "from tracer_core.cli.commands import main; main()", "fit", "--task", TASK, "--alpha", "0.9", "--db", str(path)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert "deployed" in done.stdout
    decision = tracer.route(FAR_AWAY[0])
    assert decision.policy_version == 1 and decision.reason == "out_of_distribution"
    assert tracer.policy_version == 1
    tracer.close()


def test_background_refit_deploys_and_ignores_surrogate_traces(db_path, fake_embedder, banking_subset):
    tracer = Tracer("live", db_path, alpha=0.85, embedder=fake_embedder, refit_every=800, audit_rate=0.0)
    for text, label in banking_subset[:799]:
        tracer.record(text, label)
    tracer.wait_for_refit(timeout=600)  # returns at once: 799 < refit_every started no refit
    assert tracer.store.policies("live") == [] and tracer.policy_version is None
    tracer.record(*banking_subset[799])
    tracer.wait_for_refit(timeout=600)
    tracer.policy_check_s = 0.0
    assert tracer.policy_version == 1
    (row,) = tracer.store.policies("live")
    assert row["status"] == "deployed" and row["n_traces"] == 800
    # the background policy routes exactly as the stored one does
    texts = [text for text, _ in banking_subset[:40]]
    stored = Policy.from_row(tracer.store.latest_policy("live")).decide(texts, fake_embedder(texts))
    routed = tracer.route_many(texts)
    assert [(d.label, d.handled, d.reason, d.policy_version) for d in routed] == [
        (d.label, d.handled, d.reason, 1) for d in stored
    ]
    assert any(d.handled for d in routed)
    # surrogate answers never become training data
    for text, _ in banking_subset[:50]:
        tracer.record(text, "wrong_label", source="surrogate")
    tracer.flush()
    evidence = tracer.store.teacher_evidence("live", "")
    assert len(evidence.texts) == 800 and "wrong_label" not in evidence.labels
    assert tracer.store.counts("live") == {"teacher": 800, "surrogate": 50, "audit": 0, "cached": 0, "unparsed": 0}
    tracer.close()


@pytest.mark.slow
def test_a_refused_refit_keeps_the_deployed_policy(fitted_copy, embedder, banking_subset):
    labels = [lab for _, lab in banking_subset]
    random.Random(1).shuffle(labels)
    with Tracer(TASK, fitted_copy, alpha=0.9, embedder=embedder, auto_refit=False, policy_check_s=0.0) as tracer:
        # the teacher changed its mind on every input: three times as many contradicting traces
        for _ in range(3):
            tracer.record_many([t for t, _ in banking_subset], labels)
        cert = tracer.fit()
        assert not cert.deployed and cert.version == 2
        assert tracer.policy_version == 1
        status = tracer.status()
        assert status["policy_version"] == 1 and status["versions"] == 2
        assert status["last_fit"] == cert.reason


@pytest.mark.slow
def test_internal_failure_defers_instead_of_raising(fitted_db):
    def broken(texts):
        raise RuntimeError("model server down")

    with Tracer(TASK, fitted_db, alpha=0.9, embedder=broken, auto_refit=False) as tracer:
        decision = tracer.route("I lost my card")
    assert (decision.handled, decision.reason) == (False, "error")


@pytest.mark.slow
def test_bad_input_gets_clear_errors(db_path, fitted_db, embedder):
    with pytest.raises(TracerError, match=r"alpha must be a number in \(0, 1\), got 1.5"):
        Tracer(TASK, db_path, alpha=1.5)
    with pytest.raises(TracerError, match="task must be a non-empty string"):
        Tracer("", db_path)
    with Tracer(TASK, fitted_db, alpha=0.9, embedder=embedder, auto_refit=False, audit_rate=0.0) as tracer:
        with pytest.raises(InvalidTraceError, match="not valid UTF-8"):
            tracer.route(b"\xff\xfe")
        with pytest.raises(InvalidTraceError, match="empty"):
            tracer.route("   ")
        with pytest.raises(InvalidTraceError, match="label"):
            tracer.record("I lost my card", 5)
        with pytest.raises(InvalidTraceError, match="2 texts, 1 labels"):
            tracer.record_many(["a", "b"], ["x"])
        assert tracer.store.counts(TASK)["teacher"] == 802


@pytest.mark.slow
def test_cli_route_and_fit_errors(fitted_db, tmp_path):
    runner = CliRunner()
    out = runner.invoke(cli, ["route", "--task", TASK, "--db", str(fitted_db), FAR_AWAY[0]])
    assert out.exit_code == 0, out.output
    decision = json.loads(out.output.strip().splitlines()[-1])
    assert decision["reason"] == "out_of_distribution" and decision["policy_version"] == 1
    bad = runner.invoke(cli, ["fit", "--task", TASK, "--alpha", "2", "--db", str(fitted_db)])
    assert bad.exit_code == 1 and "alpha must be a number" in bad.output
    missing = runner.invoke(cli, ["fit", "--task", TASK, "--db", str(tmp_path / "x.db")])
    assert missing.exit_code == 1 and "does not exist" in missing.output and not (tmp_path / "x.db").exists()
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"not a database at all" * 100)
    bad = runner.invoke(cli, ["fit", "--task", TASK, "--db", str(corrupt)])
    assert bad.exit_code == 1 and "Traceback" not in bad.output and "SQLite" in bad.output


@pytest.mark.slow
def test_only_one_process_refits_at_a_time(fitted_copy, embedder):
    """While another process holds the task's refit lock, a refit is skipped, not run twice."""
    import fcntl

    with Tracer(TASK, fitted_copy, alpha=0.9, embedder=embedder, refit_every=1) as tracer:
        path = lock_path(tracer.store.path, TASK, tracer.fingerprint)
        with open(path, "a+") as held:
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
            tracer.record("I still have not received my new card", "card_arrival")  # due: a background refit starts
            tracer.wait_for_refit(timeout=600)
            assert len(tracer.store.policies(TASK)) == 1  # skipped: the lock was held
        tracer.record("Where is my new card?", "card_arrival")
        tracer.wait_for_refit(timeout=600)
        assert len(tracer.store.policies(TASK)) == 2  # the lock is free again: the refit ran
        assert path.name.startswith("copy.db.refit-")
