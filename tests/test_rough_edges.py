"""Issue 23 point 6: what a person reads has no literal backticks, one rule for unpriced dollars, no library log line
inside a command's output, and a per-label line that says the promise covers all answers together."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from tracer_core.cli import main as cli
from tracer_core.cli.suspects import render_text
from tracer_core.learning.suspects import _confused_pairs
from tracer_core.report.html import per_label_html, summary_html, suspects_html
from tracer_core.report.sections import per_label_facts
from tracer_core.report.summary import summary_facts
from tracer_core.report.terminal import plain_console, summary_view
from tracer_core.serving.suspension import Suspensions
from tracer_core.storage.store import TraceStore
from tracer_core.storage.trace import make_trace

TASK = "intent"


def found_with_pairs() -> dict:
    pairs = _confused_pairs([("transport_query", "transport_ticket")] * 7)
    return {"n_suspects": 7, "min_score": 0.5, "n_traces": 100, "suspects": [], "per_label": [],
            "confused_pairs": pairs, "unavailable": None}


def test_confused_pairs_show_code_in_html_and_plain_text_in_the_terminal() -> None:
    found = found_with_pairs()
    text = render_text(TASK, found)
    assert "transport_query vs transport_ticket: 7 suspects" in text and "`" not in text
    html = suspects_html(found)
    assert "<li><code>transport_query</code> vs <code>transport_ticket</code>: 7 suspects</li>" in html
    assert "`" not in html


def store_with_unpriced_calls(path: Path) -> None:
    with TraceStore(path) as store:
        store.append_many([make_trace(TASK, f"text {i}", f"lab{i % 3}", model="local-model",
                                      cost_usd=0.0 if i % 2 else None) for i in range(30)])
        store.append_many([make_trace(TASK, "answered", "lab0", source="surrogate", route="handled", policy_version=1,
                                      cost_usd=0.0)])


def test_an_unpriced_model_says_so_in_status_and_report_never_zero_dollars(db_path: Path) -> None:
    store_with_unpriced_calls(db_path)
    with TraceStore(db_path) as store:
        facts = summary_facts(store, TASK)
    assert facts["dollars_saved"] is None and facts["unpriced_models"] == ["local-model"]
    html = summary_html(facts)
    assert html.count(">no price known for local-model<") == 2 and "$0.0000" not in html
    console = plain_console(width=200)
    with console.capture() as captured:
        console.print(summary_view(facts))
    assert "no price known for local-model" in captured.get() and "$0.0000" not in captured.get()
    assert "`" not in facts["verdict"]  # "run: tracer fit --task intent", no literal backticks


def test_a_priced_model_shows_dollars(db_path: Path) -> None:
    with TraceStore(db_path) as store:
        store.append_many([make_trace(TASK, f"text {i}", "lab0", model="gpt-x", cost_usd=0.002) for i in range(4)])
        store.append_many([make_trace(TASK, "x", "lab0", source="surrogate", route="handled", policy_version=1)])
        facts = summary_facts(store, TASK)
    assert facts["unpriced_models"] is None and abs(facts["dollars_saved"] - 0.002) < 1e-12
    assert "$0.0020" in summary_html(facts)


def test_status_of_a_suspended_task_prints_no_log_line(db_path: Path) -> None:
    store_with_unpriced_calls(db_path)
    result = CliRunner().invoke(cli, ["suspend", "--task", TASK, "--db", str(db_path), "--reason", "audits disagree"])
    assert result.exit_code == 0
    assert "note: tracer task 'intent' suspended: audits disagree" in result.stderr  # the library's warning, as a note
    assert "note:" not in result.stdout
    status = CliRunner().invoke(cli, ["status", "--task", TASK, "--db", str(db_path)])
    assert status.exit_code == 0 and "SUSPENDED since" in status.output
    assert "tracer task" not in status.output and "note:" not in status.output


def test_a_reading_command_prints_nothing_on_stderr(db_path: Path) -> None:
    store_with_unpriced_calls(db_path)
    with TraceStore(db_path) as store:
        Suspensions(store, TASK, "").suspend("first", automatic=False)  # outside the CLI: the root logger's business
    result = CliRunner().invoke(cli, ["tasks", "--db", str(db_path)])
    assert result.exit_code == 0 and result.stderr == ""


def test_the_per_label_line_says_the_promise_is_about_all_answers_together() -> None:
    cert = {"per_label": {"lab0": {"status": "certified", "agreement": 0.455, "n_calibration": 11}}}
    facts = per_label_facts(None, cert, ["lab0"] * 11)
    (row,) = facts["rows"]
    assert "all answers together, not this label alone" in row["status_text"] and row["status"] == "answered"
    html = per_label_html(facts)
    line = html[html.index("<tbody>"):]
    assert "45.5%" in line and "all answers together, not this label alone" in line and "certified" not in line
