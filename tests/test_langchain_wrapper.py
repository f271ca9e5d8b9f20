"""with_tracer over a real ChatOpenAI chain talking HTTP to a LocalTeacher: every Runnable method, misses and hits."""

from __future__ import annotations

import logging
import sqlite3

import openai
import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda
from langchain_core.tracers.context import collect_runs
from langchain_openai import ChatOpenAI

from tracer_core import Tracer, TraceStore
from tracer_core.settings import SettingsError
from tracer_demo.local_teacher import LocalTeacher
from tracer_langchain import IntegrationConfigError, TracedRunnable, with_tracer

TASK = "support-intent"
SYSTEM = "Classify the banking query into one intent. Answer with the intent name only."


def make_chain(server: LocalTeacher, system: str = SYSTEM, **llm_options):
    prompt = ChatPromptTemplate([("system", system), ("human", "{text}")])
    llm = ChatOpenAI(base_url=server.base_url, api_key="sk-test", model="teacher", max_retries=0, **llm_options)
    return prompt | llm | StrOutputParser()


def teacher_traces(db, fingerprint: str | None = None, source: str = "teacher"):
    with TraceStore(db) as store:
        return list(store.iter_traces(TASK, source=source, fingerprint=fingerprint))


def wrap(chain, db, fake_embedder, **options) -> TracedRunnable:
    """A wrapper with deterministic routing (no audits, no background refits)."""
    options = {"audit_rate": 0.0, "alpha": 0.9, **options}
    return with_tracer(chain, task=TASK, db=db, embedder=fake_embedder, auto_refit=False, **options)


# -- a policy certified from traces the wrapper itself recorded ---------------------------
@pytest.fixture(scope="module")
def rows(banking_subset):
    """All 800 queries of the subset's 20 intents.

    The concurrent batch below records them in an order that varies from run to run, and the fit's
    split follows that order: on 8 intents (320 traces) about 1 order in 10 is refused at alpha 0.9
    with the hash embedder; on all 20, 40 of 40 shuffled orders deploy.
    """
    return list(banking_subset)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, rows, fake_embedder):
    """A wrapper whose teacher traces all came through it over HTTP, with a deployed policy.

    `handled` lists (text, teacher label, surrogate label) of the training inputs the policy answers.
    """
    db = tmp_path_factory.mktemp("trained") / "tracer.db"
    with LocalTeacher(dict(rows)) as server:
        chain = make_chain(server)
        wrapper = wrap(chain, db, fake_embedder)
        answers = wrapper.batch([{"text": text} for text, _ in rows], {"max_concurrency": 8})
        assert answers == [label for _, label in rows]
        assert server.request_count == len(rows)
        wrapper.tracer.flush()
        certificate = wrapper.tracer.fit()
        assert certificate.deployed, certificate.reason
        decisions = wrapper.tracer.route_many([text for text, _ in rows])
        handled = [(text, label, d.label) for (text, label), d in zip(rows, decisions) if d.handled]
        assert len(handled) >= len(rows) // 2, f"only {len(handled)} training inputs are handled"
        assert sum(label == predicted for _, label, predicted in handled) >= 0.9 * len(handled)
        yield {"server": server, "chain": chain, "wrapper": wrapper, "db": db, "handled": handled}
        wrapper.close()


def test_recorded_traces_are_teacher_traces_with_usage(trained):
    traces = teacher_traces(trained["db"], trained["wrapper"].tracer.fingerprint)
    assert len(traces) >= 320
    first = traces[0]
    assert first.model == "teacher" and first.prompt_tokens and first.completion_tokens == 3
    assert first.latency_ms is not None and first.latency_ms > 0
    assert first.route == "no_policy" and first.policy_version is None
    assert first.metadata["codec"]["kind"] == "str"


def test_invoke_answers_certified_inputs_without_the_llm(trained):
    server, wrapper = trained["server"], trained["wrapper"]
    before = server.request_count
    for text, _, predicted in trained["handled"][:40]:
        assert wrapper.invoke({"text": text}) == predicted
    assert server.request_count == before


