"""Output codecs: turn a chain's answer into a label and a label back into an answer of the same type.

Labels use the core's one encoding (`tracer_core.text_label` for text, `structured_label`
for tool arguments and structured outputs), so LangChain and LiteLLM store one answer as
one label. A codec is learned from the first real output of the chain. Its `spec` (kind,
class path, tool name) is stored in each teacher trace's metadata, so another process can
rebuild it before its first real call, provided the class is already imported there
(nothing is imported from a stored path). `message(label)` is the chat-model message a
surrogate answer's chat-model run reports.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Callable
from enum import Enum
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from pydantic import BaseModel

from tracer_core import structured_label, text_label
from tracer_core.errors import InvalidTraceError
from tracer_langchain.errors import CodecError

INCLUDE_RAW_KEYS = frozenset({"raw", "parsed", "parsing_error"})


class OutputCodec:
    """Base codec: `to_label(output) -> str`, `from_label(label) -> output`, `spec` for persistence."""

    kind = "abstract"
    complete = True
    """False when the codec can label outputs but not build answers (kept only for that output)."""

    def to_label(self, output: Any) -> str:
        raise NotImplementedError

    def from_label(self, label: str, *, chunk: bool = False) -> Any:
        """The answer for `label`; `chunk=True` asks for a streaming chunk type where one exists."""
        raise NotImplementedError

    def message(self, label: str, *, tool: str | None = None) -> AIMessage:
        """The chat-model message behind this answer (a tool call when the model answers through `tool`)."""
        if tool is not None:
            return tool_call_message(tool, label)
        return AIMessage(content=label)

    @property
    def spec(self) -> dict:
        return {"kind": self.kind}


class StrCodec(OutputCodec):
    """`str` and str subclasses (e.g. LangChain's `TextAccessor`); the label is the stripped text."""

    kind = "str"

    def __init__(self, cls: type[str] = str) -> None:
        self.cls = cls

    def to_label(self, output: Any) -> str:
        _expect(output, str, self.kind)
        return text_label(output)

    def from_label(self, label: str, *, chunk: bool = False) -> Any:
        return label if self.cls is str else self.cls(label)

    @property
    def spec(self) -> dict:
        return {"kind": self.kind, "type": type_path(self.cls)}


class MessageTextCodec(OutputCodec):
    """An AI message whose text content is the label."""

    kind = "message_text"

    def to_label(self, output: Any) -> str:
        _expect(output, BaseMessage, self.kind)
        if getattr(output, "tool_calls", None):
            raise CodecError("message has tool calls but the codec expects a text answer")
        return text_label(output.text)

    def message(self, label: str, *, tool: str | None = None) -> AIMessage:
        return AIMessage(content=label)

    def from_label(self, label: str, *, chunk: bool = False) -> Any:
        cls = AIMessageChunk if chunk else AIMessage
        return cls(content=label, response_metadata={"tracer_handled": True})


class MessageToolCodec(OutputCodec):
    """An AI message with exactly one call to `tool_name`; the label is its canonical JSON arguments."""

    kind = "message_tool"

    def __init__(self, tool_name: str) -> None:
        self.tool_name = tool_name

    def to_label(self, output: Any) -> str:
        _expect(output, BaseMessage, self.kind)
        calls = getattr(output, "tool_calls", None) or []
        if len(calls) != 1 or calls[0]["name"] != self.tool_name:
            names = [c["name"] for c in calls]
            raise CodecError(f"expected exactly one call to tool {self.tool_name!r}, got {names}")
        return canonical_label(calls[0]["args"])

    def from_label(self, label: str, *, chunk: bool = False) -> Any:
        message = tool_call_message(self.tool_name, label)
        if chunk:
            call = message.tool_calls[0]
            return AIMessageChunk(
                content="",
                tool_call_chunks=[{"name": call["name"], "args": label, "id": call["id"], "index": 0}],
                response_metadata=message.response_metadata,
            )
        return message

    def message(self, label: str, *, tool: str | None = None) -> AIMessage:
        return tool_call_message(self.tool_name, label)

    @property
    def spec(self) -> dict:
        return {"kind": self.kind, "tool": self.tool_name}


class PydanticCodec(OutputCodec):
    """A Pydantic model (e.g. from `with_structured_output`); the label is its canonical JSON."""

    kind = "pydantic"

    def __init__(self, cls: type[BaseModel]) -> None:
        self.cls = cls

    def to_label(self, output: Any) -> str:
        _expect(output, self.cls, self.kind)
        return canonical_label(output.model_dump(mode="json"))

    def from_label(self, label: str, *, chunk: bool = False) -> Any:
        return self.cls.model_validate_json(label)

    @property
    def spec(self) -> dict:
        return {"kind": self.kind, "type": type_path(self.cls)}


class DictCodec(OutputCodec):
    """A JSON-native dict (e.g. `with_structured_output` of a JSON schema); the label is its canonical JSON."""

    kind = "dict"

    def to_label(self, output: Any) -> str:
        _expect(output, dict, self.kind)
        return canonical_label(output)

    def from_label(self, label: str, *, chunk: bool = False) -> Any:
        return json.loads(label)


class IncludeRawCodec(OutputCodec):
    """`with_structured_output(..., include_raw=True)`: `{"raw", "parsed", "parsing_error"}`; the label is `parsed`'s.

    A teacher answer that failed to parse is labelled from its raw message (tool arguments or
    text), so it is still recorded; a surrogate answer is rebuilt as the raw message the model
    would have sent (a call to `tool`, else JSON content), its parsed value and no error.
    """

    kind = "include_raw"

    def __init__(self, parsed: OutputCodec | None, tool: str | None = None) -> None:
        self.parsed = parsed
        self.tool = tool
        self.complete = parsed is not None  # a first answer that failed to parse does not tell the parsed type

    def to_label(self, output: Any) -> str:
        _expect(output, dict, self.kind)
        if output.get("parsing_error") is None and output.get("parsed") is not None and self.parsed is not None:
            return self.parsed.to_label(output["parsed"])
        raw = output.get("raw")
        calls = getattr(raw, "tool_calls", None) or []
        if calls:
            return canonical_label(calls[0]["args"])
        return structured_label(raw.text) if isinstance(raw, BaseMessage) else text_label(str(raw))

    def from_label(self, label: str, *, chunk: bool = False) -> Any:
        if self.parsed is None:
            raise CodecError("no include_raw answer has parsed yet; its parsed type is unknown")
        return {"raw": self.message(label), "parsed": self.parsed.from_label(label), "parsing_error": None}

    def message(self, label: str, *, tool: str | None = None) -> AIMessage:
        tool = self.tool or tool
        if tool is not None:
            return tool_call_message(tool, label)
        return AIMessage(content=label, response_metadata={"tracer_handled": True})

    @property
    def spec(self) -> dict:
        return {"kind": self.kind, "parsed": self.parsed.spec if self.parsed else None, "tool": self.tool}


class EnumCodec(OutputCodec):
    """An Enum member; the label is the member name."""

    kind = "enum"

    def __init__(self, cls: type[Enum]) -> None:
        self.cls = cls

    def to_label(self, output: Any) -> str:
        _expect(output, self.cls, self.kind)
        return output.name

    def from_label(self, label: str, *, chunk: bool = False) -> Any:
        try:
            return self.cls[label]
        except KeyError:
            raise CodecError(f"{label!r} is not a member of {type_path(self.cls)}") from None

    @property
    def spec(self) -> dict:
        return {"kind": self.kind, "type": type_path(self.cls)}


class CustomCodec(OutputCodec):
    """User-supplied `to_label` / `from_label` functions."""

    kind = "custom"

    def __init__(self, to_label: Callable[[Any], str], from_label: Callable[[str], Any]) -> None:
        self._to_label = to_label
        self._from_label = from_label

    def to_label(self, output: Any) -> str:
        label = self._to_label(output)
        if not isinstance(label, str):
            raise CodecError(f"to_label must return a str, got {type(label).__name__}")
        return label

    def from_label(self, label: str, *, chunk: bool = False) -> Any:
        return self._from_label(label)


def learn_codec(output: Any) -> OutputCodec:
    """The codec for outputs shaped like `output`; CodecError for unsupported kinds."""
    if isinstance(output, Enum):
        return EnumCodec(type(output))
    if isinstance(output, str):
        return StrCodec(type(output))
    if isinstance(output, BaseMessage):
        calls = getattr(output, "tool_calls", None) or []
        if not calls:
            return MessageTextCodec()
        if len(calls) == 1:
            return MessageToolCodec(calls[0]["name"])
        raise CodecError(f"message has {len(calls)} tool calls; a classification answer has at most one")
    if isinstance(output, BaseModel):
        return PydanticCodec(type(output))
    if isinstance(output, dict) and set(output) == INCLUDE_RAW_KEYS and isinstance(output["raw"], BaseMessage):
        return _include_raw_codec(output)
    if isinstance(output, dict):
        canonical_label(output)
        return DictCodec()
    raise CodecError(
        f"cannot use {type(output).__name__} outputs as labels; pass to_label= and from_label= to with_tracer"
    )


def codec_for_type(output_type: Any, tool: str | None = None) -> OutputCodec | None:
    """The codec a chain's declared output type implies (before any real output is seen), or None.

    `tool` is the tool the model is forced to call, if any (its message then carries a tool call).
    """
    if not isinstance(output_type, type):
        return None
    if issubclass(output_type, Enum):
        return EnumCodec(output_type)
    if issubclass(output_type, str):
        return StrCodec(output_type)
    if issubclass(output_type, BaseMessage):
        return MessageToolCodec(tool) if tool else MessageTextCodec()
    if issubclass(output_type, BaseModel):
        return PydanticCodec(output_type)
    return None


def _include_raw_codec(output: dict) -> IncludeRawCodec:
    raw, parsed = output["raw"], output["parsed"]
    calls = getattr(raw, "tool_calls", None) or []
    tool = calls[0]["name"] if len(calls) == 1 else None
    return IncludeRawCodec(learn_codec(parsed) if parsed is not None else None, tool)


def codec_from_spec(spec: dict) -> OutputCodec | None:
    """Rebuild a codec from a stored `spec`, or None when its class is not loaded in this process."""
    kind = spec.get("kind")
    if kind == "include_raw" and isinstance(spec.get("parsed"), dict):
        parsed = codec_from_spec(spec["parsed"])
        tool = spec.get("tool") if isinstance(spec.get("tool"), str) else None
        return IncludeRawCodec(parsed, tool) if parsed is not None else None
    if kind == "message_text":
        return MessageTextCodec()
    if kind == "message_tool" and isinstance(spec.get("tool"), str):
        return MessageToolCodec(spec["tool"])
    if kind == "dict":
        return DictCodec()
    cls = resolve_loaded_type(spec.get("type"))
    if cls is None:
        return None
    if kind == "str" and issubclass(cls, str):
        return StrCodec(cls)
    if kind == "pydantic" and issubclass(cls, BaseModel):
        return PydanticCodec(cls)
    if kind == "enum" and issubclass(cls, Enum):
        return EnumCodec(cls)
    return None


def canonical_label(value: Any) -> str:
    """The core's structured label of a JSON-native value; CodecError if it is not JSON-native."""
    try:
        return structured_label(value)
    except InvalidTraceError as exc:
        raise CodecError(str(exc)) from None


def tool_call_message(tool: str, label: str) -> AIMessage:
    """An AI message calling `tool` with the arguments of a structured label."""
    call = {"name": tool, "args": json.loads(label), "id": "call_tracer_" + uuid.uuid4().hex[:12], "type": "tool_call"}
    return AIMessage(content="", tool_calls=[call], response_metadata={"tracer_handled": True})


def type_path(cls: type) -> str:
    """`module:qualname` of a class."""
    return f"{cls.__module__}:{cls.__qualname__}"


def resolve_loaded_type(path: Any) -> type | None:
    """The class at `module:qualname` if its module is already imported (never imports)."""
    if not isinstance(path, str) or ":" not in path or "<locals>" in path:
        return None
    module_name, qualname = path.split(":", 1)
    obj: Any = sys.modules.get(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    return obj if isinstance(obj, type) else None


def _expect(output: Any, cls: type, kind: str) -> None:
    if not isinstance(output, cls):
        raise CodecError(f"{kind} codec expected {cls.__name__}, got {type(output).__name__}")
