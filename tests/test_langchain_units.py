"""Unit tests of the LangChain integration's pure parts: text extraction, output codecs, fingerprints, usage."""

from __future__ import annotations

import enum
import json

import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage
from langchain_core.messages.base import TextAccessor
from langchain_core.output_parsers import StrOutputParser
from langchain_core.outputs import ChatGeneration, LLMResult
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables import RunnableLambda
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from tracer_core.errors import TracerError
from tracer_langchain.codec import (
    CustomCodec,
    DictCodec,
    EnumCodec,
    MessageTextCodec,
    MessageToolCodec,
    PydanticCodec,
    StrCodec,
    codec_from_spec,
    learn_codec,
)
from tracer_langchain.errors import CodecError, TextExtractionError
from tracer_langchain.identity import ChainIdentity
from tracer_langchain.text import extract_text
from tracer_langchain.usage import UsageCollector


class Intent(BaseModel):
    label: str
    confidence: float = 1.0


class Color(enum.Enum):
    RED = "red"
    BLUE = 2


# -- text extraction ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("I lost my card", "I lost my card"),
        ({"text": "a"}, "a"),
        ({"whatever": "only string"}, "only string"),
        ({"question": "q", "lang": "en"}, "q"),
        ({"query": "q2", "k": 3}, "q2"),
        ([SystemMessage("sys"), HumanMessage("first"), AIMessage("x"), HumanMessage("last")], "last"),
        ([("system", "s"), ("human", "tuple text")], "tuple text"),
        ([{"role": "user", "content": "dict text"}, {"role": "assistant", "content": "ok"}], "dict text"),
        ({"messages": [HumanMessage("inside")]}, "inside"),
        (HumanMessage("one message"), "one message"),
        (42, "42"),
    ],
)
def test_default_text_extraction(value, expected):
    assert extract_text(value) == expected


def test_prompt_value_gives_last_human_message():
    prompt = ChatPromptTemplate([("system", "Classify {text}"), ("human", "{text}")])
    assert extract_text(prompt.invoke({"text": "card arrived?"})) == "card arrived?"


def test_text_fn_wins_over_input_key():
    value = {"text": "a", "other": "b"}
    assert extract_text(value, text_fn=lambda v: v["other"], input_key="text") == "b"
    assert extract_text(value, input_key="other") == "b"


def test_extraction_errors_name_the_problem():
    with pytest.raises(TextExtractionError, match="no key 'missing'"):
        extract_text({"text": "a"}, input_key="missing")
    with pytest.raises(TextExtractionError, match="must return a str"):
        extract_text("a", text_fn=lambda v: 3)
    with pytest.raises(TextExtractionError, match="no human message"):
        extract_text([SystemMessage("only system")])
    assert issubclass(TextExtractionError, TracerError)


# -- codecs ------------------------------------------------------------------------------
def test_str_codec_roundtrip_keeps_str_subclass():
    codec = learn_codec(TextAccessor(" card_lost\n"))
    assert isinstance(codec, StrCodec)
    assert codec.to_label(TextAccessor(" card_lost\n")) == "card_lost"
    answer = codec.from_label("card_lost")
    assert type(answer) is TextAccessor and answer == "card_lost"
    assert type(learn_codec("x").from_label("y")) is str


def test_message_text_codec():
    codec = learn_codec(AIMessage(content="card_lost"))
    assert isinstance(codec, MessageTextCodec)
    assert codec.to_label(AIMessage(content=[{"type": "text", "text": "card_lost "}])) == "card_lost"
    answer = codec.from_label("card_lost")
    assert isinstance(answer, AIMessage) and answer.content == "card_lost"
    assert answer.response_metadata["tracer_handled"] is True
    assert isinstance(codec.from_label("card_lost", chunk=True), AIMessageChunk)
    with pytest.raises(CodecError, match="tool calls"):
        codec.to_label(AIMessage(content="", tool_calls=[{"name": "f", "args": {}, "id": "1"}]))


def test_message_tool_codec_roundtrip():
    message = AIMessage(content="", tool_calls=[{"name": "Intent", "args": {"label": "x", "confidence": 1}, "id": "c1"}])
    codec = learn_codec(message)
    assert isinstance(codec, MessageToolCodec)
    label = codec.to_label(message)
    assert label == '{"confidence":1,"label":"x"}'
    answer = codec.from_label(label)
    assert answer.tool_calls[0]["name"] == "Intent" and answer.tool_calls[0]["args"] == {"label": "x", "confidence": 1}
    chunk = codec.from_label(label, chunk=True)
    assert chunk.tool_calls[0]["args"] == {"label": "x", "confidence": 1}
    with pytest.raises(CodecError, match="exactly one call"):
        codec.to_label(AIMessage(content="text"))
    with pytest.raises(CodecError, match="2 tool calls"):
        learn_codec(AIMessage(content="", tool_calls=[{"name": "a", "args": {}, "id": "1"}, {"name": "b", "args": {}, "id": "2"}]))