def test_batch_sends_only_misses_to_the_chain_in_one_batch(trained):
    server, wrapper = trained["server"], trained["wrapper"]
    hits = trained["handled"][:5]
    misses = ["Xylophone zeppelin quasar nebula?", "Purple walrus sonnets, quokka!"]  # no word of any intent
    inputs = [{"text": hits[0][0]}, {"text": misses[0]}, *({"text": t} for t, _, _ in hits[1:]), {"text": misses[1]}]
    before = server.request_count
    answers = wrapper.batch(inputs)
    assert answers[0] == hits[0][2] and answers[2:-1] == [predicted for _, _, predicted in hits[1:]]
    assert answers[1] == answers[-1] == "unknown"
    assert server.request_count - before == 2


async def test_ainvoke_and_abatch_hits(trained):
    server, wrapper = trained["server"], trained["wrapper"]
    before = server.request_count
    text, _, predicted = trained["handled"][0]
    assert await wrapper.ainvoke({"text": text}) == predicted
    batch = trained["handled"][1:6]
    assert await wrapper.abatch([{"text": t} for t, _, _ in batch]) == [p for _, _, p in batch]
    assert server.request_count == before


def test_stream_hit_is_one_chunk(trained):
    server, wrapper = trained["server"], trained["wrapper"]
    before = server.request_count
    text, _, predicted = trained["handled"][0]
    assert list(wrapper.stream({"text": text})) == [predicted]
    assert server.request_count == before


async def test_astream_and_astream_events_hit(trained):
    server, wrapper = trained["server"], trained["wrapper"]
    before = server.request_count
    text, _, predicted = trained["handled"][1]
    assert [chunk async for chunk in wrapper.astream({"text": text})] == [predicted]
    events = [e async for e in wrapper.astream_events({"text": text}, version="v2")]
    assert [e["event"] for e in events] == [
        "on_chain_start", "on_chat_model_start", "on_chat_model_stream", "on_chat_model_end",
        "on_chain_stream", "on_chain_end",
    ]
    assert events[0]["name"] == "TracedRunnable" and "tracer:surrogate" in events[0]["tags"]
    assert events[0]["metadata"]["tracer_handled"] is True
    assert events[2]["data"]["chunk"].content == predicted
    assert events[-1]["data"]["output"] == predicted
    assert server.request_count == before


def test_surrogate_answers_are_visible_in_the_run_and_recorded_as_surrogate(trained):
    wrapper, text = trained["wrapper"], trained["handled"][2][0]
    with collect_runs() as runs:
        wrapper.invoke({"text": text})
    run = runs.traced_runs[0]
    assert run.name == "TracedRunnable" and "tracer:surrogate" in run.tags
    assert run.extra["metadata"]["tracer_handled"] is True
    assert run.extra["metadata"]["tracer_policy_version"] == trained["wrapper"].tracer.policy_version
    (child,) = run.child_runs  # the surrogate's answer, reported as a chat-model run
    assert (child.name, child.run_type) == ("ChatOpenAI", "llm")
    assert child.extra["metadata"]["tracer_handled"] is True and child.extra["metadata"]["ls_provider"] == "openai"
    assert child.inputs["prompts"][0].endswith(f"Human: {text}")
    assert child.outputs["generations"][0][0]["message"]["kwargs"]["content"] == wrapper.tracer.route(text).label
    wrapper.tracer.flush()
    surrogate = teacher_traces(trained["db"], wrapper.tracer.fingerprint, source="surrogate")
    assert any(t.input == text and t.route == "handled" and t.policy_version is not None for t in surrogate)


def test_tracer_mode_off_forces_the_chain(trained):
    server, wrapper = trained["server"], trained["wrapper"]
    text, label, _ = trained["handled"][3]
    before = server.request_count
    with collect_runs() as runs:
        assert wrapper.invoke({"text": text}, {"configurable": {"tracer_mode": "off"}}) == label
    assert server.request_count == before + 1
    assert runs.traced_runs[0].extra["metadata"]["tracer_reason"] == "tracer_off"
    assert wrapper.with_config(configurable={"tracer_mode": "off"}).invoke({"text": text}) == label
    assert server.request_count == before + 2
    with pytest.raises(IntegrationConfigError, match="tracer_mode"):
        wrapper.invoke({"text": text}, {"configurable": {"tracer_mode": "sometimes"}})


