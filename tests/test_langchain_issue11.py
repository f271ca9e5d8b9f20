"""Issue 11, LangChain half, over real HTTP: answers only where the certificate reaches, and visible when given.

Each test reproduces a shape that used to be answered from a certificate that said nothing
about it (a second prompt variable, chat history, a `messages` input, an image, include_raw)
and shows it now reaches the LLM, recorded under its own task version; plus the events a
surrogate answer emits, observe mode and audits.
"""

from __future__ import annotations

import json

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.chat_history import InMemoryChatMessageHistory
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables.history import RunnableWithMessageHistory
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from tracer_core import TraceStore, identify
from tracer_demo.local_teacher import LocalTeacher, message_text
from tracer_langchain import with_tracer

TASK = "support-intent"
SYSTEM = "Classify the banking query into one intent. Answer with the intent name only."
GRANULAR = SYSTEM + " granularity: {granularity}"


class Intent(BaseModel):
    """The intent of a banking query."""

    label: str


@pytest.fixture(scope="module")
def rows(banking_subset):
    """320 Banking77 queries of 8 intents."""
    labels = sorted({label for _, label in banking_subset})[:8]
    return [(text, label) for text, label in banking_subset if label in labels]


def coarse(label: str) -> str:
    return label.split("_")[0]


@pytest.fixture(scope="module")
def server(rows):
    """A teacher whose answer depends on the system prompt's granularity, like a real LLM's would."""
    table = dict(rows)

    def answer(messages: list[dict]) -> str:
        text = message_text([m for m in messages if m["role"] == "user"][-1]).strip()
        label = table.get(text, "unknown")
        system = " ".join(message_text(m) for m in messages if m["role"] == "system")
        return coarse(label) if "granularity: coarse" in system else label

    with LocalTeacher(answer) as teacher:
        yield teacher


def llm(server: LocalTeacher, **options) -> ChatOpenAI:
    options = {"temperature": 0, **options}
    return ChatOpenAI(base_url=server.base_url, api_key="sk-test", model="stand-in", max_retries=0, **options)


def wrap(chain, db, fake_embedder, **options):
    options = {"audit_rate": 0.0, **options}
    return with_tracer(chain, task=TASK, alpha=0.8, db=db, embedder=fake_embedder, auto_refit=False, **options)


def certify(tracer, rows, to_label=lambda y: y) -> list[tuple[str, str]]:
    """Record `rows` as teacher traces of this version, certify, return the (text, label) rows it answers, surest first.

    An audited decision carries the label only when the policy would have answered.
    """
    tracer.record_many([t for t, _ in rows], [to_label(y) for _, y in rows])
    certificate = tracer.fit()
    assert certificate.deployed, certificate.reason
    decisions = tracer.route_many([t for t, _ in rows])
    covered = [(d.score, t, d.label) for (t, _), d in zip(rows, decisions) if d.handled or (d.reason == "audit" and d.label)]
    assert len(covered) >= 80
    return [(t, label) for _, t, label in sorted(covered, key=lambda c: -c[0])]  # surest first: far from the threshold


def traces(db, **filters):
    with TraceStore(db) as store:
        return list(store.iter_traces(TASK, **filters))


def versions(db):
    with TraceStore(db) as store:
        return store.versions(TASK)


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return tmp_path_factory.mktemp("issue11") / "tracer.db"


@pytest.fixture(scope="module")
def plain(server, db, rows, fake_embedder):
    """`system | human {text}` certified; the one-question version every other shape below starts from."""
    chain = ChatPromptTemplate([("system", SYSTEM), ("human", "{text}")]) | llm(server) | StrOutputParser()
    wrapper = wrap(chain, db, fake_embedder)
    handled = certify(wrapper.tracer_for({"text": rows[0][0]}), rows)
    yield wrapper, handled
    wrapper.close()


