"""tracer report / status: facts checked against a direct computation, HTML in headless Chromium, CLI."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from html import escape as html_escape
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from tests.browser import open_page
from tracer_core.cli.commands import main as cli
from tracer_core.cli.report import report, report_commands, status
from tracer_core.learning.policy import Policy
from tracer_core.report import build_report
from tracer_core.report.evolution import plateau, project
from tracer_core.serving.guarantee import attempt_statement, guarantee_facts, outcome_statement
from tracer_core.serving.tracer import Tracer
from tracer_core.storage.store import TraceStore
from tracer_core.storage.trace import make_trace

TASK = "banking"
ALPHA, DELTA = 0.9, 0.05
COSTS = (0.001, 0.002, 0.004)


def record_and_fit(path: Path, rows: list[tuple[str, str]], embed) -> None:
    """Record rows as teacher traces (deferred: no policy yet), fit with Tracer, then route live calls."""
    with TraceStore(path) as store:
        store.append_many([
            make_trace(TASK, text, label, cost_usd=COSTS[i % 3], route="no_policy")
            for i, (text, label) in enumerate(rows)
        ])
        tracer = Tracer(TASK, db=store, alpha=ALPHA, delta=DELTA, embedder=embed, auto_refit=False, audit_rate=0.0)
        if tracer.fit().deployed:
            live = [t for t, _ in rows[:40]]
            store.append_many([
                make_trace(TASK, t, d.label, source="surrogate", route=d.reason, policy_version=1, score=d.score)
                for t, d in zip(live, tracer.route_many(live)) if d.handled
            ])


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, banking_subset, fake_embedder) -> Path:
    path = tmp_path_factory.mktemp("report") / "tracer.db"
    record_and_fit(path, banking_subset, fake_embedder)
    return path


@pytest.fixture(scope="module")
def fitted_minilm(tmp_path_factory, banking_subset, embedder) -> Path:
    """The same store fitted with the real MiniLM model: for commands that embed with the default model."""
    path = tmp_path_factory.mktemp("report-minilm") / "tracer.db"
    record_and_fit(path, banking_subset, embedder)
    return path


@pytest.fixture(scope="module")
def built(fitted, fake_embedder) -> tuple[dict, Path, Path]:
    out = fitted.parent
    with TraceStore(fitted) as store:
        build_report(store, TASK, out_html=out / "report.html", out_json=out / "report.json", embed=fake_embedder,
                     refit_fractions=(0.2, 1.0))
    return json.loads((out / "report.json").read_text()), out / "report.html", out


def direct_routing(path: Path, embed) -> dict:
    """Route the certificate's calibration traces through the stored policy, computed here from scratch."""
    with TraceStore(path) as store:
        row = store.latest_policy(TASK, fingerprint="")
        texts, labels, ids = store.teacher_examples(TASK, "")
        surrogate_calls = store.counts(TASK)["surrogate"]
        costs = [t.cost_usd for t in store.iter_traces(TASK, source="teacher")]
    policy = Policy.from_row(row)
    cal = set(row["certificate"]["calibration_ids"])
    picked = [(t, lab) for t, lab, i in zip(texts, labels, ids) if i in cal]
    cal_texts, cal_labels = [p[0] for p in picked], [p[1] for p in picked]
    decisions = policy.decide(cal_texts, embed(cal_texts))
    return {"cert": row["certificate"], "texts": cal_texts, "labels": cal_labels, "decisions": decisions,
            "surrogate_calls": surrogate_calls, "mean_cost": sum(costs) / len(costs), "all_labels": labels}


def test_the_tracer_command_runs_the_report_commands(fitted) -> None:
    """`tracer status` through the top-level group prints what the command itself prints (`tracer report`:
    test_cli_report_writes_both_files_and_prints_the_path)."""
    runner = CliRunner()
    via_group = runner.invoke(cli, ["status", "--db", str(fitted)])
    direct = runner.invoke(status, ["--db", str(fitted)])
    assert via_group.exit_code == 0 and via_group.output == direct.output and "v1 deployed" in direct.output
    assert {c.name for c in report_commands} <= set(cli.list_commands(click.Context(cli)))