def test_a_prompt_change_is_a_new_task_version(trained, fake_embedder):
    server = trained["server"]
    edited = make_chain(server, system=SYSTEM + " Be careful.")
    wrapper = wrap(edited, trained["db"], fake_embedder)
    try:
        text = trained["handled"][0][0]
        assert wrapper.tracer_for({"text": text}).fingerprint != trained["wrapper"].tracer_for({"text": text}).fingerprint
        assert wrapper.tracer_for({"text": text}).policy_version is None
        before = server.request_count
        text, label, _ = trained["handled"][0]
        assert wrapper.invoke({"text": text}) == label
        assert server.request_count == before + 1
    finally:
        wrapper.close()


# -- issue 21: one level per task version, every audit counts ------------------------------
def snapshot(db, tmp_path, name: str):
    """A consistent copy of the trained store (its writer may still hold pages in the WAL)."""
    copy = tmp_path / name
    with sqlite3.connect(db) as source, sqlite3.connect(copy) as target:
        source.backup(target)
    return copy


@pytest.mark.parametrize("level", [{"alpha": 0.99}, {"delta": 0.001}])
def test_a_wrapper_stricter_than_the_certificate_defers_with_its_own_reason(trained, fake_embedder, tmp_path, level):
    """Issue 21.4: the policy is certified at alpha 0.9, delta 0.05; this wrapper asks more."""
    server, db = trained["server"], snapshot(trained["db"], tmp_path, "strict.db")
    text, label, _ = trained["handled"][4]
    wrapper = wrap(trained["chain"], db, fake_embedder, **level)
    try:
        before = server.request_count
        with collect_runs() as runs:
            assert wrapper.invoke({"text": text}) == label
        assert server.request_count == before + 1
        metadata = runs.traced_runs[0].extra["metadata"]
        assert metadata["tracer_reason"] == "not_certified_at_alpha" and metadata["tracer_handled"] is False
        wrapper.flush()
        [trace] = [t for t in teacher_traces(db, wrapper.tracer.fingerprint) if t.route == "not_certified_at_alpha"]
        assert (trace.input, trace.policy_version, trace.label) == (text, 1, label)
    finally:
        wrapper.close()


def test_an_unparsable_audit_answer_is_a_disagreement_and_never_trains(trained, fake_embedder, tmp_path):
    """Issue 21.6: an empty answer cannot be a label; the audit used to be dropped, now it counts against the policy."""
    db = snapshot(trained["db"], tmp_path, "audit.db")
    (text, _, predicted), (other, other_label, other_predicted) = trained["handled"][5], trained["handled"][6]
    answers = {text: "", other: other_label}
    with LocalTeacher(lambda messages: answers[messages[-1]["content"]]) as silent:
        wrapper = wrap(make_chain(silent), db, fake_embedder, audit_rate=0.999)
        try:
            assert wrapper.invoke({"text": text}) == ""
            assert wrapper.invoke({"text": other}) == other_label
            assert silent.request_count == 2
            wrapper.flush()
            fingerprint = wrapper.tracer.fingerprint
        finally:
            wrapper.close()
    with TraceStore(db) as store:
        new = [t for t in store.iter_traces(TASK, fingerprint=fingerprint) if t.input in answers and t.route == "audit"]
        outcomes = dict(store.audit_outcomes(TASK, fingerprint, policy_version=new[0].policy_version))
        trainable = set(store.teacher_evidence(TASK, fingerprint).ids)
    unparsed, parsed = sorted(new, key=lambda t: t.id)
    assert (unparsed.input, unparsed.source, unparsed.predicted) == (text, "unparsed", predicted)
    assert (parsed.input, parsed.source, parsed.predicted) == (other, "teacher", other_predicted)
    assert outcomes[unparsed.id] is False and outcomes[parsed.id] is (other_label == other_predicted)
    assert unparsed.id not in trainable and parsed.id in trainable


# -- misses: a fresh store, every call goes to the chain -----------------------------------
@pytest.fixture
def fresh(teacher, db_path, fake_embedder):
    chain = make_chain(teacher, stream_usage=True)
    wrapper = wrap(chain, db_path, fake_embedder)
    yield teacher, chain, wrapper, db_path
    wrapper.close()