# -- one identity for both integrations ---------------------------------------------------
def test_same_prompt_model_and_params_as_a_litellm_call_is_the_same_version(server, db, fake_embedder):
    chain = ChatPromptTemplate([("system", SYSTEM), ("human", "{text}")]) | llm(server) | StrOutputParser()
    text = "I lost my card"
    by_langchain = wrap(chain, db, fake_embedder).tracer_for({"text": text}).fingerprint
    # what tracer_litellm computes for litellm.completion(model="openai/stand-in", messages=..., temperature=0)
    by_litellm = identify(model="openai/stand-in", messages=[("system", SYSTEM), ("user", text)], routed_text=text,
                          params={"temperature": 0}, origin="litellm").fingerprint
    assert by_langchain == by_litellm
    warmer = ChatPromptTemplate([("system", SYSTEM), ("human", "{text}")]) | llm(server, temperature=0.7)
    assert wrap(warmer, db, fake_embedder).tracer_for({"text": text}).fingerprint != by_litellm


# -- 1. a second prompt variable ------------------------------------------------------------
def test_a_second_variable_certified_on_fine_never_answers_coarse(server, db, rows, fake_embedder):
    chain = ChatPromptTemplate([("system", GRANULAR), ("human", "{text}")]) | llm(server) | StrOutputParser()
    wrapper = wrap(chain, db, fake_embedder)
    handled = certify(wrapper.tracer_for({"text": rows[0][0], "granularity": "fine"}), rows)
    before = server.request_count
    assert [wrapper.invoke({"text": t, "granularity": "fine"}) for t, _ in handled[:10]] == [y for _, y in handled[:10]]
    assert server.request_count == before, "the certified variable value is answered by the surrogate"

    table = dict(rows)
    sample = handled[:60]
    answers = wrapper.batch([{"text": t, "granularity": "coarse"} for t, _ in sample])
    assert server.request_count == before + len(sample), "every coarse call reaches the LLM"
    assert answers == [coarse(table[t]) for t, _ in sample]
    wrapper.flush()
    (t1, p1), (t2, _), (t3, p3) = handled[60:63]
    before = server.request_count
    mixed = wrapper.batch([{"text": t1, "granularity": "fine"}, {"text": t2, "granularity": "coarse"},
                           {"text": t3, "granularity": "fine"}])
    assert mixed == [p1, coarse(table[t2]), p3] and server.request_count == before + 1, "one batch, two versions"
    coarse_version = wrapper.tracer_for({"text": sample[0][0], "granularity": "coarse"}).fingerprint
    wrapper.flush()  # the mixed batch's traces are queued: write them before counting
    recorded = traces(db, source="teacher", fingerprint=coarse_version)
    assert len(recorded) == len(sample) + 1 and {t.route for t in recorded} == {"no_policy"}


def test_ignore_inputs_declares_a_variable_irrelevant(server, db, rows, fake_embedder):
    chain = ChatPromptTemplate([("system", GRANULAR), ("human", "{text}")]) | llm(server) | StrOutputParser()
    wrapper = wrap(chain, db, fake_embedder, ignore_inputs=("granularity",))
    fine = wrapper.tracer_for({"text": rows[0][0], "granularity": "fine"})
    assert wrapper.tracer_for({"text": rows[0][0], "granularity": "coarse"}) is fine
    wrapper.flush()  # versions are registered in the background
    assert "granularity: {tracer:ignored}" in json.dumps(fine.store.versions(TASK))


def test_inputs_outside_the_prompt_are_part_of_the_version(server, db, fake_embedder):
    chain = ChatPromptTemplate([("system", SYSTEM), ("human", "{text}")]) | llm(server) | StrOutputParser()
    wrapper = wrap(chain, db, fake_embedder)
    base = wrapper.tracer_for({"text": "I lost my card"})
    assert wrapper.tracer_for({"text": "I lost my card", "locale": "de"}) is not base
    assert wrapper.tracer_for({"text": "Where is my card?"}) is base


def test_a_pinned_fingerprint_is_one_version_but_history_still_goes_to_the_llm(server, db, fake_embedder):
    chain = (ChatPromptTemplate([("system", SYSTEM), MessagesPlaceholder("messages")]) | llm(server)
             | StrOutputParser())
    wrapper = wrap(chain, db, fake_embedder, fingerprint="pinned-v1")
    tracer = wrapper.tracer_for({"messages": [HumanMessage("I lost my card")]})
    assert tracer.fingerprint == "pinned-v1"
    with_history = {"messages": [HumanMessage("hi"), AIMessage("hello"), HumanMessage("I lost my card")]}
    before = server.request_count
    wrapper.invoke(with_history)
    assert server.request_count == before + 1
    wrapper.flush()
    assert traces(db, fingerprint="pinned-v1") == [], "a history answer never trains the pinned version"
    (trace,) = traces(db, fingerprint=wrapper.tracer_for(with_history).fingerprint)
    assert trace.route == "conversation_history"


