"""One alpha and delta per task version (issue 21, point 4): a policy answers only callers no stricter than its
certificate, and `tracer fit` / `tracer resume` keep the version's level unless told otherwise."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests import clustered
from tracer_core import Reason, Tracer, TraceStore
from tracer_core.cli.commands import main as cli
from tracer_core.decision import REASON_TEXT
from tracer_core.serving.binding import DEFAULT, Level, choose_level

TASK = "binding"


def caller(db: Path, **level) -> Tracer:
    return Tracer(TASK, db, embedder=clustered.embed, auto_refit=False, audit_rate=0.0, policy_check_s=0.0, **level)


@pytest.fixture(scope="module")
def certified_085(tmp_path_factory) -> Path:
    """A store whose policy v1 is certified at alpha 0.85, delta 0.05."""
    db = tmp_path_factory.mktemp("binding") / "tracer.db"
    with caller(db, alpha=0.85, delta=0.05) as tracer:
        texts = clustered.texts(1200)
        tracer.record_many(texts, [clustered.label_of(t) for t in texts])
        cert = tracer.fit()
    assert cert.deployed and (cert.alpha, cert.delta) == (0.85, 0.05), cert.reason
    return db


@pytest.fixture
def db(certified_085, tmp_path) -> Path:
    path = tmp_path / "tracer.db"
    shutil.copy(certified_085, path)
    return path


QUERIES = clustered.texts(200, "query")


@pytest.mark.parametrize("level", [{"alpha": 0.99}, {"alpha": 0.85, "delta": 0.001}, {"alpha": 0.99, "delta": 0.001}])
def test_a_stricter_caller_defers_with_its_own_reason(db, level, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="tracer"), caller(db, **level) as tracer:
        decisions = tracer.route_many(QUERIES) + [tracer.route(QUERIES[0])]
        status = tracer.status()
    assert {d.reason for d in decisions} == {Reason.NOT_CERTIFIED_AT_ALPHA}
    assert not any(d.handled for d in decisions) and {d.policy_version for d in decisions} == {1}
    assert Reason.NOT_CERTIFIED_AT_ALPHA.text.startswith("the policy is certified at a lower alpha (or higher delta)")
    assert status["answers_this_caller"] is False and status["policy_version"] == 1
    assert (status["certified"]["alpha"], status["certified"]["delta"]) == (0.85, 0.05)
    warnings = [r.getMessage() for r in caplog.records if "certified at alpha 0.85, delta 0.05" in r.getMessage()]
    assert len(warnings) == 1, warnings  # said once, not on every call


@pytest.mark.parametrize("level", [{"alpha": 0.85}, {"alpha": 0.80}, {"alpha": 0.80, "delta": 0.1}])
def test_a_caller_no_stricter_than_the_certificate_is_answered(db, level) -> None:
    with caller(db, **level) as tracer:
        decisions = tracer.route_many(QUERIES)
        status = tracer.status()
    assert sum(d.handled for d in decisions) >= 0.5 * len(QUERIES)
    assert Reason.NOT_CERTIFIED_AT_ALPHA not in {d.reason for d in decisions}
    assert status["answers_this_caller"] is True


def test_a_stricter_caller_is_answered_once_a_fit_at_its_level_deploys(db) -> None:
    """Its deferrals are a uniform sample (every call defers, whatever the input): calibration evidence."""
    with caller(db, alpha=0.9) as strict, caller(db, alpha=0.85) as lax:
        fresh = clustered.texts(600, "fresh")
        for text, decision in zip(fresh, strict.route_many(fresh)):
            assert decision.reason == Reason.NOT_CERTIFIED_AT_ALPHA
            strict.record(text, clustered.label_of(text), decision=decision)
        strict.flush()
        evidence = strict.store.teacher_evidence(TASK, "")
        fresh_ids = set(evidence.ids[-600:])
        assert all(u for i, u in zip(evidence.ids, evidence.unselected) if i in fresh_ids)
        cert = strict.fit()
        assert cert.deployed and cert.alpha == 0.9 and cert.version == 2
        assert any(d.handled for d in strict.route_many(QUERIES))
        assert any(d.handled for d in lax.route_many(QUERIES))  # 0.85 <= 0.9: the new policy answers it too


def test_resume_refits_when_the_fresh_policy_is_certified_below_the_resuming_level(db) -> None:
    with caller(db, alpha=0.85) as lax:
        lax.suspend("by hand")
        fresh = clustered.texts(1200, "after")
        lax.record_many(fresh, [clustered.label_of(t) for t in fresh])
        assert lax.fit().deployed  # v2 at 0.85, on traces after the suspension; still suspended
    with caller(db, alpha=0.9) as strict:
        cert = strict.resume()
    assert cert.version == 3 and cert.alpha == 0.9 and cert.deployed


def test_choose_level_keeps_the_version_level_and_names_a_change(db, tmp_path) -> None:
    with TraceStore(db) as store:
        kept = choose_level(store, TASK, "")
        changed = choose_level(store, TASK, "", alpha=0.99)
        stricter_delta = choose_level(store, TASK, "", delta=0.01)
        never = choose_level(store, "other", "")
        asked = choose_level(store, "other", "", alpha=0.9)
    assert kept.level == Level(0.85, 0.05) and not kept.changed and kept.why == "the level of its latest certificate"
    assert changed.level == Level(0.99, 0.05) and changed.changed
    assert changed.why == "its policies so far: alpha 0.85, delta 0.05"
    assert stricter_delta.level == Level(0.85, 0.01) and stricter_delta.changed
    assert never.level == DEFAULT and never.why == "the default: the task version was never fitted"
    assert asked.level == Level(0.9, 0.05) and asked.why == "as asked: the task version was never fitted"


def test_the_new_reason_has_a_text_and_is_unselected() -> None:
    from tracer_core.decision import UNSELECTED

    assert Reason.NOT_CERTIFIED_AT_ALPHA in REASON_TEXT and Reason.NOT_CERTIFIED_AT_ALPHA in UNSELECTED


@pytest.mark.slow
def test_cli_fit_keeps_the_task_alpha_and_prints_a_change(tmp_path, banking_subset) -> None:
    """`tracer fit` embeds with the default model (MiniLM): the task version fitted at 0.85 stays at 0.85."""
    db = tmp_path / "cli.db"
    with Tracer(TASK, db, auto_refit=False) as tracer:
        tracer.record_many([t for t, _ in banking_subset], [lab for _, lab in banking_subset])
    run = CliRunner().invoke

    first = run(cli, ["fit", "--task", TASK, "--db", str(db)])
    assert first.exit_code == 0, first.output
    assert first.output.startswith(f"certifying task {TASK!r} at alpha 0.95, delta 0.05 (the default: the task version "
                                   "was never fitted)")
    assert "lower bound" not in first.output
    assert "attempt" in first.output  # "attempt j: delta_j ... spent", or "attempt not recorded" before the gate branch

    at_085 = run(cli, ["fit", "--task", TASK, "--alpha", "0.85", "--db", str(db)])
    assert at_085.exit_code == 0, at_085.output
    assert at_085.output.startswith(f"re-certifying task {TASK!r} at alpha 0.85, delta 0.05 (its policies so far: "
                                    "alpha 0.95, delta 0.05)")

    again = run(cli, ["fit", "--task", TASK, "--db", str(db)])
    assert again.exit_code == 0, again.output
    assert again.output.startswith(f"certifying task {TASK!r} at alpha 0.85, delta 0.05 (the level of its latest certificate)")

    as_json = run(cli, ["fit", "--task", TASK, "--json", "--db", str(db)])
    assert as_json.exit_code == 0 and json.loads(as_json.stdout)["alpha"] == 0.85
    assert "certifying task" in as_json.stderr
    with TraceStore(db) as store:
        levels = [(p["certificate"]["alpha"], p["certificate"]["delta"]) for p in store.policies(TASK, fingerprint="")]
    assert sorted(levels) == sorted([(0.95, 0.05), (0.85, 0.05), (0.85, 0.05), (0.85, 0.05)])

    routed = run(cli, ["route", "--task", TASK, "--db", str(db), banking_subset[0][0]])
    assert json.loads(routed.output.strip().splitlines()[-1])["reason"] != "not_certified_at_alpha"