def test_miss_runs_the_chain_nested_and_records_it(fresh, banking_subset):
    server, chain, wrapper, db = fresh
    text, label = banking_subset[0]
    with collect_runs() as runs:
        assert wrapper.invoke({"text": text}) == label
    run = runs.traced_runs[0]
    assert run.name == "TracedRunnable" and "tracer:llm" in run.tags
    assert run.extra["metadata"]["tracer_handled"] is False and run.extra["metadata"]["tracer_reason"] == "no_policy"
    assert [child.name for child in run.child_runs] == ["RunnableSequence"]
    assert "ChatOpenAI" in [grandchild.name for grandchild in run.child_runs[0].child_runs]
    assert "tracer:llm" not in run.child_runs[0].tags
    wrapper.tracer.flush()
    (trace,) = teacher_traces(db)
    assert (trace.input, trace.label, trace.source) == (text, label, "teacher")


def test_stream_miss_passes_the_chain_chunks_unchanged(fresh, banking_subset):
    server, chain, wrapper, db = fresh
    text, label = banking_subset[41]
    direct = list(chain.stream({"text": text}))
    assert len(direct) > 1
    assert list(wrapper.stream({"text": text})) == direct
    wrapper.tracer.flush()
    (trace,) = teacher_traces(db)
    assert trace.label == label and trace.prompt_tokens and trace.completion_tokens == 3


async def test_async_misses(fresh, banking_subset):
    server, chain, wrapper, db = fresh
    (t1, l1), (t2, l2), (t3, l3) = banking_subset[0], banking_subset[40], banking_subset[80]
    assert await wrapper.ainvoke({"text": t1}) == l1
    assert await wrapper.abatch([{"text": t2}, {"text": t3}]) == [l2, l3]
    chunks = [c async for c in wrapper.astream({"text": t1})]
    assert "".join(chunks) == l1 and len(chunks) > 1
    events = [e async for e in wrapper.astream_events({"text": t2}, version="v2")]
    names = {e["name"] for e in events}
    assert {"TracedRunnable", "RunnableSequence", "ChatOpenAI"} <= names
    assert events[-1]["name"] == "TracedRunnable" and events[-1]["data"]["output"] == l2
    assert server.request_count == 5
    wrapper.tracer.flush()
    assert sorted(t.label for t in teacher_traces(db)) == sorted([l1, l2, l3, l1, l2])


def test_chain_errors_are_reraised_unchanged_and_record_nothing(fresh, banking_subset):
    server, chain, wrapper, db = fresh
    text = banking_subset[0][0]
    server.fail_next(1, status=500)
    with pytest.raises(openai.InternalServerError):
        wrapper.invoke({"text": text})
    server.fail_next(1, status=400)
    with pytest.raises(openai.BadRequestError):
        list(wrapper.stream({"text": text}))
    server.fail_next(1, status=500)
    results = wrapper.batch([{"text": text}, {"text": banking_subset[40][0]}], return_exceptions=True)
    assert sum(isinstance(r, openai.InternalServerError) for r in results) == 1
    server.fail_next(1, status=500)
    with pytest.raises(openai.InternalServerError):
        wrapper.batch([{"text": text}])
    wrapper.tracer.flush()
    assert len(teacher_traces(db)) == 1


async def test_async_chain_errors_are_reraised(fresh, banking_subset):
    server, chain, wrapper, db = fresh
    server.fail_next(1, status=500)
    with pytest.raises(openai.InternalServerError):
        await wrapper.ainvoke({"text": banking_subset[0][0]})
    server.fail_next(1, status=500)
    with pytest.raises(openai.InternalServerError):
        [c async for c in wrapper.astream({"text": banking_subset[0][0]})]
    wrapper.tracer.flush()
    assert teacher_traces(db) == []


