"""One prompt is one task across integrations (issue 23, point 1): a version is found by its fingerprint.

End to end: a real SQLite file, real HTTP to the local teacher, the real LangChain wrapper and
`litellm.completion`, `tracer tasks` through click; then the resolution itself on a real store.
"""

from __future__ import annotations

import json
import threading
import time

import litellm
import pytest
from click.testing import CliRunner
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_openai import ChatOpenAI

from tracer_core import Tracer, TraceStore, identify
from tracer_core.cli import main
from tracer_core.identity import auto_task
from tracer_core.serving import naming
from tracer_core.serving.naming import TaskNames, choose_task
from tracer_langchain import with_tracer
from tracer_litellm import TracerCallback

S = "Classify the banking query into its intent. Answer with the label only."
OPTIONS = {"alpha": 0.9, "audit_rate": 0.0}


def chain_of(teacher, db, fake_embedder):
    prompt = ChatPromptTemplate.from_messages([("system", S), ("human", "{text}")])
    llm = ChatOpenAI(model="stand-in", base_url=teacher.base_url, api_key="x", temperature=0, max_retries=0)
    return with_tracer(prompt | llm | StrOutputParser(), task="intent", db=db, embedder=fake_embedder,
                       auto_refit=False, **OPTIONS)


def ask_litellm(teacher, text: str):
    return litellm.completion(model="openai/stand-in", api_base=teacher.base_url, api_key="x", temperature=0,
                              messages=[{"role": "system", "content": S}, {"role": "user", "content": text}])


@pytest.fixture
def callback(db_path, fake_embedder):
    callback = TracerCallback(db=str(db_path), embedder=fake_embedder, refit_every=10**6, **OPTIONS)
    litellm.callbacks = [callback]
    yield callback
    litellm.logging_callback_manager._reset_all_callbacks()
    callback.close()