def test_pydantic_dict_enum_codecs():
    pyd = learn_codec(Intent(label="x", confidence=0.5))
    assert isinstance(pyd, PydanticCodec)
    assert pyd.from_label(pyd.to_label(Intent(label="x", confidence=0.5))) == Intent(label="x", confidence=0.5)
    dct = learn_codec({"b": 1, "a": "x"})
    assert isinstance(dct, DictCodec) and dct.to_label({"b": 1, "a": "x"}) == '{"a":"x","b":1}'
    assert dct.from_label('{"a":"x","b":1}') == {"a": "x", "b": 1}
    enm = learn_codec(Color.BLUE)
    assert isinstance(enm, EnumCodec) and enm.to_label(Color.BLUE) == "BLUE" and enm.from_label("BLUE") is Color.BLUE
    with pytest.raises(CodecError, match="not a member"):
        enm.from_label("GREEN")


def test_include_raw_codec_labels_parsed_and_rebuilds_raw():
    raw = AIMessage(content="", tool_calls=[{"name": "Intent", "args": {"label": "x", "confidence": 1}, "id": "c1"}])
    output = {"raw": raw, "parsed": Intent(label="x"), "parsing_error": None}
    codec = learn_codec(output)
    assert codec.to_label(output) == '{"confidence":1.0,"label":"x"}'
    failed = {"raw": raw, "parsed": None, "parsing_error": ValueError("bad")}
    assert codec.to_label(failed) == '{"confidence":1,"label":"x"}', "a parse failure is labelled from raw"
    answer = codec.from_label('{"confidence":1.0,"label":"x"}')
    assert answer["parsed"] == Intent(label="x") and answer["parsing_error"] is None
    assert answer["raw"].tool_calls[0]["name"] == "Intent"
    rebuilt = codec_from_spec(json.loads(json.dumps(codec.spec)))
    assert rebuilt.to_label(output) == codec.to_label(output)
    first_failed = learn_codec(failed)  # the first answer did not parse: it is still labelled, never answered
    assert first_failed.to_label(failed) == '{"confidence":1,"label":"x"}' and not first_failed.complete
    with pytest.raises(CodecError, match="parsed type is unknown"):
        first_failed.from_label("{}")


def test_unsupported_outputs_are_clear_errors():
    with pytest.raises(CodecError, match="pass to_label= and from_label="):
        learn_codec(3.5)
    with pytest.raises(CodecError, match="not plain JSON"):
        learn_codec({"raw": AIMessage(content="x")})
    with pytest.raises(CodecError, match="expected Intent"):
        PydanticCodec(Intent).to_label({"label": "x"})


def test_custom_codec_checks_label_type():
    codec = CustomCodec(lambda out: out["label"], lambda label: {"label": label, "why": ""})
    assert codec.to_label({"label": "a", "why": "long reasoning"}) == "a"
    assert codec.from_label("a") == {"label": "a", "why": ""}
    with pytest.raises(CodecError, match="must return a str"):
        CustomCodec(lambda out: 1, str).to_label("x")


def test_codec_spec_roundtrip_uses_loaded_classes_only():
    for output in ("x", AIMessage(content="x"), Intent(label="x"), {"a": 1}, Color.RED,
                   AIMessage(content="", tool_calls=[{"name": "T", "args": {"label": "x"}, "id": "1"}])):
        codec = learn_codec(output)
        spec = json.loads(json.dumps(codec.spec))
        rebuilt = codec_from_spec(spec)
        assert type(rebuilt) is type(codec)
        assert rebuilt.to_label(output) == codec.to_label(output)
    assert codec_from_spec({"kind": "pydantic", "type": "not_imported_module_xyz:Model"}) is None
    assert codec_from_spec({"kind": "pydantic", "type": "builtins:int"}) is None
    assert codec_from_spec({"kind": "nonsense"}) is None


# -- task identity ------------------------------------------------------------------------
def _chain(system: str = "Classify the banking query.", model: str = "teacher", port: int = 1, **kw):
    prompt = ChatPromptTemplate([("system", system), ("human", "{text}")])
    llm = ChatOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-test", model=model, max_retries=0, **kw)
    return prompt | llm | StrOutputParser()


def _version(chain, value=None, text="I lost my card", **options):
    return ChainIdentity(chain, **options).of({"text": text} if value is None else value, text)[0]


def test_version_tracks_the_function_not_the_endpoint():
    base = _version(_chain()).fingerprint
    assert base == _version(_chain(port=2)).fingerprint
    assert base == _version(_chain(timeout=5, stream_usage=True)).fingerprint
    assert base == _version(_chain(), text="Where is my card?").fingerprint, "the routed text is not the version"
    assert base != _version(_chain(system="Classify the query into an intent.")).fingerprint
    assert base != _version(_chain(model="teacher-2")).fingerprint
    assert base != _version(_chain(temperature=0.7)).fingerprint
    assert base != _version(_chain(seed=3)).fingerprint
    assert len(base) == 16


def test_version_description_has_no_secrets_and_names_the_model():
    description = _version(_chain()).description()
    assert "sk-test" not in json.dumps(description) and "127.0.0.1" not in json.dumps(description)
    assert description["model"] == "openai/teacher"
    assert description["messages"] == [["system", "Classify the banking query."], ["user", "{tracer:input}"]]


