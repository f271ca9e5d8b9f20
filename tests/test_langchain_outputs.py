"""Each output kind (str, AIMessage text, tool call, Pydantic, dict, Enum, custom codec): a surrogate answer has the chain's type."""

from __future__ import annotations

import enum
import json

import pytest
from langchain_core.messages import AIMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

from tracer_core import Tracer, TraceStore
from tracer_langchain import with_tracer

TASK = "support-intent"
N_LABELS = 8
PER_LABEL = 40


class Intent(BaseModel):
    """The intent of a banking query."""

    label: str = Field(description="intent name")


class Reasoned(BaseModel):
    label: str
    reasoning: str = ""


INTENT_SCHEMA = {
    "title": "intent",
    "description": "The intent of a banking query.",
    "type": "object",
    "properties": {"label": {"type": "string"}},
    "required": ["label"],
}


@pytest.fixture(scope="module")
def rows(banking_subset):
    labels = sorted({label for _, label in banking_subset})[:N_LABELS]
    return [(text, label) for text, label in banking_subset if label in labels]


@pytest.fixture(scope="module")
def intent_enum(rows):
    return enum.Enum("BankingIntent", {label.upper(): label for label in sorted({lab for _, lab in rows})})


def _llm(server) -> ChatOpenAI:
    return ChatOpenAI(base_url=server.base_url, api_key="sk-test", model="teacher", max_retries=0)


def _prompt() -> ChatPromptTemplate:
    return ChatPromptTemplate([("system", "Classify the banking query into one intent."), ("human", "{text}")])


def _kinds(server, intent_enum):
    """(name, chain, label of a teacher answer, check of an output against the expected intent)."""
    llm, prompt = _llm(server), _prompt()
    return {
        "str": (prompt | llm | StrOutputParser(), lambda y: y, lambda out, y: type(out) is not AIMessage and out == y),
        "message_text": (prompt | llm, lambda y: y, lambda out, y: isinstance(out, AIMessage) and out.content == y),
        "message_tool": (
            prompt | llm.bind_tools([Intent], tool_choice="Intent"),
            lambda y: json.dumps({"label": y}, separators=(",", ":")),
            lambda out, y: isinstance(out, AIMessage) and out.tool_calls[0]["name"] == "Intent"
            and out.tool_calls[0]["args"] == {"label": y},
        ),
        "pydantic": (
            prompt | llm.with_structured_output(Intent),
            lambda y: json.dumps({"label": y}, separators=(",", ":")),
            lambda out, y: out == Intent(label=y),
        ),
        "dict": (
            prompt | llm.with_structured_output(INTENT_SCHEMA),
            lambda y: json.dumps({"label": y}, separators=(",", ":")),
            lambda out, y: out == {"label": y},
        ),
        "enum": (
            prompt | llm | StrOutputParser() | RunnableLambda(lambda s: intent_enum(s.strip())),
            lambda y: y.upper(),
            lambda out, y: out is intent_enum(y),
        ),
    }


def _train(tracer, rows, to_label) -> None:
    """Record teacher traces of `rows` and certify a policy."""
    tracer.record_many([t for t, _ in rows], [to_label(y) for _, y in rows])
    tracer.flush()
    certificate = tracer.fit()
    assert certificate.deployed, certificate.reason


@pytest.mark.parametrize("kind", ["str", "message_text", "message_tool", "pydantic", "dict", "enum"])
def test_output_kind_roundtrip(kind, teacher, tmp_path, rows, intent_enum, fake_embedder):
    chain, to_label, matches = _kinds(teacher, intent_enum)[kind]
    db = tmp_path / "tracer.db"
    wrapper = with_tracer(chain, task=TASK, alpha=0.8, db=db, embedder=fake_embedder, auto_refit=False, audit_rate=0.0)
    try:
        # A real answer: passed through unchanged, recorded with this kind's label.
        text, label = rows[0]
        assert matches(wrapper.invoke({"text": text}), label)
        wrapper.tracer.flush()
        with TraceStore(db) as store:
            (trace,) = store.iter_traces(TASK, source="teacher")
        assert trace.label == to_label(label) and trace.metadata["codec"]["kind"] == kind

        # With a certified policy, the surrogate answers with the same type and no request.
        _train(wrapper.tracer, rows, to_label)
        handled = [(t, y) for (t, y), d in zip(rows, wrapper.tracer.route_many([t for t, _ in rows])) if d.handled]
        assert handled, "no training input is handled"
        before = teacher.request_count
        for text, label in handled[:5]:
            assert matches(wrapper.invoke({"text": text}), label)
        assert teacher.request_count == before
    finally:
        wrapper.close()


def test_custom_codec_for_a_model_with_free_text_reasoning(teacher, db_path, rows, fake_embedder):
    def answer(messages):
        text = messages[-1]["content"]
        label = dict(rows).get(text, "unknown")
        return json.dumps({"label": label, "reasoning": f"because {text[:20]}"})

    from tracer_demo.local_teacher import LocalTeacher

    with LocalTeacher(answer) as server:
        chain = _prompt() | _llm(server).with_structured_output(Reasoned)
        wrapper = with_tracer(
            chain,
            task=TASK,
            alpha=0.8,
            db=db_path,
            embedder=fake_embedder,
            auto_refit=False,
            audit_rate=0.0,
            to_label=lambda out: out.label,
            from_label=lambda label: Reasoned(label=label, reasoning="answered by tracer"),
        )
        try:
            text, label = rows[0]
            out = wrapper.invoke({"text": text})
            assert out.label == label and out.reasoning.startswith("because")
            _train(wrapper.tracer, rows, lambda y: y)
            handled = [(t, y) for (t, y), d in zip(rows, wrapper.tracer.route_many([t for t, _ in rows])) if d.handled]
            before = server.request_count
            out = wrapper.invoke({"text": handled[0][0]})
            assert out == Reasoned(label=handled[0][1], reasoning="answered by tracer")
            assert server.request_count == before
        finally:
            wrapper.close()


def test_codec_is_rebuilt_from_stored_traces_in_a_new_wrapper(teacher, db_path, rows, fake_embedder):
    """A second wrapper (as in a new process) answers before seeing any real output of its own."""
    chain = _prompt() | _llm(teacher).with_structured_output(Intent)
    to_label = lambda y: json.dumps({"label": y}, separators=(",", ":"))  # noqa: E731
    first = with_tracer(chain, task=TASK, alpha=0.8, db=db_path, embedder=fake_embedder, auto_refit=False, audit_rate=0.0,
                        policy_check_s=0.0)
    try:
        first.invoke({"text": rows[0][0]})
    finally:
        first.close()
    other = Tracer(task=TASK, db=db_path, alpha=0.8, fingerprint=first.tracer.fingerprint, embedder=fake_embedder,
                   auto_refit=False)
    try:
        _train(other, rows, to_label)
    finally:
        other.close()
    second = with_tracer(chain, task=TASK, alpha=0.8, db=db_path, embedder=fake_embedder, auto_refit=False, audit_rate=0.0,
                         policy_check_s=0.0)  # a new wrapper: its codec comes from the stored traces
    try:
        assert second.tracer_for({"text": rows[0][0]}).policy_version is not None
        handled = [(t, y) for (t, y), d in zip(rows, second.tracer.route_many([t for t, _ in rows])) if d.handled]
        before = teacher.request_count
        assert second.invoke({"text": handled[0][0]}) == Intent(label=handled[0][1])
        assert teacher.request_count == before
    finally:
        second.close()