def test_facts_match_a_direct_computation_on_calibration_traces(built, fitted, fake_embedder) -> None:
    facts, _, _ = built
    d = direct_routing(fitted, fake_embedder)
    decisions, labels = d["decisions"], d["labels"]
    handled = [x.handled for x in decisions]
    agree = [x.label == lab for x, lab in zip(decisions, labels)]
    n_handled = sum(handled)

    summary = facts["summary"]
    assert d["cert"]["deployed"] and summary["deployed"] and summary["policy_version"] == 1
    assert summary["coverage"] == d["cert"]["coverage"]
    guarantee = summary["guarantee"]
    assert guarantee["observed_agreement"] == d["cert"]["agreement"] and (guarantee["alpha"], guarantee["delta"]) == (ALPHA, DELTA)
    assert guarantee["certified"].startswith("agreement with the LLM >= alpha 0.90 on all answered calls together")
    assert guarantee["observed"].startswith("observed ") and "not a bound" in guarantee["observed"]
    assert guarantee["lifetime"].startswith("for this task version, the probability that tracer ever deploys a policy")
    assert summary["verdict"].startswith(f"handles {d['cert']['coverage']:.0%} at >= 90% agreement")
    assert "lower bound" not in json.dumps(facts)
    assert summary["teacher_traces"] == 800
    assert summary["llm_calls_saved"] == d["surrogate_calls"] > 0
    assert math.isclose(summary["dollars_saved"], d["surrogate_calls"] * d["mean_cost"])
    assert summary["live_all_time"]["handled"] == d["surrogate_calls"]
    assert summary["live_all_time"]["deferred_by_reason"] == {"no_policy": 800}

    cal = facts["calibration"]
    assert cal["n"] == len(labels) == d["cert"]["n_calibration"] and cal["missing_ids"] == 0
    assert cal["handled"] == n_handled
    assert math.isclose(cal["coverage"], n_handled / len(labels))
    assert math.isclose(cal["coverage"], d["cert"]["coverage"], abs_tol=1e-4)
    assert math.isclose(cal["agreement"], sum(a for a, h in zip(agree, handled) if h) / n_handled)

    assert facts["frontier"]["points"] == d["cert"]["frontier"]
    assert facts["frontier"]["certified"] is False and facts["frontier"]["note"].startswith("Estimates, not certificates")

    traffic = Counter(d["all_labels"])
    rows = {r["label"]: r for r in facts["per_label"]["rows"]}
    assert set(rows) == set(traffic)
    for label, row in rows.items():
        mine = [i for i, lab in enumerate(labels) if lab == label]
        mine_handled = [i for i in mine if handled[i]]
        reasons = Counter(decisions[i].reason for i in mine if not handled[i])
        confused = Counter(decisions[i].label for i in mine if decisions[i].label != label)
        assert row["traces"] == traffic[label] and math.isclose(row["share"], traffic[label] / 800)
        assert row["status"] != "certified" and (row["status"] != "answered" or "all answers together" in row["status_text"])
        assert row["n_calibration"] == len(mine)
        assert math.isclose(row["handled_rate"], len(mine_handled) / len(mine))
        if mine_handled:
            assert math.isclose(row["agreement"], sum(agree[i] for i in mine_handled) / len(mine_handled))
        else:
            assert row["agreement"] is None
        assert row["main_deferral_reason"] == (reasons.most_common(1)[0][0] if reasons else None)
        assert {lab: n for lab, n in row["confused_with"]} == dict(confused.most_common(3))

    by_reason = Counter(x.reason for x in decisions if not x.handled)
    assert {r: v["n"] for r, v in facts["deferrals"]["calibration"].items()} == dict(by_reason)
    for reason, entry in facts["deferrals"]["calibration"].items():
        assert entry["examples"] and all(
            decisions[d["texts"].index(e["input"])].reason == reason for e in entry["examples"]
        )

    points = facts["regions"]["points"]
    assert len(points) == len(labels) and sum(p["handled"] for p in points) == n_handled
    assert facts["regions"]["method"] in ("pca", "umap")


