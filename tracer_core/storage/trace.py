"""The Trace record (one LLM classification call) and its validation."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

from tracer_core.errors import InvalidTraceError

# teacher: an LLM answer, training and calibration evidence; surrogate: a surrogate answer; cached and unparsed:
# recorded calls that are never evidence for a fit (audits among them still count for the monitor); audit: a
# source of the first release, unused since.
CACHED = "cached"  # an LLM answer replayed from the caller's own cache: it repeats an answer already recorded
UNPARSED = "unparsed"  # an LLM answer that carries no label; stored with UNPARSED_LABEL
SOURCES = ("teacher", "surrogate", "audit", CACHED, UNPARSED)
UNPARSED_LABEL = "(unparsed answer)"
MAX_INPUT_CHARS = 100_000
MAX_LABEL_CHARS = 1_000


@dataclass
class Trace:
    """One (input, label) pair with where the label came from and what it cost."""

    task: str
    input: str
    label: str
    source: str = "teacher"
    fingerprint: str = ""
    model: str | None = None
    latency_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost_usd: float | None = None
    created_at: float = field(default_factory=time.time)
    metadata: dict = field(default_factory=dict)
    route: str | None = None  # the Reason of the routing decision, None when recorded without one
    policy_version: int | None = None  # the policy in force when the call was routed
    predicted: str | None = None  # what that policy answered or would have answered
    score: float | None = None  # its confidence
    id: int | None = None


def make_trace(task: str, input: str | bytes, label: str, **fields: Any) -> Trace:
    """Build a validated, normalised Trace; raises InvalidTraceError naming the bad field."""
    try:
        trace = Trace(task=task, input=input, label=label, **fields)  # type: ignore[arg-type]
    except TypeError as exc:
        raise InvalidTraceError(f"invalid trace field: {exc}") from None
    return validate(trace)


def validate(trace: Trace) -> Trace:
    """Check every field of `trace`, normalising in place (bytes input -> str, label stripped)."""
    if not isinstance(trace, Trace):
        raise InvalidTraceError(f"expected a Trace, got {type(trace).__name__}")
    _check_text("task", trace.task, max_chars=MAX_LABEL_CHARS)
    trace.input = normalise_input(trace.input)
    trace.label = _normalise_label(trace.label)
    if trace.source not in SOURCES:
        raise InvalidTraceError(f"source must be one of {', '.join(SOURCES)}; got {trace.source!r}")
    if not isinstance(trace.fingerprint, str):
        raise InvalidTraceError(f"fingerprint must be a string, got {type(trace.fingerprint).__name__}")
    if trace.model is not None and not isinstance(trace.model, str):
        raise InvalidTraceError(f"model must be a string or None, got {type(trace.model).__name__}")
    for name in ("latency_ms", "cost_usd"):
        _check_number(name, getattr(trace, name), allow_none=True)
    for name in ("prompt_tokens", "completion_tokens"):
        _check_count(name, getattr(trace, name))
    _check_number("created_at", trace.created_at, allow_none=False)
    _check_metadata(trace.metadata)
    _check_routing(trace)
    return trace


def check_task(task: object) -> str:
    """A task name as stored: a non-empty string within the label size limit."""
    _check_text("task", task, max_chars=MAX_LABEL_CHARS)
    return task  # type: ignore[return-value]


def as_list(name: str, values: object) -> list:
    """`values` (any iterable, not a single string) as a list; InvalidTraceError otherwise."""
    if isinstance(values, (str, bytes, bytearray)):
        raise InvalidTraceError(f"{name} must be an iterable of strings, not a single {type(values).__name__}")
    try:
        return list(values)  # type: ignore[call-overload]
    except TypeError:
        raise InvalidTraceError(f"{name} must be an iterable of strings, got {type(values).__name__}") from None


def normalise_input(value: object) -> str:
    """An input text as stored and routed: UTF-8 bytes decoded, non-empty, within the size limit."""
    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidTraceError(
                f"input is not valid UTF-8 (bad byte at position {exc.start})"
            ) from None
    if not isinstance(value, str):
        raise InvalidTraceError(f"input must be a string or UTF-8 bytes, got {type(value).__name__}")
    if not value.strip():
        raise InvalidTraceError("input is empty")
    if len(value) > MAX_INPUT_CHARS:
        raise InvalidTraceError(
            f"input is too large: {len(value):,} characters; the limit is {MAX_INPUT_CHARS:,}"
        )
    _check_encodable("input", value)
    return value


def is_label(value: object) -> bool:
    """Whether `value` can be stored as a label (a non-empty string within the size and encoding limits)."""
    try:
        _normalise_label(value)
    except InvalidTraceError:
        return False
    return True


def _normalise_label(value: object) -> str:
    if not isinstance(value, str):
        raise InvalidTraceError(f"label must be a string, got {type(value).__name__} {value!r:.80}")
    label = value.strip()
    if not label:
        raise InvalidTraceError("label is empty")
    if len(label) > MAX_LABEL_CHARS:
        raise InvalidTraceError(
            f"label is too long: {len(label):,} characters; the limit is {MAX_LABEL_CHARS:,}"
        )
    _check_encodable("label", label)
    return label


def _check_text(name: str, value: object, *, max_chars: int) -> None:
    if not isinstance(value, str):
        raise InvalidTraceError(f"{name} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise InvalidTraceError(f"{name} is empty")
    if len(value) > max_chars:
        raise InvalidTraceError(f"{name} is too long: {len(value):,} characters; the limit is {max_chars:,}")
    _check_encodable(name, value)


def _check_encodable(name: str, value: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidTraceError(
            f"{name} is not valid UTF-8 text (unpaired surrogate at position {exc.start})"
        ) from None
    if "\x00" in value:  # PostgreSQL text cannot hold it; refused on every backend alike
        raise InvalidTraceError(f"{name} contains a NUL character at position {value.index(chr(0))}")


def _check_number(name: str, value: object, *, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidTraceError(f"{name} must be a finite number, got {value!r:.80}")
    if value < 0:
        raise InvalidTraceError(f"{name} must not be negative, got {value!r}")


def _check_count(name: str, value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidTraceError(f"{name} must be a non-negative integer, got {value!r:.80}")


def _check_routing(trace: Trace) -> None:
    if trace.route is not None:
        _check_text("route", trace.route, max_chars=100)
    _check_count("policy_version", trace.policy_version)
    if trace.predicted is not None:
        _check_text("predicted", trace.predicted, max_chars=MAX_LABEL_CHARS)
    if trace.score is not None and (
        isinstance(trace.score, bool) or not isinstance(trace.score, (int, float)) or not math.isfinite(trace.score)
    ):
        raise InvalidTraceError(f"score must be a finite number or None, got {trace.score!r:.80}")


def _check_metadata(value: object) -> None:
    if not isinstance(value, dict):
        raise InvalidTraceError(f"metadata must be a dict, got {type(value).__name__}")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidTraceError(f"metadata is not JSON-serialisable: {exc}") from None