# -- 1. chat history ------------------------------------------------------------------------
def _history_chain(server):
    prompt = ChatPromptTemplate([("system", SYSTEM), MessagesPlaceholder("history"), ("human", "{text}")])
    return prompt | llm(server) | StrOutputParser()


def test_with_tracer_around_runnable_with_message_history(server, db, plain, fake_embedder):
    _, handled = plain
    sessions: dict[str, InMemoryChatMessageHistory] = {}
    chat = RunnableWithMessageHistory(
        _history_chain(server), lambda sid: sessions.setdefault(sid, InMemoryChatMessageHistory()),
        input_messages_key="text", history_messages_key="history",
    )
    wrapper = wrap(chat, db, fake_embedder)
    conversations = [handled[i:i + 3] for i in range(0, 75, 3)]  # 25 conversations of 3 certified questions
    for n, turns in enumerate(conversations):
        config = {"configurable": {"session_id": f"s{n}"}}
        first = server.request_count
        assert wrapper.invoke({"text": turns[0][0]}, config) == turns[0][1]
        assert server.request_count == first, "turn 1 has no history: the one-question policy answers it"
        for text, _ in turns[1:]:
            wrapper.invoke({"text": text}, config)
        assert server.request_count == first + 2, "turns 2 and 3 carry history: the LLM answers them"
        assert len(sessions[f"s{n}"].messages) == 6, "a surrogate-answered turn is kept in the session history"
    wrapper.flush()
    blocked = [v for v in versions(db) if (v["description"] or {}).get("history")]
    assert len(blocked) == 1 and blocked[0]["teacher"] >= 50, "all conversations share one history version"
    assert {t.route for t in traces(db, fingerprint=blocked[0]["fingerprint"])} == {"conversation_history"}


def test_runnable_with_message_history_around_with_tracer(server, db, plain, fake_embedder):
    _, handled = plain
    sessions: dict[str, InMemoryChatMessageHistory] = {}
    chat = RunnableWithMessageHistory(
        wrap(_history_chain(server), db, fake_embedder),
        lambda sid: sessions.setdefault(sid, InMemoryChatMessageHistory()),
        input_messages_key="text", history_messages_key="history",
    )
    config = {"configurable": {"session_id": "outer"}}
    before = server.request_count
    assert chat.invoke({"text": handled[0][0]}, config) == handled[0][1]
    assert server.request_count == before
    chat.invoke({"text": handled[1][0]}, config)
    chat.invoke({"text": handled[2][0]}, config)
    assert server.request_count == before + 2
    assert len(sessions["outer"].messages) == 6


# -- 1. a messages input ----------------------------------------------------------------------
def test_messages_input_with_earlier_turns_goes_to_the_llm_under_one_version(server, db, plain, fake_embedder):
    _, handled = plain
    chain = (ChatPromptTemplate([("system", SYSTEM), MessagesPlaceholder("messages")]) | llm(server)
             | StrOutputParser())
    wrapper = wrap(chain, db, fake_embedder)
    before = server.request_count
    single = [wrapper.invoke({"messages": [HumanMessage(t)]}) for t, _ in handled[:5]]
    assert single == [y for _, y in handled[:5]] and server.request_count == before
    conversations = [{"messages": [HumanMessage(a), AIMessage(ya), HumanMessage(b)]}
                     for (a, ya), (b, _) in zip(handled[10:30], handled[30:50])]
    wrapper.batch(conversations)
    assert server.request_count == before + len(conversations)
    wrapper.flush()
    blocked = [v for v in versions(db) if (v["description"] or {}).get("history")
               and v["description"]["messages"] == [["system", SYSTEM], ["user", "{tracer:input}"]]]
    assert len(blocked) == 1 and blocked[0]["teacher"] >= len(conversations)


