"""What a LiteLLM chat call asks: its task identity, the text to classify, and whether a surrogate may answer.

The same function reads the keyword arguments of a call (before it runs) and LiteLLM's
`model_call_details` (when it is logged). The task version is `tracer_core.identify` of the
model, the messages, the answer-changing parameters and the output schema, as the LangChain
integration computes it, so one prompt is one task whichever integration sent it.

Earlier user/assistant turns are conversation history (one version for every conversation of
a prompt, recorded, never answered by the surrogate) unless the caller declares them a
few-shot prompt with `metadata={"tracer_few_shot": True}`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import litellm

from tracer_core import Reason, TaskIdentity, identify
from tracer_core.identity import ANSWER_PARAMS, SCHEMA_KEYS, auto_task
from tracer_litellm.settings import MODES

INSTRUCTION_ROLES = ("system", "developer")
TOOL_ROLES = ("tool", "function")


@dataclass(frozen=True)
class CallInfo:
    """One chat call as tracer sees it.

    blocked: why no surrogate may answer this call (None when it may).
    mode: the call's own `tracer_mode` ("on", "observe" or "off"); `bad_mode` keeps an unknown value.
    tool_name: the function the call forces, whose arguments carry the label.
    structured: the answer is JSON (a `response_format` of json_object/json_schema).
    named: the caller named the task; else `task` is the automatic name until the registry finds
    the version under the name another integration gave it (`tracer_core.serving.naming`).
    """

    task: str
    identity: TaskIdentity
    text: str
    model: str
    named: bool = True
    blocked: Reason | None = None
    mode: str = "on"
    bad_mode: str | None = None
    tool_name: str | None = None
    structured: bool = False

    @property
    def fingerprint(self) -> str:
        return self.identity.fingerprint


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
    history, tool_turns = _conversation_turns(messages, last_user, few_shot=metadata.get("tracer_few_shot") is True)
    schema = {key: _param(kwargs, key) for key in SCHEMA_KEYS}
    identity = identify(
        model=canonical_model(kwargs),
        messages=[(str(m.get("role")), m.get("content")) if isinstance(m, Mapping) else ("", "") for m in messages],
        routed_text=text,
        params={key: _param(kwargs, key) for key in ANSWER_PARAMS},
        schema=schema,
        history=history,
        origin="litellm",
    )
    explicit = metadata.get("tracer_task")
    named = explicit if isinstance(explicit, str) and explicit.strip() else fixed_task or None
    mode = metadata.get("tracer_mode", "on")
    bad_mode = None if mode in MODES else str(mode)
    if no_cache(kwargs) and mode == "on":
        mode = "observe"
    return CallInfo(
        task=named or auto_task(identity.fingerprint),
        identity=identity,
        named=named is not None,
        text=text,
        model=identity.model,
        blocked=_blocked(identity, tool_turns, _param(kwargs, "n")),
        mode="observe" if bad_mode else mode,
        bad_mode=bad_mode,
        tool_name=forced_tool_name(schema.get("tool_choice"), schema.get("tools")),
        structured=_wants_json(schema.get("response_format")),
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


def no_cache(kwargs: Mapping[str, Any]) -> bool:
    """`cache={"no-cache": True}`: the caller refuses a stored answer, so the surrogate does not answer."""
    cache = kwargs.get("cache")
    return isinstance(cache, Mapping) and cache.get("no-cache") is True


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


def _conversation_turns(messages: list, last_user: int, *, few_shot: bool) -> tuple[list[int], bool]:
    """Indices of conversation turns (left out of the identity) and whether any is a tool turn.

    Tool calls, tool results and anything after the routed user message are always turns of
    a conversation; earlier user/assistant messages are too unless the caller declared them
    few-shot examples of the prompt.
    """
    turns, tool_turns = [], False
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping) or index == last_user:
            continue
        role = message.get("role")
        if role in TOOL_ROLES or message.get("tool_calls") or message.get("function_call") or index > last_user:
            turns.append(index)
            tool_turns = True
        elif role not in INSTRUCTION_ROLES and not few_shot:
            turns.append(index)
    return turns, tool_turns


def _blocked(identity: TaskIdentity, tool_turns: bool, n: Any) -> Reason | None:
    if identity.non_text:
        return Reason.NON_TEXT_CONTENT
    if tool_turns:
        return Reason.NOT_ROUTABLE
    if identity.history:
        return Reason.CONVERSATION_HISTORY
    if isinstance(n, int) and not isinstance(n, bool) and n > 1:
        return Reason.MULTIPLE_CHOICES
    return None


def _wants_json(response_format: Any) -> bool:
    return isinstance(response_format, Mapping) and response_format.get("type") in ("json_object", "json_schema")


def _last_user_index(messages: list) -> int:
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if isinstance(message, Mapping) and message.get("role") == "user":
            return index
    return -1


def _param(kwargs: Mapping[str, Any], key: str) -> Any:
    """A request parameter, given directly or (in logged details) under optional_params."""
    value = kwargs.get(key)
    if value is not None:
        return value
    optional = kwargs.get("optional_params")
    return optional.get(key) if isinstance(optional, Mapping) else None
