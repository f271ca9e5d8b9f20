"""Task identity of one chain call: what the chat model sees besides the routed text.

The chain is searched once for its prompt template and chat model (through sequences,
bindings from `bind` / `bind_tools` / `with_structured_output`, parallel maps and
fallbacks). Each call's input is rendered by the prompt; the model, its answer-changing
parameters, the rendered messages, the output schema and the inputs the prompt does not
consume go to `tracer_core.identify`, the same function the LiteLLM integration uses, so
one prompt and model is one task version whichever integration made the call. Messages
that came from a message-list input (a `MessagesPlaceholder`, a `{"messages": [...]}`
input, `RunnableWithMessageHistory`'s history) before the routed message are conversation
history. A chain whose prompt or model cannot be found is described by its serialised
form plus every input besides the routed text.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage, HumanMessage, convert_to_messages
from langchain_core.prompt_values import PromptValue
from langchain_core.prompts import BasePromptTemplate, ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables import Runnable, RunnableBinding, RunnableLambda, RunnableParallel, RunnableSequence
from langchain_core.runnables.fallbacks import RunnableWithFallbacks
from langchain_core.runnables.history import RunnableWithMessageHistory
from langchain_core.utils.function_calling import convert_to_openai_function

from tracer_core import TaskIdentity, identify
from tracer_core.identity import ROUTED, SCHEMA_KEYS
from tracer_langchain.fingerprint import chain_description_hash
from tracer_langchain.text import is_message_list

IGNORED = "{tracer:ignored}"
"""The value an input declared irrelevant (`ignore_inputs=`) is rendered with."""
ORIGIN = "langchain"


@dataclass
class ChainParts:
    """The prompt template and chat model found in a chain, and the kwargs bound to the model."""

    prompt: BasePromptTemplate | None = None
    model: BaseChatModel | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    history: RunnableWithMessageHistory | None = None
    wrapped: Runnable | None = None
    """The chain inside `history` (whose output type the answers have)."""

    @property
    def model_kwargs(self) -> dict[str, Any]:
        """Bound kwargs the model call sees (LangSmith-only `ls_*` kwargs dropped)."""
        return {k: v for k, v in self.kwargs.items() if not k.startswith("ls_") and k != "structured_output_format"}

    @property
    def tool_name(self) -> str | None:
        """The name of the only bound tool (how a structured answer is returned), or None."""
        tools = self.kwargs.get("tools") or []
        if len(tools) != 1 or not isinstance(tools[0], Mapping):
            return None
        return (tools[0].get("function") or {}).get("name") or tools[0].get("name")

    @property
    def forced_tool(self) -> str | None:
        """The tool the model must call (`tool_choice` names it or forces the only tool), or None."""
        choice = self.kwargs.get("tool_choice")
        if choice is None or choice in ("auto", "none"):
            return None
        return self.tool_name


def find_parts(chain: Runnable) -> ChainParts:
    """Search `chain` for its first prompt template and chat model (outer bindings win over inner ones)."""
    parts = ChainParts()
    _walk(chain, parts, depth=0)
    return parts


def _walk(node: Any, parts: ChainParts, depth: int) -> None:
    if depth > 40 or parts.model is not None:
        return
    if isinstance(node, RunnableWithMessageHistory) and depth == 0:
        parts.history = node
    if isinstance(node, BasePromptTemplate):
        parts.prompt = parts.prompt or node
    elif isinstance(node, BaseChatModel):
        parts.model = node
    elif isinstance(node, RunnableBinding | RunnableWithMessageHistory):
        for key, value in node.kwargs.items():
            parts.kwargs.setdefault(key, value)
        _walk(node.bound, parts, depth + 1)
    elif isinstance(node, RunnableSequence):
        for step in node.steps:
            _walk(step, parts, depth + 1)
    elif isinstance(node, RunnableParallel):
        for step in node.steps__.values():
            _walk(step, parts, depth + 1)
    elif isinstance(node, RunnableWithFallbacks):
        _walk(node.runnable, parts, depth + 1)
    elif isinstance(node, RunnableLambda):  # e.g. RunnableWithMessageHistory's closure over the wrapped chain
        for dep in node.deps:
            if parts.history is not None and parts.wrapped is None:
                parts.wrapped = dep.bound if isinstance(dep, RunnableBinding) else dep
            _walk(dep, parts, depth + 1)
    elif hasattr(node, "runnable") and isinstance(node.runnable, Runnable):  # a nested with_tracer wrapper
        _walk(node.runnable, parts, depth + 1)


@dataclass
class CallView:
    """One call as the chat model would see it: what a surrogate answer's chat-model run shows."""

    messages: list[BaseMessage]
    invocation_params: dict[str, Any]
    ls_params: dict[str, Any]
    serialized: dict[str, Any] | None
    name: str


