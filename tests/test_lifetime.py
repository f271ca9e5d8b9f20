"""The lifetime guarantee of certification (issue 21): delta spent across attempts, a calibration split kept for
the task version's life, attempts only when worth it (reading no calibration label otherwise), what the
certificate records, and no calibration label shaping the model."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tests import clustered
from tests.faultkit import subprocess_env
from tracer_core import Tracer, TraceStore
from tracer_core.cli.commands import main as cli
from tracer_core.learning import attempt as attempt_module
from tracer_core.learning import split as split_module
from tracer_core.learning.attempt import (
    MIN_CERTIFY_PROBABILITY,
    MIN_GAIN,
    WINDOW_GROWTH,
    CalibrationEvidence,
    Outcome,
    Validation,
    attempt_certification,
    fresh_needed,
    window_grown,
)
from tracer_core.learning.certificate import NOT_ATTEMPTED, NOT_BETTER, Certificate
from tracer_core.learning.fit import _filters, _final_policy, _prepare, fit_policy
from tracer_core.learning.spending import Attempt, MemoryLedger, attempt_delta
from tracer_core.learning.split import Split, calibration_side

ROOT = Path(__file__).resolve().parent.parent
TASK = "life"


def spent_through(delta: float, attempts: int) -> float:
    return math.fsum(attempt_delta(delta, j) for j in range(1, attempts + 1))


def clean(n: int, tag: str = "item") -> tuple[list[str], list[str]]:
    texts = clustered.texts(n, tag)
    return texts, [clustered.label_of(t) for t in texts]


# --- the spending schedule ------------------------------------------------------------------

def test_the_spending_schedule_never_spends_more_than_delta():
    assert attempt_delta(0.05, 1) == pytest.approx(0.05 * 6 / math.pi**2)
    assert attempt_delta(0.05, 2) == pytest.approx(attempt_delta(0.05, 1) / 4)
    assert 0.0499 < spent_through(0.05, 100_000) <= 0.05
    ledger = MemoryLedger()
    taken = [ledger.reserve(0.95, 0.05, 100, 400) for _ in range(30)]
    assert [t.attempt for t in taken] == list(range(1, 31)) and ledger.next_attempt() == 31
    assert [t.delta_spent_total for t in taken] == pytest.approx([spent_through(0.05, j) for j in range(1, 31)])
    with pytest.raises(ValueError, match="numbered from 1"):
        attempt_delta(0.05, 0)


# --- the persistent split -------------------------------------------------------------------

def test_a_trace_never_changes_side_as_the_store_grows():
    sides = []
    for n in (500, 1000, 2000, 4000):
        ids = np.arange(1, n + 1)
        split = Split.persistent(ids, np.ones(n, dtype=bool), salt="task\0fp", seed=n)
        sides.append(set(ids[split.cal].tolist()))
        assert sides[-1] == set(ids[calibration_side(ids, "task\0fp")].tolist())  # the hash alone decides
    assert all(small <= big for small, big in zip(sides, sides[1:]))
    assert all(abs(len(s) / n - 0.3) < 0.03 for s, n in zip(sides, (500, 1000, 2000, 4000)))
    other = Split.persistent(np.arange(1, 4001), np.ones(4000, dtype=bool), salt="task\0other", seed=0)
    assert len(sides[-1] & set((other.cal + 1).tolist())) < 0.45 * len(sides[-1])  # another version: another split


def test_audits_calibrate_at_their_own_fraction_and_keep_their_side_as_the_store_grows(monkeypatch):
    monkeypatch.setattr(split_module, "AUDIT_CAL_FRACTION", 0.7)
    sides = []
    for n in (1000, 2000, 4000):
        ids = np.arange(1, n + 1)
        audit = ids > 500  # the first 500 came before any policy, the rest are audits
        split = Split.persistent(ids, np.ones(n, dtype=bool), salt="task\0fp", seed=n, audit=audit)
        sides.append(set(ids[split.cal].tolist()))
        assert sides[-1] == set(ids[calibration_side(ids, "task\0fp", audit)].tolist())  # hash and route decide
        assert not sides[-1] & (set(ids[split.train].tolist()) | set(ids[split.val].tolist()))
    assert all(small <= big for small, big in zip(sides, sides[1:]))
    before, audits = [i for i in sides[-1] if i <= 500], [i for i in sides[-1] if i > 500]
    assert abs(len(before) / 500 - 0.3) < 0.06 and abs(len(audits) / 3500 - 0.7) < 0.03
    assert set(before) == set(range(1, 501)) & set(np.nonzero(calibration_side(np.arange(1, 501), "task\0fp"))[0] + 1)


def test_no_calibration_trace_ever_trains_and_traces_leaving_the_window_train_afterwards(monkeypatch):
    monkeypatch.setattr(split_module, "CAL_WINDOW", 100)
    trained: set[int] = set()
    calibrated: set[int] = set()
    left: set[int] = set()
    window: set[int] = set()
    for n in range(200, 3001, 200):  # a refit every 200 traces; every fourth trace may not calibrate
        ids = np.arange(1, n + 1)
        split = Split.persistent(ids, ids % 4 != 0, salt="s", seed=n)
        now_cal = set(ids[split.cal].tolist())
        now_train = set(ids[split.train].tolist()) | set(ids[split.val].tolist())
        assert len(now_cal) == min(100, len(now_cal)) and not now_cal & now_train
        assert not now_cal & trained  # a trace that calibrates now never trained before
        assert not now_cal & left  # nor left the window earlier: the window only moves forward
        left |= window - now_cal
        assert left <= now_train  # traces that left the window train from then on
        trained |= now_train
        calibrated |= now_cal
        window = now_cal
    assert len(left) > 500 and len(calibrated) > 600


# --- counting attempts ----------------------------------------------------------------------

def test_concurrent_reservations_get_distinct_attempts(store_db):
    with TraceStore(store_db) as store:
        got: list[tuple[int, float, float]] = []
        lock = threading.Lock()

        def reserve() -> None:
            for _ in range(5):
                taken = store.reserve_attempt("t", "fp", alpha=0.95, delta=0.05, spend=lambda j: attempt_delta(0.05, j),
                                              n_calibration=600, last_trace_id=2000)
                with lock:
                    got.append(taken)

        threads = [threading.Thread(target=reserve) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(a for a, _, _ in got) == list(range(1, 41))
        assert all(spent == attempt_delta(0.05, a) and total == pytest.approx(spent_through(0.05, a)) for a, spent, total in got)
        assert store.next_attempt("t", "fp") == 41 and store.next_attempt("t", "other") == 1


@pytest.mark.slow  # subprocess Pythons
def test_two_processes_reserving_at_once_get_distinct_attempts(tmp_path):
    db = tmp_path / "race.db"
    TraceStore(db).close()
    go = tmp_path / "go"
    script = (
        "import json, pathlib, sys, time\n"
        "from tracer_core import TraceStore\n"
        "from tracer_core.learning.spending import StoreLedger\n"
        "store = TraceStore(sys.argv[1])\n"
        "while not pathlib.Path(sys.argv[2]).exists():\n"
        "    time.sleep(0.001)\n"
        "ledger = StoreLedger(store, 't', 'fp')\n"
        "print(json.dumps([ledger.reserve(0.95, 0.05, 3, 10).attempt for _ in range(25)]))\n"
        "store.close()\n"
    )
    children = [subprocess.Popen([sys.executable, "-c", script, str(db), str(go)], stdout=subprocess.PIPE, text=True,
                                 env=subprocess_env(), cwd=ROOT) for _ in range(2)]
    time.sleep(1.0)  # both waiting at the start line
    go.touch()
    outputs = [json.loads(child.communicate(timeout=120)[0]) for child in children]
    assert sorted(outputs[0] + outputs[1]) == list(range(1, 51))
    assert len(set(outputs[0]) & set(outputs[1])) == 0


def test_attempts_are_counted_across_restarts_explicit_fits_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setattr("tracer_core.serving.embedding.get_default_embedder", lambda: clustered.embed)  # the CLI's embedder
    db = tmp_path / "life.db"
    tracer = Tracer(TASK, db, alpha=0.9, embedder=clustered.embed, auto_refit=False, audit_rate=0.0)
    tracer.record_many(*clean(1200))
    first = tracer.fit()
    assert first.deployed and (first.attempt, first.delta_spent_total) == (1, attempt_delta(0.05, 1))
    again = tracer.fit()  # nothing new: validation predicts no gain over v1
    assert (again.deployed, again.attempt, again.delta_spent, again.reason_code) == (False, 0, 0.0, NOT_ATTEMPTED)
    assert tracer.policy_version == 1
    tracer.suspend("new prompt")
    tracer.record_many(*clean(900, "fresh"))
    resumed = tracer.resume()  # a fit on traces after the suspension: nothing answers, so it attempts
    assert resumed.attempt == 2 and resumed.delta_spent == attempt_delta(0.05, 2)
    tracer.close()
    with Tracer(TASK, db, alpha=0.9, embedder=clustered.embed, auto_refit=False, audit_rate=0.0) as restarted:
        restarted.suspend("again")
        restarted.record_many(*clean(900, "later"))
    out = CliRunner().invoke(cli, ["fit", "--task", TASK, "--db", str(db), "--alpha", "0.9", "--json"])
    assert out.exit_code == 0, out.output
    with TraceStore(db) as store:
        cert = store.latest_policy(TASK)["certificate"]
        rows = store._read("SELECT attempt, delta_spent FROM certification_attempts ORDER BY attempt")
    assert cert["attempt"] == 3 and cert["delta_spent_total"] == pytest.approx(spent_through(0.05, 3))
    assert rows == [(j, attempt_delta(0.05, j)) for j in (1, 2, 3)]


def test_policies_of_an_earlier_release_count_as_attempts(store_db):
    legacy = {"deployed": True, "alpha": 0.9, "delta": 0.05, "n_calibration": 120, "trace_max_id": 400, "reason": "",
              "reason_code": "deployed"}
    before_gate = {"deployed": False, "alpha": 0.9, "delta": 0.05, "n_calibration": 0, "reason": "",
                   "reason_code": "too_few_traces"}
    skipped = {**legacy, "deployed": False, "attempt": 0, "reason_code": NOT_ATTEMPTED}
    with TraceStore(store_db) as store:
        for cert in (before_gate, legacy, {**legacy, "delta": 0.01}, skipped):
            store.save_policy("t", fingerprint="fp", certificate=cert, artifact=b"", status="refused", n_traces=400)
        assert store.next_attempt("t", "fp") == 3
        assert store.latest_attempt("t", "fp") == {"attempt": 2, "n_calibration": 120, "last_trace_id": 400,
                                                   "certified": True}
        attempt, spent, total = store.reserve_attempt("t", "fp", alpha=0.95, delta=0.05,
                                                      spend=lambda j: attempt_delta(0.05, j), n_calibration=300,
                                                      last_trace_id=900)
        assert (attempt, spent) == (3, attempt_delta(0.05, 3)) and total == pytest.approx(0.06 + spent)
        assert store.next_attempt("t", "fp") == 4
        assert store.latest_attempt("t", "fp") == {"attempt": 3, "n_calibration": 300, "last_trace_id": 900,
                                                   "certified": None}  # not settled: the schedule counts it refused
        store.settle_attempt("t", "fp", 3, certified=False)
        assert store.latest_attempt("t", "fp")["certified"] is False


def test_a_release1_store_opens_and_its_policy_counts_as_an_attempt(tmp_path):
    db = tmp_path / "release1.db"
    shutil.copy(ROOT / "tests" / "data" / "release1.db", db)
    fingerprint = "0123456789abcdef"
    with TraceStore(db) as store:
        assert store.counts("release1")["teacher"] == 406 and [p["version"] for p in store.policies("release1")] == [1]
        assert store.next_attempt("release1", fingerprint) == 2
    with Tracer("release1", db, alpha=0.92, embedder=clustered.embed, fingerprint=fingerprint, audit_rate=0.0,
                auto_refit=False) as tracer:
        tracer.record_many(*clean(800, "upgraded"))
        cert = tracer.fit()  # v1 was certified at 0.9: it does not answer at 0.92, so this fit attempts
    assert cert.deployed and cert.attempt == 2
    assert cert.delta_spent_total == pytest.approx(0.05 + attempt_delta(0.05, 2))  # v1 spent its full delta


# --- skipped attempts -----------------------------------------------------------------------

def test_after_a_refused_attempt_the_next_waits_for_fresh_evidence():
    assert fresh_needed(np.arange(1, 601), None) == 0
    refused = Attempt(1, n_calibration=180, last_trace_id=600, certified=False)
    assert fresh_needed(np.arange(1, 601), refused) == 300  # half as many new traces as it saw
    assert fresh_needed(np.arange(1, 801), refused) == 100
    assert fresh_needed(np.arange(1, 901), refused) == 0
    assert fresh_needed(np.arange(5001, 5101), refused) == 0  # after a suspension: every trace is fresh
    assert fresh_needed(np.arange(1, 601), replace(refused, certified=None)) == 300  # outcome never recorded
    assert fresh_needed(np.arange(1, 601), replace(refused, certified=True)) == 0
    rng = np.random.default_rng(0)
    ledger = MemoryLedger()
    validation = Validation(rng.random(2000), rng.random(2000) < 0.99)

    def failing() -> CalibrationEvidence:
        return CalibrationEvidence(rng.random(600), np.zeros(600, bool), np.ones(600, bool))

    first = attempt_certification(validation, 600, np.arange(1, 2001), alpha=0.95, delta=0.05, baseline=0.0,
                                  ledger=ledger, calibration=failing)
    assert first.attempt == 1 and not first.certified and ledger.latest().certified is False
    again = attempt_certification(validation, 600, np.arange(1, 2201), alpha=0.95, delta=0.05, baseline=0.0,
                                  ledger=ledger, calibration=failing)
    assert (again.attempt, again.fresh_needed, len(ledger.spent)) == (0, 800, 1)


def test_while_a_policy_is_in_force_a_grown_window_earns_an_attempt_without_the_gain():
    certified = Attempt(2, n_calibration=500, last_trace_id=4000, certified=True)
    grown_size = math.ceil(WINDOW_GROWTH * 500)
    assert not window_grown(0.7, 0.8, grown_size - 1, certified) and window_grown(0.7, 0.8, grown_size, certified)
    assert not window_grown(0.0, 0.8, grown_size, certified)  # validation predicts nothing certifiable
    assert not window_grown(0.7, 0.0, grown_size, certified)  # nothing in force: the prediction alone decides
    assert not window_grown(0.7, 0.8, grown_size, None)
    rng = np.random.default_rng(1)
    validation = Validation(rng.random(2000), rng.random(2000) < 0.99)
    ledger = MemoryLedger()
    ledger.settle(ledger.reserve(0.95, 0.05, 500, 4000).attempt, True)
    read: list[int] = []

    def calibration() -> CalibrationEvidence:
        read.append(1)
        return CalibrationEvidence(rng.random(1000), np.ones(1000, bool), np.ones(1000, bool))

    kept = attempt_certification(validation, grown_size - 1, np.arange(1, 6001), alpha=0.95, delta=0.05,
                                 baseline=0.96, ledger=ledger, calibration=calibration)
    assert kept.attempt == 0 and not read  # the prediction is not MIN_GAIN above 0.96, the window not grown enough
    grown = attempt_certification(validation, grown_size, np.arange(1, 6001), alpha=0.95, delta=0.05, baseline=0.96,
                                  ledger=ledger, calibration=calibration)
    assert grown.attempt == 2 and grown.certified and read == [1]


def test_while_a_policy_is_in_force_a_gate_unlikely_to_certify_is_not_attempted_for_the_gain():
    rng = np.random.default_rng(2)
    validation = Validation(rng.random(600), rng.random(600) < 0.98)
    level = attempt_delta(0.05, 2)
    assert validation.coverage(700, 0.95, level) > 0.9 + MIN_GAIN  # worth an attempt by the gain alone ...
    assert 0.5 < validation.certify_probability(700, 0.95, level) < MIN_CERTIFY_PROBABILITY  # ... but a coin flip

    def calibration() -> CalibrationEvidence:
        return CalibrationEvidence(rng.random(750), np.ones(750, bool), np.ones(750, bool))

    def attempt(n_calibration: int, baseline: float) -> int:
        ledger = MemoryLedger()
        ledger.settle(ledger.reserve(0.95, 0.05, 500, 4000).attempt, True)
        return attempt_certification(validation, n_calibration, np.arange(1, 6001), alpha=0.95, delta=0.05,
                                     baseline=baseline, ledger=ledger, calibration=calibration).attempt

    assert attempt(700, baseline=0.9) == 0  # the policy in force answers meanwhile
    assert attempt(math.ceil(WINDOW_GROWTH * 500), baseline=0.9) == 2  # the window's schedule does not ask
    assert attempt(700, baseline=0.0) == 2  # with nothing answering, an attempt is the only way to start saving


def test_an_attempt_for_the_gain_that_certifies_less_than_the_policy_in_force_replaces_nothing():
    rng = np.random.default_rng(1)
    validation = Validation(rng.random(2000), rng.random(2000) < 0.99)
    half = np.arange(1000) < 500  # the policy's filters leave half the calibration traces out

    def calibration() -> CalibrationEvidence:
        return CalibrationEvidence(rng.random(1000), np.ones(1000, bool), half)

    def attempt(latest_window: int) -> tuple[Outcome, MemoryLedger]:
        ledger = MemoryLedger()
        ledger.settle(ledger.reserve(0.95, 0.05, latest_window, 4000).attempt, True)
        return attempt_certification(validation, 1000, np.arange(1, 6001), alpha=0.95, delta=0.05, baseline=0.9,
                                     ledger=ledger, calibration=calibration), ledger

    for_gain, ledger = attempt(900)  # the window has not doubled: an attempt for the predicted gain
    assert for_gain.certified and for_gain.coverage <= 0.5 and not for_gain.scheduled
    assert not for_gain.replaces(0.9) and ledger.latest().certified is False  # for the schedule, it changed nothing
    scheduled, ledger = attempt(500)  # doubled: newer, larger evidence replaces the policy in force, lower or not
    assert scheduled.scheduled and scheduled.replaces(0.9) and ledger.latest().certified is True


def test_a_fit_whose_attempt_for_the_gain_certifies_less_keeps_the_policy_in_force(banking_subset, fake_embedder,
                                                                                  monkeypatch):
    monkeypatch.setattr(attempt_module, "MIN_GAIN", -1.0)  # an attempt for the gain at any prediction ...
    monkeypatch.setattr(attempt_module, "MIN_CERTIFY_PROBABILITY", 0.0)
    texts = [t for t, _ in banking_subset]
    labels = [label for _, label in banking_subset]
    ledger = MemoryLedger()
    ledger.settle(ledger.reserve(0.9, 0.05, 10**6, 100).attempt, True)  # ... on a window that has not doubled
    policy, cert = fit_policy(texts, labels, alpha=0.9, delta=0.05, embed=fake_embedder,
                              ids=list(range(101, 101 + len(texts))), ledger=ledger, baseline=0.95)
    assert policy is None and not cert.deployed and cert.reason_code == NOT_BETTER and cert.attempt == 2
    assert "below the 0.950 of the policy in force, which stays" in cert.reason
    assert ledger.latest().certified is False


def test_a_fit_that_skips_an_unlikely_attempt_for_the_gain_says_so(banking_subset, fake_embedder, monkeypatch):
    monkeypatch.setattr(attempt_module, "MIN_CERTIFY_PROBABILITY", 1.01)  # no gate is likely enough
    texts = [t for t, _ in banking_subset]
    labels = [label for _, label in banking_subset]
    ledger = MemoryLedger()
    ledger.settle(ledger.reserve(0.9, 0.05, 10**6, 100).attempt, True)  # a window that has not doubled
    policy, cert = fit_policy(texts, labels, alpha=0.9, delta=0.05, embed=fake_embedder,
                              ids=list(range(101, 101 + len(texts))), ledger=ledger, baseline=0.01)
    assert policy is None and cert.reason_code == NOT_ATTEMPTED and cert.attempt == 0 and len(ledger.spent) == 1
    assert "chance to certify anything" in cert.reason and "the policy in force stays" in cert.reason


def test_a_fit_on_a_doubled_window_replaces_the_policy_in_force_even_with_less_coverage(banking_subset,
                                                                                       fake_embedder):
    texts = [t for t, _ in banking_subset]
    labels = [label for _, label in banking_subset]
    ledger = MemoryLedger()
    ledger.settle(ledger.reserve(0.9, 0.05, 10, 100).attempt, True)  # the policy in force, on a small window
    policy, cert = fit_policy(texts, labels, alpha=0.9, delta=0.05, embed=fake_embedder,
                              ids=list(range(101, 101 + len(texts))), ledger=ledger, baseline=0.95)
    assert policy is not None and cert.deployed and cert.attempt == 2 and cert.coverage < 0.95
    assert ledger.latest().certified is True


def test_a_skipped_attempt_reads_no_calibration_and_spends_nothing():
    rng = np.random.default_rng(0)
    scores = rng.random(2000)
    ledger = MemoryLedger()

    def calibration() -> CalibrationEvidence:
        pytest.fail("a skipped attempt read the calibration evidence")

    outcome = attempt_certification(Validation(scores, rng.random(2000) < 0.99), 1000, np.arange(3000), alpha=0.95,
                                    delta=0.05, baseline=0.995, ledger=ledger, calibration=calibration)
    assert (outcome.attempt, outcome.delta_spent, outcome.result) == (0, 0.0, None) and ledger.spent == []
    assert outcome.predicted_coverage > 0.9  # certifiable, but not MIN_GAIN above the policy in force
    near_miss = attempt_certification(Validation(scores, rng.random(2000) < 0.9), 1000, np.arange(3000), alpha=0.95,
                                      delta=0.05, baseline=0.0, ledger=ledger, calibration=calibration)
    assert near_miss.attempt == 0 and near_miss.predicted_coverage == 0.0 and ledger.spent == []


def test_calibration_labels_cannot_change_a_skipped_fit(banking_subset, fake_embedder):
    texts = [t for t, _ in banking_subset]
    labels = [label for _, label in banking_subset]
    cal = calibration_side(np.arange(1, len(texts) + 1), "\0")
    flipped = [labels[(i + 7) % len(labels)] if side else label for i, (label, side) in enumerate(zip(labels, cal))]
    assert sum(a != b for a, b in zip(labels, flipped)) > 200  # every calibration trace now disagrees
    certs = []
    for these in (labels, flipped):
        ledger = MemoryLedger()
        _, cert = fit_policy(texts, these, alpha=0.9, delta=0.05, embed=fake_embedder, ledger=ledger, baseline=0.99)
        assert cert.attempt == 0 and cert.reason_code == NOT_ATTEMPTED and ledger.spent == []
        certs.append({k: v for k, v in cert.to_dict().items() if k not in ("data_hash", "created_at", "fit_seconds")})
    assert certs[0] == certs[1] and certs[0]["per_label"] == {}


# --- the certificate ------------------------------------------------------------------------

def test_a_certificate_records_what_its_attempt_spent(banking_subset, fake_embedder):
    texts = [t for t, _ in banking_subset]
    labels = [label for _, label in banking_subset]
    ledger = MemoryLedger()
    for _ in range(2):  # two earlier attempts of this version, both certified
        ledger.settle(ledger.reserve(0.8, 0.05, 100, 500).attempt, True)
    ids = list(range(101, 101 + len(texts)))
    _, cert = fit_policy(texts, labels, alpha=0.8, delta=0.05, embed=fake_embedder, ids=ids, ledger=ledger)
    assert cert.deployed, cert.reason
    assert (cert.attempt, cert.delta_spent) == (3, attempt_delta(0.05, 3))
    assert cert.delta_spent_total == pytest.approx(spent_through(0.05, 3)) and cert.delta_spent_total < cert.delta
    assert cert.agreement_lower_bound is None and cert.p_value <= cert.delta_spent
    assert cert.calibration_id_range == [min(cert.calibration_ids), max(cert.calibration_ids)]
    assert all(p["estimate"] and not p["certified"] for p in cert.frontier)
    summary = cert.summary()
    assert "on the traffic its calibration window sampled" in summary and "(attempt 3)" in summary
    assert f"trace ids {cert.calibration_id_range[0]}-{cert.calibration_id_range[1]}" in summary
    assert Certificate.from_dict(json.loads(json.dumps(cert.to_dict()))) == cert


def test_a_certificate_of_an_earlier_release_still_loads():
    old = {"task": "t", "fingerprint": "", "deployed": True, "alpha": 0.9, "delta": 0.05, "reason": "certified",
           "reason_code": "deployed", "n_traces": 400, "coverage": 0.97, "agreement_lower_bound": 0.93,
           "frontier": [{"alpha": 0.8, "coverage": 1.0, "certified": True, "lower_bound": 0.95}]}
    cert = Certificate.from_dict(old)
    assert (cert.attempt, cert.delta_spent, cert.agreement_lower_bound) == (0, 0.0, 0.93)
    assert cert.summary() == "handles 97% at >= 90% agreement (one fit at delta 0.05, before lifetime accounting)"


# --- no leak from calibration into training ---------------------------------------------------

def test_calibration_labels_do_not_change_the_trained_model(banking_subset, fake_embedder):
    """A label with 2 training-side traces is too rare to train on; 3 calibration traces of it must not make it
    trainable (which labels are trained is decided on train and validation only)."""
    texts = [t for t, _ in banking_subset] + ["can I buy bitcoin with my balance", "do you support crypto wallets"]
    labels = [label for _, label in banking_subset]
    ids = np.arange(1, len(texts) + 1)
    side = calibration_side(ids, "leak")
    pool = np.ones(len(texts), dtype=bool)
    pool[-2:] = False  # the two crypto traces are training-side whatever their hash
    split = Split.persistent(ids, pool, salt="leak", seed=0)
    cal_rows = np.nonzero(side[: len(labels)])[0]
    assert set(split.cal) == set(np.nonzero(side & pool)[0]) and len(cal_rows) > 3
    relabelled = list(labels)
    for i in cal_rows[:3]:
        relabelled[i] = "crypto"
    policies = []
    for these in (labels, relabelled):
        data = _prepare(texts, [*these, "crypto", "crypto"], fake_embedder, split, pool)
        assert "crypto" in data.rare and "crypto" not in data.label_names
        policies.append(_final_policy(data, _filters(data), seed=0).to_bytes())
    assert policies[0] == policies[1]