# -- 7. content the surrogate cannot see -------------------------------------------------------
def test_an_image_in_the_question_goes_to_the_llm(server, db, plain, fake_embedder):
    _, handled = plain
    chain = (ChatPromptTemplate([("system", SYSTEM), MessagesPlaceholder("messages")]) | llm(server)
             | StrOutputParser())
    wrapper = wrap(chain, db, fake_embedder)
    text, label = handled[0]
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    before = server.request_count
    assert wrapper.invoke({"messages": [HumanMessage(content=[{"type": "text", "text": text}, image])]}) == label
    assert server.request_count == before + 1
    wrapper.flush()
    (trace,) = [t for t in traces(db, source="teacher") if t.route == "non_text_content"]
    assert trace.input == text and trace.label == label


# -- 6. include_raw ------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_include_raw_structured_output(server, tmp_path, rows, fake_embedder, method):
    db = tmp_path / "tracer.db"
    model = llm(server).with_structured_output(Intent, include_raw=True, method=method)
    wrapper = wrap(ChatPromptTemplate([("system", SYSTEM), ("human", "{text}")]) | model, db, fake_embedder)
    text, label = rows[0]
    out = wrapper.invoke({"text": text})
    assert out["parsed"] == Intent(label=label) and out["parsing_error"] is None
    wrapper.flush()
    (trace,) = traces(db)
    assert trace.label == json.dumps({"label": label}, separators=(",", ":"))
    assert trace.metadata["codec"]["kind"] == "include_raw"

    handled = certify(wrapper.tracer, rows, lambda y: json.dumps({"label": y}, separators=(",", ":")))
    before = server.request_count
    text, predicted = handled[0]
    out = wrapper.invoke({"text": text})
    assert server.request_count == before
    assert out["parsed"] == Intent(**json.loads(predicted)) and out["parsing_error"] is None
    raw = out["raw"]
    assert isinstance(raw, AIMessage)
    if method == "function_calling":
        assert raw.tool_calls[0]["name"] == "Intent" and raw.tool_calls[0]["args"] == json.loads(predicted)
    else:
        assert json.loads(raw.content) == json.loads(predicted)


# -- 4. what a surrogate answer shows ---------------------------------------------------------------
class Seen(BaseCallbackHandler):
    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []

    def on_chat_model_start(self, serialized, messages, *, invocation_params=None, metadata=None, **kwargs):
        self.events.append(("start", {"messages": messages, "params": invocation_params, "metadata": metadata}))

    def on_llm_new_token(self, token, *, chunk=None, **kwargs):
        self.events.append(("token", {"token": token, "chunk": chunk}))

    def on_llm_end(self, response, **kwargs):
        self.events.append(("end", {"response": response}))


def test_a_callback_handler_sees_a_hit_as_a_chat_model_run(plain, server):
    wrapper, handled = plain
    text, label = handled[0]
    seen = Seen()
    before = server.request_count
    assert list(wrapper.stream({"text": text}, {"callbacks": [seen]})) == [label]
    assert server.request_count == before
    assert [kind for kind, _ in seen.events] == ["start", "token", "end"]
    start, token, end = (data for _, data in seen.events)
    (messages,) = start["messages"]
    assert [(m.type, m.content) for m in messages] == [("system", SYSTEM), ("human", text)]
    assert start["params"]["model"] == "stand-in" and start["params"]["temperature"] == 0
    assert start["metadata"]["tracer_handled"] is True and start["metadata"]["ls_model_name"] == "stand-in"
    assert token["chunk"].message.content == label
    (generation,) = end["response"].generations[0]
    assert generation.message.content == label
    assert generation.generation_info["tracer_handled"] is True
    assert generation.generation_info["tracer_policy_version"] == wrapper.tracer.policy_version
    assert generation.message.response_metadata["tracer_fingerprint"] == wrapper.tracer.fingerprint


async def test_astream_events_of_a_hit_include_the_chat_model_run(plain, server):
    wrapper, handled = plain
    text, label = handled[1]
    events = [e async for e in wrapper.astream_events({"text": text}, version="v2")]
    model_events = [e for e in events if e["event"].startswith("on_chat_model")]
    assert [e["event"] for e in model_events] == ["on_chat_model_start", "on_chat_model_stream", "on_chat_model_end"]
    assert model_events[1]["data"]["chunk"].content == label
    assert model_events[2]["data"]["output"].response_metadata["tracer_handled"] is True
    assert model_events[0]["parent_ids"][-1] == events[0]["run_id"]