def test_boundary_pairs_are_nearest_handled_deferred_inputs_of_one_label(built, fitted, fake_embedder) -> None:
    facts, _, _ = built
    d = direct_routing(fitted, fake_embedder)
    index = {t: i for i, t in enumerate(d["texts"])}
    pairs = facts["boundary"]["pairs"]
    assert pairs, "a fit at alpha 0.9 on Banking77 defers some inputs of labels it also handles"
    deferred_per_label = Counter(lab for lab, x in zip(d["labels"], d["decisions"]) if not x.handled)
    assert deferred_per_label[pairs[0]["label"]] == max(
        deferred_per_label[p["label"]] for p in pairs
    )
    for pair in pairs:
        h, f = index[pair["handled"]["input"]], index[pair["deferred"]["input"]]
        assert d["labels"][h] == d["labels"][f] == pair["label"]
        assert d["decisions"][h].handled and not d["decisions"][f].handled
        assert pair["deferred"]["reason"] == d["decisions"][f].reason
        assert pair["competing_label"] != pair["label"]
        vectors = fake_embedder([d["texts"][h], d["texts"][f]])
        assert math.isclose(pair["similarity"], float(vectors[0] @ vectors[1]), abs_tol=1e-4)


def test_evolution_refits_prefixes_and_reuses_the_full_fit(built, fitted) -> None:
    facts, _, _ = built
    evolution = facts["evolution"]
    assert [v["version"] for v in evolution["versions"]] == [1]
    assert [p["n_traces"] for p in evolution["prefixes"]] == [160, 800]
    assert evolution["prefixes"][0]["reason_code"] == "too_few_traces" and evolution["prefixes"][0]["coverage"] == 0.0
    with TraceStore(fitted) as store:
        cert = store.latest_policy(TASK, fingerprint="")["certificate"]
    assert evolution["prefixes"][-1]["coverage"] == cert["coverage"]
    assert evolution["series"] == "prefixes"
    assert evolution["plateau"]["over_traces"] == 640 and evolution["plateau"]["plateau"] is False
    assert evolution["projection"] is None  # only one fit handled anything: no curve to project


def test_plateau_detector_and_projection() -> None:
    n = [1000, 2000, 4000, 8000]
    rising = [{"n_traces": x, "coverage": 0.95 - 3.0 * x ** -0.5} for x in n]
    flat = rising[:-1] + [{"n_traces": 10000, "coverage": rising[-2]["coverage"] + 0.004}]
    assert plateau(rising)["plateau"] is False
    verdict = plateau(flat)
    assert verdict["plateau"] is True and verdict["message"] == "coverage +0.4% over the last 6,000 traces: plateau: more traces stopped helping"
    assert plateau(rising[:1])["plateau"] is None
    projected = project(rising)
    assert projected["method"].startswith("saturating")
    assert math.isclose(projected["coverage"], 0.95 - 3.0 * 16000 ** -0.5, abs_tol=0.01)
    assert project(rising[:2])["method"] == "log-linear fit"
    refused = [{"n_traces": 100, "coverage": 0.0, "reason_code": "too_few_traces"}]
    assert project(refused + rising[:1]) is None
    assert plateau(rising[:1] + [{"n_traces": 9000, "coverage": 0.0, "reason_code": "not_certified"}]) == {
        "plateau": False, "gain": None, "over_traces": None,
        "message": "nothing certified yet at 9,000 traces (not_certified): more traces are needed",
    }


def test_html_report_opens_in_chromium_without_console_errors(built) -> None:
    facts, html, out = built
    page = open_page(html, out / "browser")
    assert page.console == []
    assert page.screenshot.stat().st_size > 20_000
    assert page.dom.count('class="plot-svg"') >= 4  # the frontier, evolution, deferral and region plots, as SVG
    assert 'data-sortable="ready"' in page.dom
    assert html_escape(facts["summary"]["verdict"]) in page.dom
    for title in ("1. Summary", "2. Frontier", "3. Evolution", "4. Per label", "5. Why it defers",
                  "6. Boundary examples", "7. Input regions"):
        assert title in page.dom
    for phrase in ("Lifetime guarantee: for this task version", "attempt 1: delta_1", "Estimates, not certificates",
                   "No label is certified on its own", "answered (alpha covers all answers together, not this label alone)"):
        assert phrase in page.dom, phrase
    text = html.read_text()
    shown = re.sub(r"<script>.*?</script>", "", text, flags=re.S)
    assert "lower bound" not in shown and "certified bound" not in shown
    assert "<script src" not in text and "<link" not in text and "<img src=\"http" not in text  # self-contained


