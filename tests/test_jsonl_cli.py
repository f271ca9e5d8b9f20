"""JSONL import/export through the Python API and the click commands (CliRunner, real files)."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from tracer_core.cli.commands import main as cli
from tracer_core.cli.store import export, import_, store_commands, tasks
from tracer_core.errors import ImportFormatError
from tracer_core.storage.jsonl import export_jsonl, import_jsonl
from tracer_core.storage.store import TraceStore
from tracer_core.storage.trace import make_trace

DATA = Path(__file__).parent / "data" / "banking77_subset.jsonl"


def write_lines(path: Path, lines: list[str | bytes]) -> Path:
    with open(path, "wb") as fh:
        for line in lines:
            fh.write((line.encode() if isinstance(line, str) else line) + b"\n")
    return path


def test_the_tracer_command_runs_the_store_commands(tmp_path: Path, db_path: Path) -> None:
    """`tracer import`, `tracer tasks` and `tracer export` reach the store through the top-level group."""
    runner = CliRunner()
    src = write_lines(tmp_path / "in.jsonl", [json.dumps({"input": "card not arrived", "label": "card_arrival"}),
                                              json.dumps({"input": "top up failed", "label": "top_up_failed"})])
    imported = runner.invoke(cli, ["import", str(src), "--task", "banking", "--db", str(db_path)])
    assert imported.exit_code == 0 and "imported 2 traces" in imported.stdout, imported.output
    listed = runner.invoke(cli, ["tasks", "--db", str(db_path), "--json"])
    assert listed.exit_code == 0, listed.output
    assert [(row["task"], row["teacher"]) for row in json.loads(listed.stdout)] == [("banking", 2)]
    exported = runner.invoke(cli, ["export", "--task", "banking", "--db", str(db_path)])
    assert [json.loads(line)["label"] for line in exported.stdout.splitlines()] == ["card_arrival", "top_up_failed"]
    assert {c.name for c in store_commands} <= set(cli.list_commands(click.Context(cli)))


def test_import_reference_tracer_format_and_label_format(tmp_path: Path, db_path: Path) -> None:
    src = write_lines(tmp_path / "in.jsonl", [
        json.dumps({"id": "ex-1", "input": "card not arrived", "teacher": "card_arrival", "metadata": {"split": "train"}}),
        "",
        json.dumps({"input": "exchange rate?", "label": "exchange_rate", "source": "audit", "model": "m1"}),
        json.dumps({"input": "numeric label", "teacher": 12, "extra": "kept"}),
    ])
    with TraceStore(db_path) as store:
        result = import_jsonl(store, src, "banking")
        got = list(store.iter_traces("banking"))
    assert result.imported == 3 and result.skipped == []
    assert [(t.input, t.label, t.source) for t in got] == [
        ("card not arrived", "card_arrival", "teacher"),
        ("exchange rate?", "exchange_rate", "audit"),
        ("numeric label", "12", "teacher"),
    ]
    assert got[0].metadata == {"split": "train", "import_id": "ex-1"}
    assert got[1].model == "m1" and got[2].metadata == {"extra": "kept"}


BAD_LINES = [
    "{not json",
    json.dumps({"label": "x"}),
    json.dumps({"input": "no label"}),
    json.dumps({"input": "", "label": "x"}),
    json.dumps({"input": "list label", "label": ["a"]}),
    json.dumps(["an", "array"]),
    b'{"input": "\xff\xfe", "label": "x"}',
    json.dumps({"input": "x" * 100_001, "label": "x"}),
    json.dumps({"input": "wrong task", "label": "x", "task": "other"}),
]
BAD_REASONS = [
    "not valid JSON", 'missing "input"', 'missing "label"', "input is empty", "label must be a string",
    "expected a JSON object", "not valid UTF-8", "input is too large", "task 'other' does not match the import task",
]


def bad_file(tmp_path: Path) -> Path:
    good = [json.dumps({"input": f"good {i}", "label": "ok"}) for i in range(3)]
    return write_lines(tmp_path / "bad.jsonl", [good[0], *BAD_LINES, good[1], good[2]])


def test_bad_lines_abort_the_import_naming_each_line(tmp_path: Path, db_path: Path) -> None:
    with TraceStore(db_path) as store:
        store.append(make_trace("banking", "already here", "kept"))
        with pytest.raises(ImportFormatError) as info:
            import_jsonl(store, bad_file(tmp_path), "banking")
        assert [t.input for t in store.iter_traces("banking")] == ["already here"]
    message = str(info.value)
    assert f"{len(BAD_LINES)} bad line(s)" in message and "nothing was imported" in message
    for number, reason in enumerate(BAD_REASONS, start=2):
        assert f"line {number}: {reason}" in message


def test_skip_bad_imports_good_lines_and_reports_bad_ones(tmp_path: Path, db_path: Path) -> None:
    with TraceStore(db_path) as store:
        result = import_jsonl(store, bad_file(tmp_path), "banking", skip_bad=True)
        assert [t.input for t in store.iter_traces("banking")] == ["good 0", "good 1", "good 2"]
    assert result.imported == 3
    assert [n for n, _ in result.skipped] == list(range(2, 2 + len(BAD_LINES)))


def test_missing_import_file_is_an_import_format_error(tmp_path: Path, db_path: Path) -> None:
    with TraceStore(db_path) as store, pytest.raises(ImportFormatError, match="cannot read import file"):
        import_jsonl(store, tmp_path / "nope.jsonl", "t")


def test_cli_round_trip_import_tasks_export(tmp_path: Path, db_path: Path) -> None:
    runner = CliRunner()
    imported = runner.invoke(import_, [str(DATA), "--task", "banking", "--db", str(db_path)])
    assert imported.exit_code == 0, imported.output
    n_lines = sum(1 for line in DATA.open(encoding="utf-8") if line.strip())
    assert f"imported {n_lines} traces" in imported.stdout

    out = tmp_path / "out.jsonl"
    exported = runner.invoke(export, ["--task", "banking", "--out", str(out)], env={"TRACER_DB": str(db_path)})
    assert exported.exit_code == 0, exported.output
    original = [json.loads(line) for line in DATA.open(encoding="utf-8")]
    records = [json.loads(line) for line in out.open(encoding="utf-8")]
    assert [(r["input"], r["label"]) for r in records] == [(o["input"], o.get("label", o.get("teacher"))) for o in original]

    copy_db = tmp_path / "copy.db"
    reimported = runner.invoke(import_, [str(out), "--task", "banking", "--db", str(copy_db)])
    assert reimported.exit_code == 0, reimported.output
    to_stdout = runner.invoke(export, ["--task", "banking", "--db", str(copy_db)])
    assert [(json.loads(line)["input"], json.loads(line)["label"]) for line in to_stdout.stdout.splitlines()] == [
        (r["input"], r["label"]) for r in records
    ]

    listed = runner.invoke(tasks, ["--db", str(copy_db), "--json"])
    assert json.loads(listed.stdout)[0] | {"last_trace_at": 0} == {
        "task": "banking", "fingerprint": "", "teacher": n_lines, "surrogate": 0, "last_trace_at": 0,
        "origin": "", "description": None,
    }
    table = runner.invoke(tasks, ["--db", str(copy_db)])
    assert table.exit_code == 0 and "banking" in table.stdout and str(n_lines) in table.stdout


def test_cli_bad_lines_exit_1_with_line_numbers_and_no_traceback(tmp_path: Path, db_path: Path) -> None:
    runner = CliRunner()
    src = bad_file(tmp_path)
    result = runner.invoke(import_, [str(src), "--task", "banking", "--db", str(db_path)])
    assert result.exit_code == 1
    assert "Traceback" not in result.output and "line 2: not valid JSON" in result.output
    with TraceStore(db_path) as store:
        assert store.counts("banking")["teacher"] == 0

    skipped = runner.invoke(import_, [str(src), "--task", "banking", "--db", str(db_path), "--skip-bad"])
    assert skipped.exit_code == 0
    assert "imported 3 traces" in skipped.stdout and "skipped line 4:" in skipped.output


def test_cli_corrupt_db_is_a_clear_error(tmp_path: Path) -> None:
    bad_db = tmp_path / "bad.db"
    bad_db.write_bytes(b"not sqlite at all" * 100)
    result = CliRunner().invoke(tasks, ["--db", str(bad_db)])
    assert result.exit_code == 1
    assert "not a usable SQLite database" in result.output and "Traceback" not in result.output


def test_export_python_api_filters_by_source(db_path: Path, tmp_path: Path) -> None:
    with TraceStore(db_path) as store:
        store.append_many([make_trace("t", "a", "x"), make_trace("t", "b", "y", source="surrogate")])
        with open(tmp_path / "s.jsonl", "w", encoding="utf-8") as fh:
            assert export_jsonl(store, "t", fh, source="surrogate") == 1
    (record,) = [json.loads(line) for line in (tmp_path / "s.jsonl").open()]
    assert record["input"] == "b" and record["source"] == "surrogate" and record["id"] == 2