def test_langgraph_messages_streaming_sees_a_hit(plain, server):
    """A node that calls the wrapped chain: `stream_mode="messages"` yields the surrogate's answer as
    the node's chat-model message, with no request to the LLM, as it yields a real model's."""
    from typing import TypedDict

    from langgraph.graph import END, START, StateGraph

    wrapper, handled = plain
    (hit, label), (other, other_label) = handled[5], handled[6]

    class State(TypedDict, total=False):
        text: str
        label: str

    graph = (
        StateGraph(State)
        .add_node("classify", lambda state: {"label": wrapper.invoke({"text": state["text"]})})
        .add_edge(START, "classify")
        .add_edge("classify", END)
        .compile()
    )
    before = server.request_count
    streamed = list(graph.stream({"text": hit}, stream_mode="messages"))
    assert server.request_count == before
    assert [(message.content, meta["langgraph_node"]) for message, meta in streamed] == [(label, "classify")]
    assert streamed[0][1]["tracer_handled"] is True
    off = list(graph.stream({"text": other}, {"configurable": {"tracer_mode": "off"}}, stream_mode="messages"))
    assert server.request_count == before + 1  # the real model, seen the same way
    assert "".join(str(message.content) for message, _ in off) == other_label
    assert {meta["langgraph_node"] for _, meta in off} == {"classify"}


# -- modes and audits ------------------------------------------------------------------------------
def test_observe_mode_records_and_never_answers_off_records_nothing(plain, server, db):
    wrapper, handled = plain
    (text, label), (other, other_label) = handled[3], handled[4]
    fingerprint = wrapper.tracer_for({"text": text}).fingerprint
    wrapper.flush()
    recorded = len(traces(db, fingerprint=fingerprint))
    before = server.request_count
    assert wrapper.invoke({"text": text}, {"configurable": {"tracer_mode": "observe"}}) == label
    assert wrapper.invoke({"text": other}, {"configurable": {"tracer_mode": "off"}}) == other_label
    assert server.request_count == before + 2
    wrapper.flush()
    new = traces(db, fingerprint=fingerprint)[recorded:]
    assert [(t.input, t.source, t.route, t.metadata["tracer_mode"]) for t in new] == [
        (text, "teacher", "tracer_off", "observe")
    ]


def test_an_audit_runs_the_chain_and_records_the_would_be_answer(server, tmp_path, rows, fake_embedder):
    """audit_rate=0.999 (the core's settings allow [0, 1)): of five covered calls, all but ~0.5% are audited."""
    db = tmp_path / "tracer.db"
    chain = ChatPromptTemplate([("system", SYSTEM), ("human", "{text}")]) | llm(server) | StrOutputParser()
    wrapper = wrap(chain, db, fake_embedder, audit_rate=0.999)
    handled = certify(wrapper.tracer_for({"text": rows[0][0]}), rows)
    table = dict(rows)
    audited = []
    for text, predicted in handled[:5]:
        before = server.request_count
        answer = wrapper.invoke({"text": text})
        if server.request_count == before + 1:
            assert answer == table[text], "an audited call returns the chain's answer"
            audited.append((text, predicted))
        else:
            assert answer == predicted
    assert audited
    wrapper.flush()
    recorded = {t.input: t for t in traces(db, source="teacher") if t.route == "audit"}
    assert sorted(recorded) == sorted(t for t, _ in audited)
    for text, predicted in audited:
        assert recorded[text].predicted == predicted and recorded[text].label == table[text]
        assert recorded[text].policy_version is not None


class Scored(BaseModel):
    """An intent with a confidence the stand-in teacher never sends (so parsing fails)."""

    label: str
    confidence: float


def test_include_raw_answer_that_fails_to_parse_is_still_recorded(server, tmp_path, rows, fake_embedder):
    db = tmp_path / "tracer.db"
    model = llm(server).with_structured_output(Scored, include_raw=True, method="function_calling")
    wrapper = wrap(ChatPromptTemplate([("system", SYSTEM), ("human", "{text}")]) | model, db, fake_embedder)
    text, label = rows[0]
    out = wrapper.invoke({"text": text})
    assert out["parsed"] is None and out["parsing_error"] is not None
    wrapper.flush()
    (trace,) = traces(db)
    assert trace.label == json.dumps({"label": label}, separators=(",", ":")) and trace.route == "no_policy"