def test_tracer_failure_falls_back_to_the_chain(rows, fake_embedder, tmp_path, caplog):
    """A failing embedder under a deployed policy: every call still answers, through the chain."""

    def broken_embedder(texts: list[str]):
        raise RuntimeError("embedding service is down")

    db = tmp_path / "tracer.db"
    with LocalTeacher(dict(rows)) as server:
        wrapper = wrap(make_chain(server), db, broken_embedder, policy_check_s=0.0)
        fingerprint = wrapper.tracer_for({"text": rows[0][0]}).fingerprint
        with Tracer(TASK, db, alpha=0.9, fingerprint=fingerprint, embedder=fake_embedder, auto_refit=False) as fitter:
            fitter.record_many([t for t, _ in rows], [y for _, y in rows])
            assert fitter.fit().deployed
        assert wrapper.tracer_for({"text": rows[0][0]}).policy_version is not None
        with caplog.at_level(logging.WARNING), collect_runs() as runs:
            for text, label in rows[:3]:
                assert wrapper.invoke({"text": text}) == label
        assert server.request_count == 3
        assert {run.extra["metadata"]["tracer_reason"] for run in runs.traced_runs} == {"error"}
        failures = [r for r in caplog.records if r.levelno >= logging.WARNING and "fail" in r.getMessage()]
        assert len(failures) == 1, "a tracer failure is logged once, not per call"
        wrapper.close()


def test_input_tracer_rejects_still_gets_the_chain_answer(fresh, caplog):
    server, chain, wrapper, db = fresh
    with caplog.at_level(logging.WARNING, logger="tracer_langchain"):
        assert wrapper.invoke({"text": "   "}) == "unknown"
        assert wrapper.invoke({"text": ""}) == "unknown"
    assert server.request_count == 2
    messages = [r.getMessage() for r in caplog.records]
    assert sum("tracer route failed" in m for m in messages) == 1
    assert sum("tracer record failed" in m for m in messages) == 1
    wrapper.tracer.flush()
    assert teacher_traces(db) == []


def test_schemas_config_specs_and_composition_delegate(fresh, banking_subset):
    server, chain, wrapper, db = fresh
    assert wrapper.get_input_schema().model_json_schema() == chain.get_input_schema().model_json_schema()
    assert wrapper.get_output_schema().model_json_schema() == chain.get_output_schema().model_json_schema()
    assert wrapper.InputType == chain.InputType and wrapper.OutputType is str
    assert "tracer_mode" in [spec.id for spec in wrapper.config_specs]
    text, label = banking_subset[0]
    assert (wrapper | RunnableLambda(str.upper)).invoke({"text": text}) == label.upper()
    assert wrapper.with_config(run_name="intent").invoke({"text": text}) == label


def test_callbacks_see_the_wrapper_run(fresh, banking_subset):
    server, chain, wrapper, db = fresh

    class Names(BaseCallbackHandler):
        def __init__(self):
            self.starts = []

        def on_chain_start(self, serialized, inputs, *, name=None, tags=None, **kwargs):
            self.starts.append((name, tuple(tags or ())))

    handler = Names()
    wrapper.invoke({"text": banking_subset[0][0]}, {"callbacks": [handler], "run_name": "intent-router"})
    assert handler.starts[0] == ("intent-router", ("tracer:llm",))
    assert ("RunnableSequence", ()) in handler.starts


def test_bad_arguments_are_clear_errors(teacher, db_path):
    chain = make_chain(teacher)
    with pytest.raises(IntegrationConfigError, match="Runnable"):
        with_tracer(lambda x: x, task=TASK)
    with pytest.raises(IntegrationConfigError, match="task"):
        with_tracer(chain, task=" ")
    with pytest.raises(IntegrationConfigError, match="to_label and from_label"):
        with_tracer(chain, task=TASK, db=db_path, to_label=str)
    with pytest.raises(IntegrationConfigError, match="text_fn"):
        with_tracer(chain, task=TASK, db=db_path, text_fn="text")


def test_unknown_tracer_options_are_clear_errors(teacher, db_path):
    chain = make_chain(teacher)
    with pytest.raises(IntegrationConfigError, match=r"unknown option\(s\) \['tracer'\]"):
        with_tracer(chain, task=TASK, db=db_path, tracer=object())
    with pytest.raises(IntegrationConfigError, match="ignore_inputs"):
        with_tracer(chain, task=TASK, db=db_path, ignore_inputs="granularity")
    with pytest.raises(SettingsError, match="audit_rate"):
        with_tracer(chain, task=TASK, db=db_path, audit_rate=1.5)
    with pytest.raises(IntegrationConfigError, match="no call has been made"):
        _ = with_tracer(chain, task=TASK, db=db_path).tracer
