"""Labels in and out of LiteLLM responses.

A label is the assistant's text (stripped), or, when the call forces a function, that
function's arguments as canonical JSON. The surrogate's answer is built the same way,
as a fresh `ModelResponse` with zero usage (so zero cost), marked in `_hidden_params`.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from litellm.types.utils import ChatCompletionMessageToolCall, Choices, Function, Message, ModelResponse, Usage

from tracer_litellm.request import CallInfo

HIDDEN_MARK = "tracer_surrogate"


def label_from_response(response: Any, tool_name: str | None = None) -> str | None:
    """The label a completed response carries, or None when it carries none."""
    choices = getattr(response, "choices", None)
    if not choices:
        return None
    message = getattr(choices[0], "message", None)
    if message is None:
        return None
    tool_calls = getattr(message, "tool_calls", None) or []
    if tool_name is not None and tool_calls:
        call = next((c for c in tool_calls if c.function.name == tool_name), None)
        return _canonical_json(call.function.arguments) if call is not None else None
    content = getattr(message, "content", None)
    if isinstance(content, str) and content.strip():
        return content.strip()
    return None


def surrogate_response(label: str, info: CallInfo, *, score: float, policy_version: int | None) -> ModelResponse:
    """A complete chat response answering `label`, as the teacher would have been read."""
    if info.tool_name is not None:
        message = Message(
            role="assistant",
            content=None,
            tool_calls=[
                ChatCompletionMessageToolCall(
                    id=f"call_{uuid.uuid4().hex[:24]}",
                    type="function",
                    function=Function(name=info.tool_name, arguments=label),
                )
            ],
        )
        finish_reason = "tool_calls"
    else:
        message = Message(role="assistant", content=label)
        finish_reason = "stop"
    response = ModelResponse(
        id=f"chatcmpl-tracer-{uuid.uuid4().hex}",
        created=int(time.time()),
        model=info.model,
        object="chat.completion",
        choices=[Choices(index=0, message=message, finish_reason=finish_reason)],
        usage=Usage(prompt_tokens=0, completion_tokens=0, total_tokens=0),
    )
    response._hidden_params[HIDDEN_MARK] = {"score": score, "policy_version": policy_version, "task": info.task}
    return response


def is_surrogate_response(response: Any) -> bool:
    """True when the response was built by `surrogate_response`."""
    hidden = getattr(response, "_hidden_params", None)
    return isinstance(hidden, dict) and HIDDEN_MARK in hidden


def _canonical_json(arguments: str) -> str:
    try:
        return json.dumps(json.loads(arguments), sort_keys=True, ensure_ascii=False)
    except (TypeError, ValueError):
        return arguments.strip()