def test_chromium_helper_reports_page_errors(tmp_path) -> None:
    page = tmp_path / "broken.html"
    page.write_text("<html><body><script>console.error('bad thing'); notDefined();</script></body></html>")
    loaded = open_page(page, tmp_path / "browser")
    assert any("bad thing" in m for m in loaded.console)
    assert any("Uncaught ReferenceError" in m for m in loaded.console)


def test_refused_task_report_explains_the_refusal(tmp_path, banking_subset, fake_embedder) -> None:
    path = tmp_path / "tracer.db"
    record_and_fit(path, banking_subset[::27][:30], fake_embedder)
    with TraceStore(path) as store:
        cert = store.latest_policy(TASK, fingerprint="", status=None)["certificate"]
        facts = build_report(store, TASK, out_html=tmp_path / "r.html", out_json=tmp_path / "r.json", embed=fake_embedder)
    assert not cert["deployed"]
    assert facts["summary"]["verdict"] == f"refused: {cert['reason']} - every call goes to the LLM"
    assert facts["summary"]["policy_status"] == "refused" and facts["calibration"]["n"] == 0
    assert facts["summary"]["llm_calls_saved"] == 0 and facts["summary"]["dollars_saved"] == 0.0
    assert facts["evolution"]["plateau"]["message"].startswith("nothing certified yet at 30 traces")
    assert facts["evolution"]["projection"] is None
    assert json.loads((tmp_path / "r.json").read_text())["summary"]["reason"] == cert["reason"]
    page = open_page(tmp_path / "r.html", tmp_path / "browser")
    assert page.console == []
    assert html_escape(cert["reason"]) in page.dom and "refused" in page.dom


def test_report_without_any_policy_says_to_fit(tmp_path, banking_subset, fake_embedder) -> None:
    path = tmp_path / "tracer.db"
    with TraceStore(path) as store:
        store.append_many([make_trace(TASK, t, lab) for t, lab in banking_subset[:50]])
        facts = build_report(store, TASK, embed=fake_embedder)
    assert facts["summary"]["verdict"].startswith(f"no policy fitted yet for {TASK!r}")
    assert facts["evolution"]["versions"] == [] and facts["evolution"]["prefixes"] == []
    assert [r["traces"] for r in facts["per_label"]["rows"]] == sorted(
        Counter(lab for _, lab in banking_subset[:50]).values(), reverse=True
    )


@pytest.mark.slow
def test_cli_report_writes_both_files_and_prints_the_path(fitted_minilm, tmp_path) -> None:
    """`tracer report` (through the top-level group) embeds with the default model, so the policy is a MiniLM one."""
    out = tmp_path / "explain.html"
    result = CliRunner().invoke(cli, ["report", "--db", str(fitted_minilm), "--task", TASK, "--out", str(out), "--no-refit"])
    assert result.exit_code == 0, result.output
    assert f"Wrote {out.resolve()}" in result.output
    assert f"Wrote {out.with_suffix('.json').resolve()}" in result.output
    facts = json.loads(out.with_suffix(".json").read_text())
    assert facts["evolution"]["prefixes"] == [] and facts["summary"]["policy_version"] == 1
    assert out.read_text().startswith("<!DOCTYPE html>")


def test_cli_status_lists_tasks_and_shows_live_counters(fitted) -> None:
    with TraceStore(fitted) as store:
        cert = store.latest_policy(TASK, fingerprint="")["certificate"]
        handled = store.counts(TASK)["surrogate"]
    overview = CliRunner().invoke(status, ["--db", str(fitted)])
    assert overview.exit_code == 0, overview.output
    assert TASK in overview.output and "v1 deployed" in overview.output
    assert f"{cert['coverage'] * 100:.1f}%" in overview.output
    detail = CliRunner().invoke(status, ["--db", str(fitted), "--task", TASK])
    assert detail.exit_code == 0, detail.output
    assert f"handles {cert['coverage']:.0%}" in detail.output and "Live calls" in detail.output
    handled_row = next(line for line in detail.output.splitlines() if "handled by surrogate" in line)
    assert [int(x) for x in handled_row.replace("│", " ").split() if x.isdigit()] == [handled, handled]
    assert "no_policy" in detail.output


