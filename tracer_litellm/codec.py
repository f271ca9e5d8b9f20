"""Labels in and out of LiteLLM responses, and the decision every response carries.

A label is the assistant's text (`tracer_core.text_label`), or, when the call forces a
function or asks for JSON, the function's arguments or the JSON answer as
`tracer_core.structured_label` (the encoding the LangChain integration stores too).
The surrogate's answer is a fresh `ModelResponse` with zero usage, flagged as a cache hit
at no charge, so other loggers and cost tracking see it as one.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from litellm.litellm_core_utils.streaming_handler import CustomStreamWrapper
from litellm.types.utils import ChatCompletionMessageToolCall, Choices, Function, Message, ModelResponse, Usage

from tracer_core import Decision, structured_label, text_label
from tracer_litellm.request import CallInfo

HIDDEN_KEY = "tracer"
"""Key in a response's `_hidden_params` with the decision: handled, reason, policy_version, task, fingerprint."""
CACHED_STREAM = "cached_response"


def label_from_response(response: Any, info: CallInfo) -> str | None:
    """The label a completed response carries, or None when it carries none."""
    choices = getattr(response, "choices", None)
    if not choices:
        return None
    message = getattr(choices[0], "message", None)
    if message is None:
        return None
    tool_calls = getattr(message, "tool_calls", None) or []
    if info.tool_name is not None and tool_calls:
        call = next((c for c in tool_calls if c.function.name == info.tool_name), None)
        return structured_label(call.function.arguments) if call is not None else None
    content = getattr(message, "content", None)
    if not isinstance(content, str) or not content.strip():
        return None
    return structured_label(content) if info.structured else text_label(content)


def surrogate_response(label: str, info: CallInfo, decision: Decision) -> ModelResponse:
    """A complete chat response answering `label`, as the teacher's answer would have been read."""
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
    mark_response(response, info, decision)
    return response


def decision_view(info: CallInfo, decision: Decision) -> dict[str, Any]:
    """What a response says about tracer's decision (plain data)."""
    return {
        "handled": bool(decision.handled),
        "reason": str(decision.reason),
        "policy_version": decision.policy_version,
        "task": info.task,
        "fingerprint": info.fingerprint,
    }


def mark_response(response: Any, info: CallInfo, decision: Decision) -> None:
    """Put the decision in `response._hidden_params`; a surrogate answer is also a free cache hit."""
    hidden = getattr(response, "_hidden_params", None)
    if not isinstance(hidden, dict):
        return
    hidden[HIDDEN_KEY] = decision_view(info, decision)
    if decision.handled:
        hidden.update(cache_hit=True, response_cost=0.0)
        if isinstance(response, CustomStreamWrapper):
            response.custom_llm_provider = CACHED_STREAM  # how LiteLLM's own cache replays a stream: logged as a hit


def is_surrogate_response(response: Any) -> bool:
    """True when the response is a surrogate answer made by `surrogate_response`."""
    hidden = getattr(response, "_hidden_params", None)
    view = hidden.get(HIDDEN_KEY) if isinstance(hidden, dict) else None
    return isinstance(view, dict) and view.get("handled") is True


def response_decision(response: Any) -> dict[str, Any] | None:
    """The decision a response carries, if tracer saw the call."""
    hidden = getattr(response, "_hidden_params", None)
    view = hidden.get(HIDDEN_KEY) if isinstance(hidden, dict) else None
    return view if isinstance(view, dict) else None