class ChainIdentity:
    """Computes the task identity of each call of one chain."""

    def __init__(
        self,
        chain: Runnable,
        *,
        input_key: str | None = None,
        ignore_inputs: Sequence[str] = (),
        pinned: str | None = None,
    ) -> None:
        self.chain = chain
        self.parts = find_parts(chain)
        self.input_key = input_key
        self.ignore_inputs = tuple(ignore_inputs)
        self.pinned = pinned
        self._chain_hash: str | None = None
        self._serialized: dict[str, Any] | None = None

    def of(self, value: Any, text: str, history: Sequence[BaseMessage] = ()) -> tuple[TaskIdentity, CallView]:
        """The identity of calling the chain with `value` (routed text `text`; `history` loaded by the caller)."""
        value = with_history(self.parts.history, value, history) if self.parts.history is not None else value
        model = self.parts.model
        if model is None or (rendered := self._render(value)) is None:  # described by the serialised chain
            return self._fallback(value, text)
        messages, from_inputs, consumed = rendered
        kwargs = self.parts.model_kwargs
        ls_params = dict(model._get_ls_params(**kwargs))
        invocation = model._get_invocation_params(**kwargs)
        routed = routed_index(messages, text)
        # turns that came from message-list inputs before the routed message (system instructions are prompt)
        history_turns = [i for i in sorted(from_inputs) if i < routed and messages[i].type != "system"]
        identity = identify(
            model=f"{ls_params.get('ls_provider') or type(model).__name__}/{ls_params.get('ls_model_name') or '?'}",
            messages=_placeheld(messages, text, routed),
            routed_text=text,
            params=invocation,
            schema=self._schema(kwargs),
            variables=self._variables(value, text, consumed),
            history=history_turns,
            origin=ORIGIN,
            pinned=self.pinned,
        )
        view = CallView(messages, _plain(invocation), ls_params, self.serialized, type(model).__name__)
        return unpinned_if_blocked(identity), view

    # -- rendering ------------------------------------------------------------------------
    def _render(self, value: Any) -> tuple[list[BaseMessage], set[int], set[str]] | None:
        """(messages, indices of messages that came from message-list inputs, input keys the prompt consumed)."""
        prompt = self.parts.prompt
        if prompt is None:
            messages = _as_messages(value)
            if messages is None:
                return None
            return messages, set(range(len(messages))), set()
        inputs = self._prompt_inputs(value, prompt)
        if inputs is None:
            return None
        consumed = set(prompt.input_variables) | set(getattr(prompt, "optional_variables", ()) or ())
        try:
            if isinstance(prompt, ChatPromptTemplate):
                messages, from_inputs = _render_chat(prompt, inputs)
            else:
                messages, from_inputs = prompt.invoke(inputs).to_messages(), set()
        except Exception:  # a missing variable or a template the chain itself would reject
            return None
        return messages, from_inputs, consumed

    def _prompt_inputs(self, value: Any, prompt: BasePromptTemplate) -> dict[str, Any] | None:
        if isinstance(value, Mapping):
            inputs = dict(value)
        elif len(prompt.input_variables) == 1:  # a prompt with one variable takes a bare value
            inputs = {prompt.input_variables[0]: value}
        else:
            return None
        for key in self.ignore_inputs:
            if key in inputs:
                inputs[key] = [] if is_message_list(inputs[key]) else IGNORED
        return inputs

    def _variables(self, value: Any, text: str, consumed: set[str]) -> dict[str, Any]:
        """The inputs the prompt does not consume: the chain may use them elsewhere."""
        if not isinstance(value, Mapping):
            return {}
        skip = consumed | set(self.ignore_inputs) | {self.routed_key(value, text)}
        return {str(k): _plain(v) for k, v in value.items() if k not in skip}

    def routed_key(self, value: Mapping, text: str) -> Any:
        """The input field holding the routed text (`input_key`, else the field whose value is the text)."""
        if self.input_key is not None:
            return self.input_key
        return next((k for k, v in value.items() if isinstance(v, str) and v.strip() == text.strip()), None)

    @staticmethod
    def _schema(kwargs: Mapping[str, Any]) -> dict[str, Any]:
        schema = {k: kwargs[k] for k in SCHEMA_KEYS if kwargs.get(k) is not None}
        if "response_format" in schema:
            schema["response_format"] = response_format_of(schema["response_format"])
        return _plain(schema)

    # -- fallback -------------------------------------------------------------------------
    def _fallback(self, value: Any, text: str) -> tuple[TaskIdentity, CallView]:
        """The serialised chain plus every non-routed input; the input's own messages if it has any."""
        messages = _as_messages(value) or _messages_inside(value) or [HumanMessage(text)]
        routed = routed_index(messages, text)
        history_turns = [i for i, m in enumerate(messages) if i < routed and m.type != "system"]
        variables: dict[str, Any] = {"chain": self.chain_hash}
        if isinstance(value, Mapping):
            skip = set(self.ignore_inputs) | {self.routed_key(value, text)}
            variables.update({str(k): _plain(v) for k, v in value.items() if k not in skip and not is_message_list(v)})
        identity = identify(
            model="langchain/" + self.chain.get_name(), messages=[(m.type, m.content) for m in messages],
            routed_text=text, variables=variables, history=history_turns, origin=ORIGIN, pinned=self.pinned,
        )
        return unpinned_if_blocked(identity), CallView(messages, {}, {}, None, "tracer-surrogate")

    @property
    def chain_hash(self) -> str:
        if self._chain_hash is None:
            self._chain_hash = chain_description_hash(self.chain)
        return self._chain_hash

    @property
    def serialized(self) -> dict[str, Any] | None:
        """The chat model's serialised form, as chat-model runs report it."""
        if self._serialized is None and self.parts.model is not None:
            try:
                self._serialized = dict(self.parts.model.to_json())  # a TypedDict of the serialised form
            except Exception:
                self._serialized = {}
        return self._serialized or None


