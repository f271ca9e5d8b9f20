"""JSONL import/export of traces.

Import accepts one JSON object per line, either the reference TRACER format
`{"input": ..., "teacher": ...}` or `{"input": ..., "label": ...}`; optional keys are `id`
(kept as metadata "import_id"), `metadata`, and the Trace fields `source`, `fingerprint`,
`model`, `latency_ms`, `prompt_tokens`, `completion_tokens`, `cost_usd`, `created_at`.
Other keys are kept in metadata. Integer labels are read as their decimal string.
Export writes `{"id", "input", "label", ...}` lines that import reads back.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import IO, Any

from tracer_core.errors import ImportFormatError, InvalidTraceError
from tracer_core.storage.store import TraceStore
from tracer_core.storage.trace import Trace, make_trace

OPTIONAL_FIELDS = (
    "source", "fingerprint", "model", "latency_ms", "prompt_tokens", "completion_tokens",
    "cost_usd", "created_at",
)
MAX_REPORTED_ERRORS = 20


@dataclass
class ImportResult:
    """What an import stored and which lines it skipped (line number, reason)."""

    imported: int
    skipped: list[tuple[int, str]] = field(default_factory=list)


def import_jsonl(
    store: TraceStore, path: str | os.PathLike, task: str, skip_bad: bool = False
) -> ImportResult:
    """Import a JSONL file into `task` in one transaction.

    Any bad line aborts the whole import with ImportFormatError listing the bad line
    numbers, unless `skip_bad` is set, in which case bad lines are skipped and reported.
    """
    traces: list[Trace] = []
    bad: list[tuple[int, str]] = []
    try:
        with open(path, "rb") as fh:
            for number, raw in enumerate(fh, start=1):
                try:
                    trace = parse_line(raw, task)
                except InvalidTraceError as exc:
                    bad.append((number, str(exc)))
                    continue
                if trace is not None:
                    traces.append(trace)
    except OSError as exc:
        raise ImportFormatError(f"cannot read import file {str(path)!r}: {exc.strerror}") from None
    if bad and not skip_bad:
        raise ImportFormatError(_describe_bad_lines(path, bad))
    return ImportResult(imported=store.append_many(traces), skipped=bad)


def parse_line(raw: bytes, task: str) -> Trace | None:
    """One JSONL line -> a validated Trace (None for a blank line); InvalidTraceError if bad."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidTraceError(f"not valid UTF-8 (bad byte at position {exc.start})") from None
    if not text.strip():
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidTraceError(f"not valid JSON ({exc.msg})") from None
    if not isinstance(record, dict):
        raise InvalidTraceError(f"expected a JSON object, got {type(record).__name__}")
    return make_trace(task, _take_input(record), _take_label(record), **_take_fields(record, task))


def _take_input(record: dict) -> Any:
    if "input" not in record:
        raise InvalidTraceError('missing "input"')
    return record.pop("input")


def _take_label(record: dict) -> Any:
    label, teacher = record.pop("label", None), record.pop("teacher", None)
    if label is None and teacher is None:
        raise InvalidTraceError('missing "label" (or "teacher")')
    if label is not None and teacher is not None and label != teacher:
        raise InvalidTraceError(f'"label" {label!r} and "teacher" {teacher!r} disagree')
    value = label if label is not None else teacher
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def _take_fields(record: dict, task: str) -> dict:
    line_task = record.pop("task", task)
    if line_task != task:
        raise InvalidTraceError(f"task {line_task!r} does not match the import task {task!r}")
    metadata = record.pop("metadata", {})
    if not isinstance(metadata, dict):
        raise InvalidTraceError(f'"metadata" must be an object, got {type(metadata).__name__}')
    fields = {name: record.pop(name) for name in OPTIONAL_FIELDS if name in record}
    import_id = record.pop("id", None)
    if import_id is not None:
        metadata.setdefault("import_id", import_id)
    metadata.update({k: v for k, v in record.items() if k not in metadata})
    return {**fields, "metadata": metadata}


def _describe_bad_lines(path: str | os.PathLike, bad: list[tuple[int, str]]) -> str:
    numbers = ", ".join(str(n) for n, _ in bad[:MAX_REPORTED_ERRORS])
    more = f" and {len(bad) - MAX_REPORTED_ERRORS} more" if len(bad) > MAX_REPORTED_ERRORS else ""
    details = "\n".join(f"  line {n}: {reason}" for n, reason in bad[:MAX_REPORTED_ERRORS])
    return (
        f"{len(bad)} bad line(s) in {str(path)!r} (lines {numbers}{more}); nothing was imported "
        f"(use --skip-bad / skip_bad=True to import the good lines):\n{details}"
    )


def export_jsonl(store: TraceStore, task: str, fh: IO[str], *, source: str | None = None) -> int:
    """Write the traces of `task` (optionally one source) as JSONL to `fh`; returns the count.

    A snapshot: the highest trace id is read first, so traces written during the export are left out.
    """
    count = 0
    until_id = store.max_id(task, source=source)
    for trace in store.iter_traces(task, source=source, until_id=until_id):
        fh.write(json.dumps(trace_record(trace), ensure_ascii=False) + "\n")
        count += 1
    return count


def trace_record(trace: Trace) -> dict:
    """The export form of a trace: id, input, label, then the set optional fields and metadata."""
    record: dict[str, Any] = {"id": trace.id, "input": trace.input, "label": trace.label}
    for name in OPTIONAL_FIELDS:
        value = getattr(trace, name)
        if value is not None:
            record[name] = value
    record["metadata"] = trace.metadata
    return record
