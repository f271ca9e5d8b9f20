"""One label encoding for every integration: text answers stripped, structured answers as canonical JSON."""

from __future__ import annotations

import json
from typing import Any

from tracer_core.errors import InvalidTraceError


def canonical_json(value: Any) -> str:
    """Compact, key-sorted JSON of JSON-native data; InvalidTraceError if it is not JSON-native."""
    try:
        return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidTraceError(f"answer is not plain JSON data: {exc}") from None


def text_label(text: str) -> str:
    """The label of a text answer."""
    return text.strip()


def structured_label(value: Any) -> str:
    """The label of a structured answer (tool arguments, JSON output): canonical JSON.

    A JSON string (as tool-call arguments arrive from an API) is parsed first, so
    `{"label": "x"}` and `{"label":"x"}` are one label.
    """
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return text_label(value)
    return canonical_json(value)