def unpinned_if_blocked(identity: TaskIdentity) -> TaskIdentity:
    """A call no surrogate may answer (history, non-text) keeps its own version even under a pin,
    so its answers never train the pinned one."""
    return dataclasses.replace(identity, pinned=None) if identity.pinned and identity.blocked else identity


def with_history(runnable: RunnableWithMessageHistory, value: Any, history: Sequence[BaseMessage]) -> Any:
    """The input the wrapped chain receives from `RunnableWithMessageHistory` once `history` is loaded."""
    history = list(history)
    if runnable.history_messages_key:
        return {**value, runnable.history_messages_key: history}
    if runnable.input_messages_key:
        current = _as_messages(value[runnable.input_messages_key]) or []
        return {**value, runnable.input_messages_key: history + current}
    current = _as_messages(value) or _messages_inside(value) or []
    return history + current


def routed_index(messages: Sequence[BaseMessage], text: str) -> int:
    """The last human message holding `text` (else the last human message), or -1."""
    humans = [i for i, m in enumerate(messages) if m.type == "human"]
    for index in reversed(humans):
        if text and text in _text(messages[index]):
            return index
    return humans[-1] if humans else -1


def _placeheld(messages: Sequence[BaseMessage], text: str, routed: int) -> list[tuple[str, Any]]:
    """(role, content) pairs; when no human message holds the routed text (a prompt that puts it in the
    system message), it is replaced by the placeholder where it is, so the version is not one per input."""
    pairs = [(m.type, m.content) for m in messages]
    if routed >= 0 and text and text in _text(messages[routed]):
        return pairs
    return [(role, content.replace(text, ROUTED) if text and isinstance(content, str) else content)
            for role, content in pairs]


def response_format_of(value: Any) -> Any:
    """A `with_structured_output` response format (a class or schema) as the request sends it."""
    if isinstance(value, Mapping) and ("json_schema" in value or value.get("type") in ("json_object", "text")):
        return value
    try:
        function = convert_to_openai_function(value)
    except Exception:
        return _plain(value)
    function["schema"] = function.pop("parameters", {})
    return {"type": "json_schema", "json_schema": function}


def _render_chat(prompt: ChatPromptTemplate, inputs: dict[str, Any]) -> tuple[list[BaseMessage], set[int]]:
    """Render a chat prompt message by message, noting which messages came from placeholders."""
    partials = {k: v() if callable(v) else v for k, v in prompt.partial_variables.items()}
    kwargs = {**partials, **inputs}
    messages: list[BaseMessage] = []
    from_inputs: set[int] = set()
    for template in prompt.messages:
        if isinstance(template, BaseMessage):
            rendered = [template]
        else:
            rendered = template.format_messages(**kwargs)
        if isinstance(template, MessagesPlaceholder):
            from_inputs.update(range(len(messages), len(messages) + len(rendered)))
        messages.extend(rendered)
    return messages, from_inputs


def _as_messages(value: Any) -> list[BaseMessage] | None:
    """The messages of a chat-model input (a string, a PromptValue, a message or a list of messages)."""
    if isinstance(value, str):
        return [HumanMessage(value)]
    if isinstance(value, PromptValue):
        return value.to_messages()
    if isinstance(value, BaseMessage):
        return [value]
    if is_message_list(value):
        try:
            return convert_to_messages(value)
        except Exception:
            return None
    return None


def _messages_inside(value: Any) -> list[BaseMessage] | None:
    """The message list of a dict input with one such field (e.g. `{"messages": [...]}`)."""
    if not isinstance(value, Mapping):
        return None
    lists = [v for v in value.values() if is_message_list(v)]
    return _as_messages(lists[0]) if len(lists) == 1 else None


def _text(message: BaseMessage) -> str:
    return message.text if isinstance(message.text, str) else str(message.text)


def _plain(value: Any) -> Any:
    """JSON-native data for a stored description (messages as (role, content); other objects as str)."""
    if isinstance(value, BaseMessage):
        return [value.type, _plain(value.content)]
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    return json.loads(json.dumps(value, default=lambda v: _plain(v) if isinstance(v, BaseMessage | type) else str(v)))