def task_rows(db) -> list[dict]:
    result = CliRunner().invoke(main, ["tasks", "--db", str(db), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_litellm_without_a_task_uses_the_chains_task_and_policy(teacher, db_path, banking_subset, fake_embedder,
                                                               callback):
    chain = chain_of(teacher, db_path, fake_embedder)
    texts, labels = [t for t, _ in banking_subset], [label for _, label in banking_subset]
    assert chain.batch([{"text": t} for t in texts[:20]]) == labels[:20]  # over HTTP, recorded under `intent`
    tracer = chain.tracer
    assert tracer.task == "intent"
    tracer.record_many(texts[20:], labels[20:])
    assert tracer.fit().deployed
    handled = [t for t, d in zip(texts, tracer.route_many(texts)) if d.handled]
    asked = teacher.request_count

    response = ask_litellm(teacher, handled[0])
    callback.flush()
    view = response._hidden_params["tracer"]
    assert (view["handled"], view["task"], view["fingerprint"]) == (True, "intent", tracer.fingerprint)
    assert teacher.request_count == asked  # the policy answered: no request reached the teacher
    [row] = task_rows(db_path)
    assert (row["task"], row["fingerprint"], row["surrogate"]) == ("intent", tracer.fingerprint, 1)


def test_a_chain_joins_the_version_litellm_recorded_first(teacher, db_path, banking_subset, fake_embedder, callback):
    texts, labels = [t for t, _ in banking_subset], [label for _, label in banking_subset]
    for text in texts[:5]:
        ask_litellm(teacher, text)
    callback.flush()
    tracer = callback.tracer_of(model="openai/stand-in", temperature=0,
                                messages=[{"role": "system", "content": S}, {"role": "user", "content": texts[0]}])
    assert tracer.task == auto_task(tracer.fingerprint)
    tracer.record_many(texts[5:], labels[5:])
    assert tracer.fit().deployed

    chain = chain_of(teacher, db_path, fake_embedder)
    handled = [t for t, d in zip(texts, tracer.route_many(texts)) if d.handled]
    asked = teacher.request_count
    assert chain.invoke({"text": handled[0]}) == tracer.route(handled[0]).label  # the surrogate's answer
    assert chain.tracer is tracer  # the same Tracer: its traces, its policy, its monitor
    assert teacher.request_count == asked
    chain.tracer.flush()
    [row] = task_rows(db_path)
    assert (row["task"], row["fingerprint"], row["surrogate"]) == (tracer.task, tracer.fingerprint, 1)


# -- the resolution on a real store ------------------------------------------------------------
FP = "938acc3a967b1234"


def test_choose_task_rule():
    automatic = auto_task(FP)
    assert choose_task([], FP, automatic, named=False) == automatic
    assert choose_task(["intent", "other"], FP, automatic, named=False) == "intent"  # the oldest name
    assert choose_task([automatic], FP, "intent", named=True) == automatic  # an explicit name joins the automatic one
    assert choose_task([automatic, "intent"], FP, "intent", named=True) == "intent"
    assert choose_task(["intent"], FP, "other", named=True) == "other"  # two explicit names stay two tasks
    assert choose_task([], FP, "intent", named=True) == "intent"


def registered(db_path, *tasks: str) -> TraceStore:
    store = TraceStore(db_path)
    for task in tasks:
        store.register_version(task, FP, {"model": "m"})
        time.sleep(0.01)
    return store


def test_a_resolution_is_cached_and_an_explicit_name_wins(db_path, monkeypatch):
    store = registered(db_path, "intent")
    asked: list[str] = []
    real = store.versions_by_fingerprint

    def counted(fp: str) -> list[str]:
        asked.append(fp)
        return real(fp)

    monkeypatch.setattr(store, "versions_by_fingerprint", counted)
    names = TaskNames(store)
    assert names.task_for(FP, auto_task(FP), named=False) == ("intent", True)
    assert names.task_for(FP, auto_task(FP), named=False) == ("intent", True)
    assert asked == [FP]  # asked once per CHECK_S
    assert names.task_for(FP, "other", named=True) == ("other", True)
    store.close()


@pytest.mark.caller_budget
def test_a_pending_lookup_defers_and_its_traces_move_to_the_answer(db_path, monkeypatch):
    store = registered(db_path, "intent")
    gate = threading.Event()
    real = store.versions_by_fingerprint
    monkeypatch.setattr(store, "versions_by_fingerprint", lambda fp: gate.wait(5) and real(fp))
    monkeypatch.setattr(naming, "CHECK_S", 0.0)
    names = TaskNames(store)
    automatic = auto_task(FP)
    assert names.task_for(FP, automatic, named=False) == (automatic, False)  # nothing waits for the store
    Tracer(automatic, store, fingerprint=FP).record("my card is lost", "lost_card")
    store.flush()
    gate.set()
    deadline = time.monotonic() + 5
    while names.task_for(FP, automatic, named=False) != ("intent", True) and time.monotonic() < deadline:
        time.sleep(0.02)
    store.flush()
    deadline = time.monotonic() + 5
    while store.has_traces(automatic, FP) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [t.label for t in store.iter_traces("intent", fingerprint=FP)] == ["lost_card"]
    assert store.versions_by_fingerprint(FP) == ["intent"]
    store.close()


def test_traces_of_a_certified_name_are_never_moved(db_path):
    store = registered(db_path)
    Tracer("a", store, fingerprint=FP).record("my card is lost", "lost_card")
    store.flush()
    store.log_suspension("a", FP, action="suspend", reason="by hand", details={})
    assert store.move_traces("a", FP, "b") == 0
    assert store.has_traces("a", FP) and not store.has_traces("b", FP)
    store.close()


def test_fingerprints_of_both_integrations_agree():
    """The unit contract the end-to-end tests rely on: the same description is the same fingerprint."""
    identity = identify(model="openai/stand-in", messages=[("system", S), ("user", "x")], routed_text="x")
    assert identify(model="openai/stand-in", messages=[("system", S), ("human", "y")], routed_text="y",
                    origin="langchain").fingerprint == identity.fingerprint
