"""What a LiteLLM chat call asks: its task, its task fingerprint and the text to classify.

The same function reads the keyword arguments of a call (before it runs) and LiteLLM's
`model_call_details` (when it is logged), so both sides name the same task.
The fingerprint covers the model, the system/developer messages, the few-shot turns
before the last user message and the output schema (`response_format`, tools, tool_choice):
a new prompt or model is a new task.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import litellm

SCHEMA_KEYS = ("response_format", "tools", "tool_choice", "functions", "function_call")
INSTRUCTION_ROLES = ("system", "developer")


@dataclass(frozen=True)
class CallInfo:
    """One chat call as tracer sees it.

    routable: the call may be answered by the surrogate (single question to a fixed prompt);
    reason says why not when it is False.
    tool_name: the function the call forces, whose arguments carry the label.
    """

    task: str
    fingerprint: str
    text: str
    model: str
    routable: bool
    reason: str = ""
    tool_name: str | None = None


def describe_call(kwargs: Mapping[str, Any], fixed_task: str | None = None) -> CallInfo | None:
    """The CallInfo of a chat call, or None when it has no user text to classify."""
    messages = kwargs.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    metadata = call_metadata(kwargs)
    last_user = _last_user_index(messages)
    override = metadata.get("tracer_input")
    text = override if isinstance(override, str) else (message_text(messages[last_user]) if last_user >= 0 else "")
    if not text.strip():
        return None
    model = canonical_model(kwargs)
    schema = {key: kwargs.get(key, _optional_param(kwargs, key)) for key in SCHEMA_KEYS}
    schema = {key: value for key, value in schema.items() if value is not None}
    instructions = [
        [m.get("role"), message_text(m)] for m in messages if isinstance(m, Mapping) and m.get("role") in INSTRUCTION_ROLES
    ]
    history = [
        m for m in messages[: max(last_user, 0)] if isinstance(m, Mapping) and m.get("role") not in INSTRUCTION_ROLES
    ]
    few_shot = [[m.get("role"), message_text(m)] for m in history]
    fingerprint = _hash({"model": model, "instructions": instructions, "few_shot": few_shot, "schema": schema})
    explicit = metadata.get("tracer_task")
    task = explicit if isinstance(explicit, str) and explicit.strip() else fixed_task or f"litellm-{fingerprint[:12]}"
    routable, reason = _routability(messages, last_user, history)
    return CallInfo(
        task=task,
        fingerprint=fingerprint,
        text=text,
        model=model,
        routable=routable,
        reason=reason,
        tool_name=forced_tool_name(schema.get("tool_choice"), schema.get("tools")),
    )


def call_metadata(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The caller's metadata: `metadata=` of the SDK, or what the proxy and Router keep of it."""
    merged: dict[str, Any] = {}
    litellm_params = kwargs.get("litellm_params")
    candidates = [kwargs.get("litellm_metadata"), kwargs.get("metadata")]
    if isinstance(litellm_params, Mapping):
        candidates.insert(0, litellm_params.get("metadata"))
    for candidate in candidates:
        if isinstance(candidate, Mapping):
            requester = candidate.get("requester_metadata")
            if isinstance(requester, Mapping):
                merged.update(requester)
            merged.update(candidate)
    return merged


def message_text(message: Any) -> str:
    """The text of a chat message: string content, or its text parts joined by newlines."""
    if not isinstance(message, Mapping):
        return ""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, Mapping) and p.get("type", "text") == "text"]
        return "\n".join(p for p in parts if isinstance(p, str))
    return ""


def canonical_model(kwargs: Mapping[str, Any]) -> str:
    """`provider/model`, the same whether LiteLLM has already split off the provider or not."""
    model = str(kwargs.get("model") or "")
    provider = kwargs.get("custom_llm_provider")
    try:
        name, provider, _, _ = litellm.get_llm_provider(
            model=model, custom_llm_provider=provider if isinstance(provider, str) else None
        )
    except Exception:
        return model
    return f"{provider}/{name}"


def forced_tool_name(tool_choice: Any, tools: Any) -> str | None:
    """The function a call forces (tool_choice naming one, or "required" with a single tool)."""
    if isinstance(tool_choice, Mapping):
        function = tool_choice.get("function")
        name = function.get("name") if isinstance(function, Mapping) else tool_choice.get("name")
        return name if isinstance(name, str) else None
    if tool_choice == "required" and isinstance(tools, list) and len(tools) == 1:
        function = tools[0].get("function") if isinstance(tools[0], Mapping) else None
        name = function.get("name") if isinstance(function, Mapping) else None
        return name if isinstance(name, str) else None
    return None


def _routability(messages: list, last_user: int, history: list) -> tuple[bool, str]:
    """Only a question to a fixed prompt may be short-circuited.

    Earlier user/assistant turns are part of the fingerprint (few-shot examples), so a
    conversation with a new history is a task without a certified policy; tool results,
    tool calls and calls not ending with the user's message are never routed at all.
    """
    if last_user < 0:
        return False, "no_user_message"
    if last_user != len(messages) - 1:
        return False, "not_ending_with_user_message"
    if any(m.get("role") in ("tool", "function") or m.get("tool_calls") or m.get("function_call") for m in history):
        return False, "tool_conversation"
    return True, ""


def _last_user_index(messages: list) -> int:
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if isinstance(message, Mapping) and message.get("role") == "user":
            return index
    return -1


def _optional_param(kwargs: Mapping[str, Any], key: str) -> Any:
    optional = kwargs.get("optional_params")
    return optional.get(key) if isinstance(optional, Mapping) else None


def _hash(description: Any) -> str:
    data = json.dumps(description, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(data.encode("utf-8")).hexdigest()[:16]
