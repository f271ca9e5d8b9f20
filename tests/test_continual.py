"""The continual loop keeps its guarantee: audits, unbiased calibration evidence, monitor, suspension, CLI switch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from scipy.stats import binom

from tests import clustered
from tracer_core import Reason, Tracer, TraceStore
from tracer_core.cli.commands import main as cli
from tracer_core.learning.certificate import NOT_ATTEMPTED
from tracer_core.learning.spending import attempt_delta
from tracer_core.serving import suspending

TASK = "loop"
ROOT = Path(__file__).resolve().parent.parent


def fitted(db: Path, **options) -> Tracer:
    """A Tracer whose policy v1 is certified on 1,200 clean traces recorded before any policy."""
    tracer = Tracer(TASK, db, alpha=0.9, embedder=clustered.embed, auto_refit=False, policy_check_s=0.0, **options)
    texts = clustered.texts(1200)
    tracer.record_many(texts, [clustered.label_of(t) for t in texts])
    assert tracer.fit().deployed
    return tracer


def serve(tracer: Tracer, texts: list[str], teacher) -> list:
    """Route a batch as an integration does: handled ones answered by the surrogate, the rest by `teacher`."""
    decisions = tracer.route_many(texts)
    for text, decision in zip(texts, decisions):
        tracer.record(text, decision.label if decision.handled else teacher(text), decision=decision)
    return decisions


def test_audits_are_recorded_with_their_context(tmp_path):
    tracer = fitted(tmp_path / "a.db", audit_rate=1.0)
    texts = clustered.texts(40, "new") + [f"far away {i}" for i in range(5)]
    decisions = serve(tracer, texts, clustered.label_of)
    assert all(d.reason == Reason.AUDIT and not d.handled and d.policy_version == 1 for d in decisions)
    would_answer = [(d.label, clustered.label_of(t)) for d, t in zip(decisions[:40], texts) if d.label is not None]
    assert len(would_answer) >= 35 and all(got == truth for got, truth in would_answer)  # the policy's answers
    assert all(d.label is None for d in decisions[40:])  # out of distribution: it would have deferred
    tracer.flush()
    audits = [t for t in tracer.store.iter_traces(TASK) if t.route == "audit"]
    assert len(audits) == 45 and all(t.source == "teacher" and t.policy_version == 1 for t in audits)
    assert [t.predicted for t in audits] == [d.label for d in decisions]
    assert tracer.status()["monitor"]["audits"] == len(would_answer)
    tracer.close()


def test_audits_are_drawn_independently_of_the_input(tmp_path):
    tracer = fitted(tmp_path / "b.db", audit_rate=0.3)
    texts = clustered.texts(1000, "x") + [f"far away {i}" for i in range(1000)]
    decisions = tracer.route_many(texts)
    near = sum(d.reason == Reason.AUDIT for d in decisions[:1000])
    far = sum(d.reason == Reason.AUDIT for d in decisions[1000:])
    for count in (near, far):  # each within the central 99.9% of Binomial(1000, 0.3)
        assert binom.ppf(0.0005, 1000, 0.3) <= count <= binom.ppf(0.9995, 1000, 0.3)
    tracer.close()


def test_calibration_uses_only_unselected_traces(tmp_path):
    tracer = fitted(tmp_path / "c.db", audit_rate=0.25)
    for start in range(0, 800, 200):
        texts = clustered.texts(200, f"live{start}") + [f"far away {start} {i}" for i in range(30)]
        serve(tracer, texts, clustered.label_of)
    tracer.flush()
    routes = {t.id: t.route for t in tracer.store.iter_traces(TASK, source="teacher")}
    kinds = Counter(routes.values())
    assert kinds["out_of_distribution"] >= 50 and kinds["audit"] >= 150
    with Tracer(TASK, tracer.store, alpha=0.92, embedder=clustered.embed, auto_refit=False) as stricter:
        cert = stricter.fit()  # v1 (alpha 0.9) does not answer at 0.92: nothing to beat, the gate runs
    assert cert.deployed and cert.attempt == 2 and cert.n_pool == kinds[None] + kinds["audit"]
    assert {routes[i] for i in cert.calibration_ids} <= {None, "audit"}
    assert any(routes[i] == "audit" for i in cert.calibration_ids)
    tracer.close()


def test_monitor_never_suspends_a_stable_stream(tmp_path):
    tracer = fitted(tmp_path / "d.db", audit_rate=0.2)
    for start in range(0, 4000, 500):
        serve(tracer, clustered.texts(500, f"s{start}"), clustered.label_of)
        tracer.flush()
    status = tracer.status()
    assert status["suspended"] is None
    assert status["monitor"]["audits"] >= 600 and status["monitor"]["wealth"] < 20 ** 0.5  # far from rejection
    tracer.close()


def test_monitor_suspends_when_the_teacher_changes(tmp_path):
    tracer = fitted(tmp_path / "e.db", audit_rate=0.2)
    changed = {f"lab{k}": "lab7" for k in range(4)}  # the teacher now answers half the labels otherwise

    def new_teacher(text: str) -> str:
        return changed.get(clustered.label_of(text), clustered.label_of(text))

    wrong_answers = 0
    for start in range(0, 3000, 100):
        decisions = serve(tracer, clustered.texts(100, f"c{start}"), new_teacher)
        tracer.flush()
        wrong_answers += sum(d.handled and d.label in changed for d in decisions)
        if tracer.status()["suspended"]:
            break
    status = tracer.status()
    assert status["suspended"] is not None, status["monitor"]
    assert status["suspended"]["reason"].startswith("audits contradict the certificate")
    assert start < 1500 and wrong_answers < 800
    assert all(d.reason == Reason.SUSPENDED for d in tracer.route_many(clustered.texts(20, "after")))
    tracer.close()


def test_a_refused_refit_withdraws_a_contradicted_policy(tmp_path):
    tracer = fitted(tmp_path / "f.db", audit_rate=0.0)
    rotated = clustered.texts(1200)  # the same inputs, now answered with the next label
    tracer.record_many(rotated, [f"lab{(int(clustered.label_of(t)[3:]) + 1) % 8}" for t in rotated])
    cert = tracer.fit()
    assert not cert.deployed
    suspension = tracer.status()["suspended"]
    assert suspension is not None and suspension["reason"].startswith("withdrawn: a refit was refused")
    assert tracer.route("lab2 anything").reason == Reason.SUSPENDED
    tracer.close()


def test_next_certificate_after_a_suspension_uses_only_later_traces(tmp_path):
    tracer = fitted(tmp_path / "g.db", audit_rate=0.0)
    tracer.suspend("teacher prompt changed")
    floor = tracer.store.suspension_floor(TASK, "")
    texts = clustered.texts(900, "fresh")
    tracer.record_many(texts, [clustered.label_of(t) for t in texts])
    cert = tracer.resume()
    assert cert.deployed and cert.since_trace_id == floor and cert.n_traces == 900
    assert min(cert.calibration_ids) > floor
    assert tracer.route("lab3 again").reason in (Reason.HANDLED, Reason.AUDIT)
    tracer.close()


@pytest.mark.slow  # a subprocess Python
def test_suspension_reaches_another_process_within_policy_check_s(tmp_path):
    db = tmp_path / "h.db"
    fitted(db).close()
    script = (
        "import sys, time\n"
        "from tests import clustered\n"
        "from tracer_core import Tracer\n"
        f"t = Tracer({TASK!r}, sys.argv[1], alpha=0.9, embedder=clustered.embed, auto_refit=False, "
        "policy_check_s=0.5, audit_rate=0.0)\n"
        "deadline = time.time() + 10\n"
        "while not t.route('lab1 x').handled and time.time() < deadline:  # the first calls defer while the state is read\n"
        "    time.sleep(0.01)\n"
        "assert t.route('lab1 x').handled\n"
        "print('ready', flush=True)\n"
        "deadline = time.time() + 30\n"
        "while time.time() < deadline:\n"
        "    if t.route('lab1 x').reason == 'suspended':\n"
        "        print('suspended', time.time(), flush=True)\n"
        "        break\n"
        "    time.sleep(0.01)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", script, str(db)], stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    assert child.stdout.readline().strip() == "ready"
    with Tracer(TASK, db, alpha=0.9, embedder=clustered.embed, auto_refit=False) as main:
        suspended_at = time.time()
        main.suspend("by the test")
    line = child.stdout.readline().split()
    child.wait(timeout=60)
    assert line and line[0] == "suspended"
    assert float(line[1]) - suspended_at <= 0.5 + 0.5  # policy_check_s plus scheduling slack


def test_cli_switch(tmp_path):
    db = tmp_path / "i.db"
    tracer = fitted(db, audit_rate=0.0)
    runner = CliRunner()
    out = runner.invoke(cli, ["suspend", "--task", TASK, "--db", str(db), "--reason", "maintenance"])
    assert out.exit_code == 0 and "suspended: maintenance" in out.output
    out = runner.invoke(cli, ["route", "--task", TASK, "--db", str(db), "lab1 x"])
    assert '"reason": "suspended"' in out.output
    out = runner.invoke(cli, ["status", "--task", TASK, "--db", str(db)])
    assert out.exit_code == 0 and "SUSPENDED since" in out.output and "maintenance" in out.output
    out = runner.invoke(cli, ["resume", "--task", TASK, "--db", str(db)])
    assert out.exit_code == 1 and "no teacher traces recorded after its suspension" in out.output
    texts = clustered.texts(900, "fresh")
    tracer.record_many(texts, [clustered.label_of(t) for t in texts])
    assert tracer.fit().deployed  # a certificate on traces after the suspension, still suspended
    assert tracer.route("lab1 y").reason == Reason.SUSPENDED
    out = runner.invoke(cli, ["resume", "--task", TASK, "--db", str(db)])
    assert out.exit_code == 0 and "resumed with policy v2" in out.output
    assert tracer.route("lab1 y").reason == Reason.HANDLED
    tracer.close()


def test_a_release1_store_opens_with_its_traces_and_policy(tmp_path):
    db = tmp_path / "release1.db"
    shutil.copy(ROOT / "tests" / "data" / "release1.db", db)
    with TraceStore(db) as store:
        assert store.counts("release1") == {"teacher": 406, "surrogate": 15, "audit": 0, "cached": 0, "unparsed": 0}
        routes = Counter(t.route for t in store.iter_traces("release1"))
        assert routes == {None: 401, "out_of_distribution": 5, "handled": 15}
        assert [p["version"] for p in store.policies("release1")] == [1]
    fingerprint = "0123456789abcdef"
    with Tracer("release1", db, alpha=0.9, embedder=clustered.embed, fingerprint=fingerprint, audit_rate=0.0,
                auto_refit=False) as tracer:
        decision = tracer.route("lab2 after the upgrade")
        assert decision.handled and decision.label == "lab2" and decision.policy_version == 1
    out = CliRunner().invoke(cli, ["tasks", "--db", str(db)])
    assert out.exit_code == 0 and "release1" in out.output and fingerprint[:8] in out.output


@pytest.mark.parametrize("rate", [0.0, 1.0])
def test_audit_rate_bounds(tmp_path, rate):
    tracer = fitted(tmp_path / "j.db", audit_rate=rate)
    reasons = {d.reason for d in tracer.route_many(clustered.texts(30, "k"))}
    assert reasons == ({Reason.AUDIT} if rate == 1.0 else {Reason.HANDLED})
    tracer.close()


def test_withdrawal_looks_are_counted_in_the_store_across_tracers(tmp_path, monkeypatch):
    """Refused refits look again and again at the deployed policy: look k tests at attempt_delta(delta, k), with k
    counted over every process's refused refits of the task version (two tracers on one file get k = 1, 2, 3, 4)."""
    first = fitted(tmp_path / "g.db", audit_rate=0.0)
    second = Tracer(TASK, tmp_path / "g.db", alpha=0.9, embedder=clustered.embed, auto_refit=False, policy_check_s=0.0,
                    audit_rate=0.0)
    cert = first.certificate
    levels = []
    monkeypatch.setattr(suspending, "contradiction",
                        lambda policy, evidence, embed, alpha, delta: levels.append((alpha, delta)))
    refused = {**cert.to_dict(), "deployed": False, "reason": "refused for the test"}
    for tracer in (first, second, second, first):
        version = tracer.store.save_policy(TASK, fingerprint=tracer.fingerprint, certificate=refused, artifact=b"",
                                           status="refused", n_traces=1200)
        in_force = tracer.watcher.current(force=True)
        tracer._suspender.withdraw_if_contradicted(in_force, tracer.store.teacher_evidence(TASK, tracer.fingerprint),
                                                   version)
    assert levels == [(cert.alpha, attempt_delta(cert.delta, k)) for k in (1, 2, 3, 4)]
    assert sum(d for _, d in levels) < cert.delta
    second.close()
    first.close()


def test_an_explicit_fit_of_the_traces_a_background_refit_fitted_returns_its_certificate(tmp_path):
    """record_many() starts a background refit; fit() right after waits for it instead of a second attempt."""
    tracer = Tracer(TASK, tmp_path / "h.db", alpha=0.9, embedder=clustered.embed, refit_every=200, audit_rate=0.0)
    texts = clustered.texts(1200)
    tracer.record_many(texts, [clustered.label_of(t) for t in texts])
    assert tracer.refits.running  # the 1,200 traces started a background refit
    cert = tracer.fit()
    assert cert.deployed and cert.version == 1 and cert.attempt == 1
    assert tracer.fit().reason_code == NOT_ATTEMPTED  # a second explicit fit of the same traces is a new fit
    tracer.close()