def test_version_changes_with_structured_output_schema_and_bound_params():
    class Other(BaseModel):
        intent: str

    llm = ChatOpenAI(base_url="http://127.0.0.1:1/v1", api_key="sk-test", model="teacher")
    prompt = ChatPromptTemplate([("human", "{text}")])
    first = _version(prompt | llm.with_structured_output(Intent))
    assert first.fingerprint != _version(prompt | llm.with_structured_output(Other)).fingerprint
    assert first.schema["response_format"]["json_schema"]["name"] == "Intent"
    tools = _version(prompt | llm.bind_tools([Intent], tool_choice="Intent"))
    assert tools.schema["tool_choice"] == {"type": "function", "function": {"name": "Intent"}}
    assert "ls_structured_output_format" not in json.dumps(first.description())
    assert _version(prompt | llm.bind(temperature=0.2)).params == {"temperature": 0.2}


def test_inputs_outside_the_prompt_are_variables_and_ignored_inputs_are_not():
    prompt = ChatPromptTemplate([("system", "Answer at granularity {granularity}."), ("human", "{text}")])
    chain = prompt | ChatOpenAI(base_url="http://127.0.0.1:1/v1", api_key="sk-test", model="teacher")
    fine = _version(chain, {"text": "I lost my card", "granularity": "fine", "user": "u1"})
    assert fine.variables == {"user": "u1"} and "granularity fine" in fine.messages[0][1]
    coarse = _version(chain, {"text": "I lost my card", "granularity": "coarse", "user": "u1"})
    assert coarse.fingerprint != fine.fingerprint
    ignored = {"ignore_inputs": ("granularity", "user")}
    assert _version(chain, {"text": "I lost my card", "granularity": "fine", "user": "u1"}, **ignored).fingerprint == \
        _version(chain, {"text": "I lost my card", "granularity": "coarse", "user": "u2"}, **ignored).fingerprint


def test_message_history_is_dropped_and_marked():
    prompt = ChatPromptTemplate([("system", "Classify."), MessagesPlaceholder("messages")])
    chain = prompt | ChatOpenAI(base_url="http://127.0.0.1:1/v1", api_key="sk-test", model="teacher")
    one = _version(chain, {"messages": [HumanMessage("I lost my card")]})
    assert one.blocked is None
    turns = _version(chain, {"messages": [HumanMessage("hi"), AIMessage("hello"), HumanMessage("I lost my card")]})
    other = _version(chain, {"messages": [HumanMessage("yo"), AIMessage("hey"), HumanMessage("I lost my card")]})
    assert turns.blocked == "conversation_history" and turns.fingerprint == other.fingerprint != one.fingerprint
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    seen = _version(chain, {"messages": [HumanMessage([{"type": "text", "text": "I lost my card"}, image])]})
    assert seen.blocked == "non_text_content"
    llm = ChatOpenAI(base_url="http://127.0.0.1:1/v1", api_key="sk-test", model="teacher")
    direct = ChainIdentity(llm).of([SystemMessage("Classify."), HumanMessage("I lost my card")], "I lost my card")[0]
    assert direct.blocked is None and direct.fingerprint == one.fingerprint, "system messages are prompt, not history"


def test_routed_text_in_the_system_message_is_replaced_there():
    prompt = ChatPromptTemplate([("system", "Classify the banking query: {text}")])
    chain = prompt | ChatOpenAI(base_url="http://127.0.0.1:1/v1", api_key="sk-test", model="teacher")
    version = _version(chain)
    assert version.messages == (("system", "Classify the banking query: {tracer:input}"),)
    assert _version(chain, text="Where is my card?").fingerprint == version.fingerprint


def test_a_chain_without_a_chat_model_is_described_by_its_serialised_form():
    chain = RunnableLambda(lambda value: value["text"].upper())
    version = _version(chain, {"text": "I lost my card", "k": 3})
    assert version.model == "langchain/RunnableLambda" and version.variables["k"] == 3
    assert len(version.variables["chain"]) == 16
    assert _version(chain, {"text": "I lost my card", "k": 4}).fingerprint != version.fingerprint
    assert _version(chain, {"text": "x", "k": 3}, text="x").fingerprint == version.fingerprint


# -- usage -------------------------------------------------------------------------------
def test_usage_collector_sums_reported_usage():
    collector = UsageCollector()
    message = AIMessage(
        content="x",
        usage_metadata={"input_tokens": 10, "output_tokens": 2, "total_tokens": 12},
        response_metadata={"model_name": "teacher"},
    )
    result = LLMResult(generations=[[ChatGeneration(message=message)]])
    collector.on_llm_end(result)
    collector.on_llm_end(result)
    assert (collector.prompt_tokens, collector.completion_tokens, collector.model) == (20, 4, "teacher")
    empty = UsageCollector()
    empty.on_llm_end(LLMResult(generations=[[ChatGeneration(message=AIMessage(content="x"))]]))
    assert (empty.prompt_tokens, empty.completion_tokens, empty.llm_calls) == (None, None, 1)
