"""Observe-only (process-wide callback handler) and the LLM-cache short-circuit, over real HTTP."""

from __future__ import annotations

import json
import threading

import pytest
from langchain_core.globals import set_llm_cache
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from tracer_core import TraceStore
from tracer_demo.local_teacher import LocalTeacher
from tracer_langchain import with_tracer
from tracer_langchain.llm_cache import TracerLLMCache
from tracer_langchain.observer import observe, stop_observing

TASK = "support-intent"


class Intent(BaseModel):
    """The intent of a banking query."""

    label: str


def _chain(server):
    prompt = ChatPromptTemplate([("system", "Classify the banking query."), ("human", "{text}")])
    llm = ChatOpenAI(base_url=server.base_url, api_key="sk-test", model="teacher", max_retries=0)
    return prompt | llm | StrOutputParser()


def _traces(db, source="teacher"):
    with TraceStore(db) as store:
        return list(store.iter_traces(TASK, source=source))


def test_observer_records_chain_runs_process_wide(teacher, db_path, banking_subset, fake_embedder):
    chain = _chain(teacher)
    observer = observe(task=TASK, chain=chain, db=db_path, embedder=fake_embedder, auto_refit=False)
    try:
        (t1, l1), (t2, l2), (t3, l3) = banking_subset[0], banking_subset[40], banking_subset[80]
        assert chain.invoke({"text": t1}) == l1
        thread = threading.Thread(target=lambda: chain.invoke({"text": t2}))  # a thread without copied context
        thread.start()
        thread.join()
        assert "".join(chain.stream({"text": t3})) == l3
        observer.flush()
        traces = _traces(db_path)
        assert sorted((t.input, t.label) for t in traces) == sorted([(t1, l1), (t2, l2), (t3, l3)])

        wrapped = with_tracer(chain, task=TASK, db=db_path, embedder=fake_embedder, auto_refit=False)
        assert {t.fingerprint for t in traces} == {wrapped.tracer_for({"text": t1}).fingerprint}
        first = next(t for t in traces if t.input == t1)
        assert first.prompt_tokens and first.completion_tokens == 3 and first.model == "teacher"
        assert first.route is None, "recorded outside routing: a uniform sample of traffic"
        try:
            wrapped.invoke({"text": t1})
            wrapped.flush()
        finally:
            wrapped.close()
        observer.flush()
        assert len(_traces(db_path)) == 4, "a with_tracer run must be recorded once, by the wrapper"
    finally:
        stop_observing(observer)
    chain.invoke({"text": t1})
    observer.flush()
    assert len(_traces(db_path)) == 4


def test_observer_run_name_filter(teacher, db_path, banking_subset, fake_embedder):
    chain = _chain(teacher)
    observer = observe(task=TASK, chain=chain, db=db_path, embedder=fake_embedder, run_name="intent", auto_refit=False)
    try:
        text, label = banking_subset[0]
        chain.invoke({"text": text})
        chain.with_config(run_name="intent").invoke({"text": text})
        observer.flush()
        assert [(t.input, t.label) for t in _traces(db_path)] == [(text, label)]
    finally:
        stop_observing(observer)


@pytest.fixture
def llm_cache(db_path, fake_embedder):
    cache = TracerLLMCache(TASK, db=db_path, alpha=0.9, embedder=fake_embedder, auto_refit=False, audit_rate=0.0)
    set_llm_cache(cache)
    yield cache
    set_llm_cache(None)
    cache.close()


@pytest.mark.filterwarnings("ignore:Pydantic serializer warnings")  # langchain-openai's streamed `parsed` field
def test_llm_cache_answers_certified_structured_calls(teacher, llm_cache, db_path, banking_subset):
    rows = banking_subset  # all 20 intents: the concurrent batch records in a varying order (see test_langchain_wrapper.rows)
    llm = ChatOpenAI(base_url=teacher.base_url, api_key="sk-test", model="teacher", max_retries=0)
    chain = ChatPromptTemplate([("system", "Classify the banking query."), ("human", "{text}")]) | llm.with_structured_output(Intent)
    inputs = [{"text": text} for text, _ in rows]
    assert chain.batch(inputs, {"max_concurrency": 8}) == [Intent(label=label) for _, label in rows]
    assert teacher.request_count == len(rows)

    (tracer,) = llm_cache.tracers.values()
    tracer.flush()
    assert tracer.fit().deployed
    decisions = tracer.route_many([text for text, _ in rows])
    handled = [(text, json.loads(d.label)["label"]) for (text, _), d in zip(rows, decisions) if d.handled]
    assert len(handled) >= len(rows) // 2

    before = teacher.request_count
    for text, predicted in handled[:30]:
        assert chain.invoke({"text": text}) == Intent(label=predicted)
    assert teacher.request_count == before

    # Streaming bypasses LangChain's LLM cache: the model is called.
    text, label = handled[0][0], dict(rows)[handled[0][0]]
    assert list(chain.stream({"text": text}))[-1] == Intent(label=label)
    assert teacher.request_count == before + 1
    tracer.flush()
    surrogate = _traces(db_path, "surrogate")
    assert len(surrogate) >= 30 and {t.route for t in surrogate} == {"handled"}


def test_llm_cache_records_an_unparsable_audit_answer_as_a_disagreement(db_path, banking_subset, fake_embedder):
    """Issue 21.6: an audited call whose answer is empty was dropped; it now reaches the monitor, never training."""
    answers = dict(banking_subset)
    cache = TracerLLMCache(TASK, db=db_path, alpha=0.9, embedder=fake_embedder, auto_refit=False, audit_rate=0.999)
    set_llm_cache(cache)
    try:
        with LocalTeacher(lambda messages: answers[messages[-1]["content"]]) as server:
            llm = ChatOpenAI(base_url=server.base_url, api_key="sk-test", model="teacher", max_retries=0)
            chain = ChatPromptTemplate([("system", "Classify the banking query."), ("human", "{text}")]) | llm
            # one call at a time: trace ids follow the subset's order, so the calibration split (by id) and the fit
            # are the same in every run (with 8 threads the order varied, and a fit was refused once in a while)
            chain.batch([{"text": text} for text, _ in banking_subset], {"max_concurrency": 1})
            (tracer,) = cache.tracers.values()
            tracer.flush()
            assert tracer.fit().deployed
            decisions = tracer.route_many([t for t, _ in banking_subset])  # nearly all audits, with the would-be label
            text = next(t for (t, _), d in zip(banking_subset, decisions) if d.reason == "audit" and d.label is not None)
            answers[text] = ""
            assert chain.invoke({"text": text}).content == ""
            tracer.flush()
            [audit] = [t for t in tracer.store.iter_traces(TASK) if t.route == "audit"]
            outcomes = tracer.store.audit_outcomes(TASK, tracer.fingerprint, policy_version=audit.policy_version)
            trainable = tracer.store.teacher_evidence(TASK, tracer.fingerprint).ids
    finally:
        set_llm_cache(None)
        cache.close()
    assert (audit.input, audit.source) == (text, "unparsed") and audit.predicted is not None
    assert outcomes == [(audit.id, False)] and audit.id not in trainable
