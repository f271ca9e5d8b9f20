"""Task identity: what the LLM sees besides the routed text, as one canonical description and its hash.

Both integrations describe a call the same way: the model, the parameters that change
answers, the messages with the routed text replaced by a placeholder, the output schema
(response format, tools) and any other input the chain consumes outside the prompt. The
fingerprint of that description is the task version: a certificate earned on one version
says nothing about another, so a call with another prompt variable, model or schema finds
no policy and goes to the LLM. Conversation history is not part of the description (that
would make one task per conversation); a call that carries history gets a version of its
own with `history=True`, recorded like any other but never answered by a surrogate.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from tracer_core.decision import Reason
from tracer_core.labels import canonical_json

PREFIX = 8  # fingerprint characters shown to people
ROUTED = "{tracer:input}"
"""Stands where the routed text was in the prompt."""

ANSWER_PARAMS = (
    "temperature", "top_p", "top_k", "seed", "max_tokens", "max_completion_tokens", "stop",
    "presence_penalty", "frequency_penalty", "logit_bias", "reasoning_effort", "n",
)
"""Call parameters that change what the model answers (transport settings never count)."""

SCHEMA_KEYS = ("response_format", "tools", "tool_choice", "functions", "function_call")
_ROLES = {"human": "user", "ai": "assistant", "chat": "user"}
_DEFAULTS = {"n": 1}


@dataclass(frozen=True)
class TaskIdentity:
    """The canonical description of a task version; `fingerprint` is its hash (or the user's pin)."""

    model: str
    messages: tuple[tuple[str, str], ...]
    params: Mapping[str, Any] = field(default_factory=dict)
    schema: Mapping[str, Any] = field(default_factory=dict)
    variables: Mapping[str, Any] = field(default_factory=dict)
    history: bool = False
    non_text: bool = False
    origin: str = ""
    pinned: str | None = None

    def description(self) -> dict[str, Any]:
        """Everything that defines the version (not where it was computed)."""
        data = asdict(self)
        data["messages"] = [list(m) for m in self.messages]
        for key in ("origin", "pinned"):
            data.pop(key)
        return data

    @property
    def fingerprint(self) -> str:
        if self.pinned:
            return self.pinned
        return hashlib.sha256(canonical_json(self.description()).encode("utf-8")).hexdigest()[:16]

    @property
    def blocked(self) -> Reason | None:
        """Why no surrogate may answer calls of this version, or None."""
        if self.non_text:
            return Reason.NON_TEXT_CONTENT
        if self.history:
            return Reason.CONVERSATION_HISTORY
        return None


def identify(
    *,
    model: str,
    messages: Sequence[tuple[str, Any]],
    routed_text: str,
    params: Mapping[str, Any] | None = None,
    schema: Mapping[str, Any] | None = None,
    variables: Mapping[str, Any] | None = None,
    history: Iterable[int] = (),
    origin: str = "",
    pinned: str | None = None,
) -> TaskIdentity:
    """The identity of one call.

    `messages` are (role, content) pairs as sent to the model (content a string or a list of
    content parts); the last user message holding `routed_text` is the routed message, and
    the text is replaced there by a placeholder. `history` lists indices of messages that
    are conversation turns rather than part of the prompt: they are left out and the
    identity is marked `history=True`.
    """
    dropped = set(history)
    normalised = [(_role(role), *_content(content)) for role, content in messages]
    non_text = any(flag for _, _, flag in normalised)
    routed = _routed_index(normalised, routed_text, dropped)
    kept: list[tuple[str, str]] = []
    for index, (role, text, _) in enumerate(normalised):
        if index in dropped:
            continue
        if index == routed:
            text = text.replace(routed_text, ROUTED) if routed_text and routed_text in text else ROUTED
        kept.append((role, text))
    return TaskIdentity(
        model=model,
        messages=tuple(kept),
        params=canonical_params(params or {}),
        schema=_canonical_schema(schema or {}),
        variables=dict(sorted((variables or {}).items())),
        history=bool(dropped),
        non_text=non_text,
        origin=origin,
        pinned=pinned,
    )


def canonical_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The answer-changing parameters, with provider defaults and unset values left out."""
    out: dict[str, Any] = {}
    for key in ANSWER_PARAMS:
        value = params.get(key)
        if value is None or _DEFAULTS.get(key) == value:
            continue
        if key == "max_completion_tokens":
            key = "max_tokens"
        if key == "stop" and isinstance(value, str):
            value = [value]
        if isinstance(value, float) and math.isfinite(value) and value == int(value) and key != "temperature":
            value = int(value)
        if key in ("temperature", "top_p", "presence_penalty", "frequency_penalty") and isinstance(value, int | float):
            value = float(value)
        out[key] = value
    return out


def describe_identity(description: Mapping[str, Any]) -> str:
    """One line a person can read about a stored version description."""
    messages = description.get("messages") or []
    prompt = [m for m in messages if len(m) == 2 and m[1] != ROUTED]
    parts = [str(description.get("model") or "?")]
    if prompt:
        parts.append(f"{len(prompt)} prompt message(s)")
    if description.get("params"):
        parts.append(", ".join(f"{k}={v}" for k, v in description["params"].items()))
    if description.get("schema"):
        parts.append("schema: " + ", ".join(description["schema"]))
    if description.get("variables"):
        parts.append("variables: " + ", ".join(f"{k}={_short(v)}" for k, v in description["variables"].items()))
    if description.get("history"):
        parts.append("with conversation history (never routed)")
    if description.get("non_text"):
        parts.append("with non-text content (never routed)")
    return "; ".join(parts)


def _short(value: Any, limit: int = 30) -> str:
    text = value if isinstance(value, str) else canonical_json(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _role(role: Any) -> str:
    role = str(role)
    return _ROLES.get(role, role)


def _content(content: Any) -> tuple[str, bool]:
    """(text, has non-text parts) of a message content: a string or a list of content parts."""
    if content is None:
        return "", False
    if isinstance(content, str):
        return content, False
    if isinstance(content, Sequence):
        texts, other = [], False
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, Mapping) and part.get("type", "text") == "text":
                texts.append(str(part.get("text", "")))
            else:
                other = True
        return "\n".join(texts), other
    return str(content), False


def _routed_index(messages: list[tuple[str, str, bool]], routed_text: str, dropped: set[int]) -> int:
    users = [i for i, (role, _, _) in enumerate(messages) if role == "user" and i not in dropped]
    for index in reversed(users):
        if routed_text and routed_text in messages[index][1]:
            return index
    return users[-1] if users else -1


def _canonical_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key in SCHEMA_KEYS:
        value = schema.get(key)
        if value is not None:
            out[key] = json.loads(json.dumps(value, sort_keys=True, default=str))
    return out


AUTO_TASK_PREFIX = "litellm-"


def auto_task(fingerprint: str) -> str:
    """The name a version gets when its first call names no task (a LiteLLM call without `tracer_task`)."""
    return f"{AUTO_TASK_PREFIX}{fingerprint[:12]}"


def label(version: Mapping[str, Any]) -> str:
    """`1a2b3c4d` (or `(unversioned)`) for a version row: the fingerprint prefix people see."""
    return str(version["fingerprint"])[:PREFIX] or "(unversioned)"
