"""Take the text to classify out of a chain input."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from langchain_core.messages import BaseMessage
from langchain_core.prompt_values import PromptValue

from tracer_langchain.errors import AmbiguousTextError, TextExtractionError

TextFn = Callable[[Any], str]
PREFERRED_KEYS = ("text", "input", "question", "query")
_HUMAN_ROLES = ("human", "user")


def extract_text(value: Any, *, text_fn: TextFn | None = None, input_key: str | None = None) -> str:
    """The text of `value`: `text_fn`, else `input_key`, else the defaults of `default_text`."""
    if text_fn is not None:
        text = text_fn(value)
        if not isinstance(text, str):
            raise TextExtractionError(f"text_fn must return a str, got {type(text).__name__}")
        return text
    if input_key is not None:
        if not isinstance(value, Mapping) or input_key not in value:
            raise TextExtractionError(f"input has no key {input_key!r} (input type {type(value).__name__})")
        return _as_text(value[input_key])
    return default_text(value)


def default_text(value: Any) -> str:
    """The routed text when neither `text_fn` nor `input_key` is given (docs/langchain.md, "The routed text").

    A str as is; a number or boolean as JSON; the last human message of a message, a message list
    or a PromptValue; a dict's `text`/`input`/`question`/`query` string, its only field's string or
    the last human message of its only field. Anything else raises `AmbiguousTextError`.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float)):
        return json.dumps(value)
    if isinstance(value, PromptValue):
        return last_human_text(value.to_messages())
    if isinstance(value, BaseMessage):
        return value.text
    if is_message_list(value):
        return last_human_text(value)
    if isinstance(value, Mapping):
        return _mapping_text(value)
    raise AmbiguousTextError(
        f"tracer cannot take the text to classify from a chain input of type {type(value).__name__}; "
        "pass with_tracer(..., text_fn=lambda value: ...) returning it"
    )


def last_human_text(messages: Sequence[Any]) -> str:
    """The text of the last human/user message (BaseMessage, (role, text) tuple or {"role", "content"} dict)."""
    for message in reversed(messages):
        role, text = _role_and_text(message)
        if role in _HUMAN_ROLES:
            return text
    raise TextExtractionError("message list has no human message to classify")


def _mapping_text(value: Mapping) -> str:
    for key in PREFERRED_KEYS:
        if isinstance(value.get(key), str):
            return value[key]
    if len(value) == 1:
        only = next(iter(value.values()))
        if isinstance(only, str):
            return only
        if is_message_list(only):
            return last_human_text(only)
    fields = ", ".join(repr(str(k)) for k in sorted(value, key=str)) or "none"
    raise AmbiguousTextError(
        f"tracer cannot tell which input field is the text to classify (fields: {fields}; it takes a "
        f"{'/'.join(PREFERRED_KEYS)} field or the only field); pass with_tracer(..., input_key=\"<field>\") "
        "naming it (the other fields become part of the task version) or text_fn="
    )


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return default_text(value)


def is_message_list(value: Any) -> bool:
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence) or not value:
        return False
    return all(_looks_like_message(m) for m in value)


def _looks_like_message(message: Any) -> bool:
    if isinstance(message, BaseMessage):
        return True
    if isinstance(message, tuple) and len(message) == 2 and all(isinstance(p, str) for p in message):
        return True
    return isinstance(message, Mapping) and "role" in message and "content" in message


def _role_and_text(message: Any) -> tuple[str, str]:
    if isinstance(message, BaseMessage):
        return message.type, message.text
    if isinstance(message, tuple):
        return message[0], message[1]
    content = message["content"]
    if isinstance(content, list):
        content = " ".join(p.get("text", "") for p in content if isinstance(p, Mapping))
    return str(message["role"]), str(content)
