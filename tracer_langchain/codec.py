"""Output codecs: turn a chain's answer into a label and a label back into an answer of the same type.

A codec is learned from the first real output of the chain. Its `spec` (kind, class path,
tool name) is stored in each teacher trace's metadata, so another process can rebuild it
before its first real call, provided the class is already imported there (nothing is
imported from a stored path).
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

from tracer_langchain.errors import CodecError


class OutputCodec:
    """Base codec: `to_label(output) -> str`, `from_label(label) -> output`, `spec` for persistence."""

    kind = "abstract"

    def to_label(self, output: Any) -> str:
        raise NotImplementedError

    def from_label(self, label: str, *, chunk: bool = False) -> Any:
        """The answer for `label`; `chunk=True` asks for a streaming chunk type where one exists."""
        raise NotImplementedError

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
        return output.strip()

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
        return output.text.strip()

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
        call_id = "call_tracer_" + uuid.uuid4().hex[:12]
        metadata = {"tracer_handled": True}
        if chunk:
            return AIMessageChunk(
                content="",
                tool_call_chunks=[{"name": self.tool_name, "args": label, "id": call_id, "index": 0}],
                response_metadata=metadata,
            )
        call = {"name": self.tool_name, "args": json.loads(label), "id": call_id, "type": "tool_call"}
        return AIMessage(content="", tool_calls=[call], response_metadata=metadata)

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
    if isinstance(output, dict):
        canonical_label(output)
        return DictCodec()
    raise CodecError(
        f"cannot use {type(output).__name__} outputs as labels; pass to_label= and from_label= to with_tracer"
    )


def codec_from_spec(spec: dict) -> OutputCodec | None:
    """Rebuild a codec from a stored `spec`, or None when its class is not loaded in this process."""
    kind = spec.get("kind")
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
    """Compact, key-sorted JSON of a JSON-native value; CodecError if it is not JSON-native."""
    try:
        return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise CodecError(f"output is not plain JSON data: {exc}") from None


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
