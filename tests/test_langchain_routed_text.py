"""The routed text is never a silent serialisation (issue 23, point 2).

A prompt with two string inputs, neither named `text` (`utterance`, `granularity`), used to route
`{"granularity":"fine","utterance":"reset the alarm"}` as the text. Now the wrapped chain's call
raises `AmbiguousTextError` naming the inputs and `input_key=`, before the chain runs (the LLM is
not asked, nothing is recorded); with `input_key=` the field is routed and the other input is part
of the task version. A real ChatOpenAI chain talks HTTP to a LocalTeacher.
"""

from __future__ import annotations

import logging

import pytest
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_openai import ChatOpenAI

from tracer_core import TraceStore
from tracer_core.errors import TracerError
from tracer_demo.local_teacher import LocalTeacher
from tracer_langchain import AmbiguousTextError, extract_text, observe, stop_observing, with_tracer

TASK = "alarms"
CALL = {"utterance": "reset the alarm", "granularity": "fine"}


@pytest.fixture
def server():
    with LocalTeacher({"reset the alarm": "alarm_reset"}) as teacher:
        yield teacher


def make_chain(server: LocalTeacher):
    prompt = ChatPromptTemplate([("system", "Classify the request at {granularity} granularity."), ("human", "{utterance}")])
    llm = ChatOpenAI(base_url=server.base_url, api_key="sk-test", model="teacher", max_retries=0)
    return prompt | llm | StrOutputParser()


def stored(db) -> list[tuple[str, str]]:
    with TraceStore(db) as store:
        return [(t.input, t.fingerprint) for t in store.iter_traces(TASK)]


def test_two_inputs_neither_named_text_raise_at_the_call_before_the_chain_runs(server, db_path, fake_embedder):
    chain = with_tracer(make_chain(server), task=TASK, db=db_path, embedder=fake_embedder, auto_refit=False)
    for call in (chain.invoke, lambda value: chain.batch([value]), lambda value: list(chain.stream(value)),
                 chain.tracer_for):
        with pytest.raises(AmbiguousTextError) as caught:
            call(CALL)
        message = str(caught.value)
        assert "'granularity', 'utterance'" in message and 'input_key="<field>"' in message
        assert "reset the alarm" not in message  # the fields are named, their values never shown
    assert isinstance(caught.value, TracerError)
    assert server.request_count == 0
    chain.flush()
    assert stored(db_path) == []


async def test_async_calls_raise_too(server, db_path, fake_embedder):
    chain = with_tracer(make_chain(server), task=TASK, db=db_path, embedder=fake_embedder, auto_refit=False)
    with pytest.raises(AmbiguousTextError, match="input_key="):
        await chain.ainvoke(CALL)
    assert server.request_count == 0


def test_input_key_routes_the_named_field_and_versions_the_other(server, db_path, fake_embedder):
    chain = with_tracer(make_chain(server), task=TASK, db=db_path, embedder=fake_embedder, auto_refit=False,
                        input_key="utterance")
    assert chain.invoke(CALL) == "alarm_reset"
    assert chain.invoke({**CALL, "granularity": "coarse"}) == "alarm_reset"
    chain.flush()
    traces = stored(db_path)
    assert [text for text, _ in traces] == ["reset the alarm", "reset the alarm"]
    assert traces[0][1] != traces[1][1]  # another granularity is another task version


def test_an_observer_records_nothing_and_says_why_once(server, db_path, fake_embedder, caplog):
    chain = make_chain(server)
    observer = observe(task=TASK, chain=chain, db=db_path, embedder=fake_embedder, auto_refit=False)
    try:
        with caplog.at_level(logging.WARNING, logger="tracer_langchain"):
            assert chain.invoke(CALL) == chain.invoke(CALL) == "alarm_reset"  # the chain is never disturbed
    finally:
        stop_observing(observer)
    assert stored(db_path) == []
    warnings = [r.getMessage() for r in caplog.records if "input_key=" in r.getMessage()]
    assert len(warnings) == 1 and "'granularity', 'utterance'" in warnings[0]


@pytest.mark.parametrize(
    ("value", "fields"),
    [({"b": 1, "a": [2]}, "'a', 'b'"), ({"doc": {"title": "t"}}, "'doc'"), ({}, "none"),
     ({"messages": [("human", "hi")], "lang": "en"}, "'lang', 'messages'")],
)
def test_inputs_no_rule_picks_from_name_their_fields(value, fields):
    with pytest.raises(AmbiguousTextError, match=f"fields: {fields};"):
        extract_text(value)


def test_other_values_need_a_text_fn():
    with pytest.raises(AmbiguousTextError, match="text_fn="):
        extract_text(["a", "b"])
    assert extract_text(["a", "b"], text_fn=lambda v: v[0]) == "a"
    assert extract_text(3.5) == "3.5" and extract_text(True) == "true"