@pytest.mark.parametrize("args, message", [
    (["--db", "{missing}", "--task", TASK], "does not exist"),
    (["--db", "{db}", "--task", "nope"], "task 'nope' has no traces"),
])
def test_cli_errors_are_one_line(fitted, tmp_path, args, message) -> None:
    args = [a.format(missing=tmp_path / "missing.db", db=fitted) for a in args]
    for command in (report, status):
        result = CliRunner().invoke(command, args)
        assert result.exit_code == 1
        assert result.output.startswith("Error: ") and message in result.output
        assert "Traceback" not in result.output
    assert not (tmp_path / "missing.db").exists()


def test_cli_report_refuses_an_unwritable_output_before_any_work(fitted, tmp_path) -> None:
    out = tmp_path / "no-such-dir" / "r.html"
    result = CliRunner().invoke(report, ["--db", str(fitted), "--task", TASK, "--out", str(out)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output == f"Error: cannot write report {str(out)!r}: directory {str(out.parent)!r} does not exist\n"


NEW_CERT = {  # the fields the lifetime guarantee adds (issue 21): attempt j, delta_j, total spent so far
    "task": TASK, "fingerprint": "", "deployed": True, "alpha": 0.95, "delta": 0.05, "reason": "", "reason_code": "deployed",
    "n_traces": 900, "coverage": 0.84, "agreement": 0.962, "attempt": 2, "delta_spent": 0.0076, "delta_spent_total": 0.038,
}
OLD_CERT = {k: v for k, v in NEW_CERT.items() if k not in ("attempt", "delta_spent", "delta_spent_total")}


def test_every_number_says_what_it_is_for_new_and_old_certificates() -> None:
    assert attempt_statement(NEW_CERT) == "attempt 2: delta_2 0.0076 spent, 0.038 of delta 0.05 spent so far"
    assert attempt_statement(OLD_CERT) == "attempt not recorded (certified before attempts were counted)"
    assert attempt_statement({**NEW_CERT, "attempt": 0}).startswith("no certification attempt: the gate did not run")
    assert outcome_statement(NEW_CERT) == (
        "handles 84% at >= 95% agreement (certified: alpha 0.95, delta 0.05, over all answered calls together)")
    facts = guarantee_facts(NEW_CERT)
    assert facts["certified"].startswith("agreement with the LLM >= alpha 0.95 on all answered calls together")
    assert facts["observed"] == "observed 96.2% on the calibration calls it would answer (a measurement, not a bound)"
    assert facts["lifetime"].startswith("for this task version, the probability that tracer ever deploys a policy whose "
                                        "agreement with the LLM on the traffic its calibration window sampled is below "
                                        "alpha is at most delta (0.05)")
    assert guarantee_facts({**OLD_CERT, "deployed": False, "reason": "too few"})["certified"] == (
        "nothing certified (the fit was refused)")


@pytest.mark.parametrize("cert, attempt", [(NEW_CERT, "attempt 2: delta_2 0.0076 spent"), (OLD_CERT, "attempt not recorded")])
def test_cli_status_shows_the_attempt_and_the_lifetime_statement(tmp_path, cert, attempt) -> None:
    db = tmp_path / "tracer.db"
    with TraceStore(db) as store:
        store.append_many([make_trace(TASK, "lost my card", "lost_card")])
        store.save_policy(TASK, fingerprint="", certificate=cert, artifact=b"", status="deployed", n_traces=900)
    overview = CliRunner().invoke(status, ["--db", str(db)])
    detail = CliRunner().invoke(status, ["--db", str(db), "--task", TASK])
    assert overview.exit_code == detail.exit_code == 0, overview.output + detail.output
    shown = ("2: 0.0076 /", "0.038 spent") if "attempt" in cert else ("not recorded",)  # the table wraps cells
    assert "0.95 / 0.05" in overview.output and all(part in overview.output for part in shown)
    flat = " ".join(detail.output.replace("│", " ").split())
    assert attempt in flat and "lifetime guarantee: for this task version" in flat
    assert "observed 96.2% on the calibration calls it would answer" in flat
    assert "lower bound" not in overview.output + detail.output
