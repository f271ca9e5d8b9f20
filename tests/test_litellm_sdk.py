"""TracerCallback through the real LiteLLM SDK and Router, over real HTTP to a LocalTeacher.

Every short-circuit test counts the teacher's requests: a hit is a call that sent none.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import litellm
import pytest
from litellm.integrations.custom_logger import CustomLogger

from tracer_core import Tracer, TraceStore
from tracer_demo.local_teacher import LocalTeacher
from tracer_litellm import TracerCallback
from tracer_litellm.request import describe_call

SYSTEM = {"role": "system", "content": "Classify the banking query into its intent. Answer with the label only."}
ALPHA = 0.9
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}


def messages_for(text: str) -> list[dict]:
    return [SYSTEM, {"role": "user", "content": text}]


def call_kwargs(srv, text: str, **extra) -> dict:
    return {
        "model": "openai/teacher",
        "api_base": srv.base_url,
        "api_key": "sk-test",
        "messages": messages_for(text),
        **extra,
    }


def traces(db: Path) -> list[dict]:
    if not db.exists():
        return []
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        rows = conn.execute("SELECT * FROM traces ORDER BY id").fetchall()
    finally:
        conn.close()
    return [dict(r) for r in rows]


def new_traces(db: Path, after: int) -> list[dict]:
    return [t for t in traces(db) if t["id"] > after]


def last_id(db: Path) -> int:
    return max((t["id"] for t in traces(db)), default=0)


def router_for(srv) -> litellm.Router:
    params = {"model": "openai/teacher", "api_base": srv.base_url, "api_key": "sk-test"}
    return litellm.Router(model_list=[{"model_name": "intent", "litellm_params": params}])


class CacheHitSpy(CustomLogger):
    """Another logger of the same calls: what LiteLLM tells it about cache hits."""

    def __init__(self) -> None:
        super().__init__()
        self.cache_hits: list[object] = []

    def log_success_event(self, kwargs, response_obj, start_time, end_time):
        self.cache_hits.append(kwargs.get("cache_hit"))

    async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):
        self.cache_hits.append(kwargs.get("cache_hit"))


@pytest.fixture
def use_callback():
    """Install callbacks into LiteLLM's global state for one test, then put everything back."""
    made: list[TracerCallback] = []

    def install(*others: CustomLogger, **kwargs) -> TracerCallback:
        kwargs.setdefault("audit_rate", 0.0)
        callback = TracerCallback(**kwargs)
        litellm.callbacks = [callback, *others]
        made.append(callback)
        return callback

    yield install
    for callback in made:
        callback.close()
    litellm.logging_callback_manager._reset_all_callbacks()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, banking_subset, fake_embedder):
    """A store with a deployed policy for the SYSTEM prompt task, and texts that policy answers."""
    db = tmp_path_factory.mktemp("trained") / "tracer.db"
    info = describe_call({"model": "openai/teacher", "messages": messages_for("x")})
    tracer = Tracer(task=info.task, db=str(db), alpha=ALPHA, fingerprint=info.fingerprint, embedder=fake_embedder,
                    auto_refit=False, audit_rate=0.0)
    try:
        tracer.record_many([t for t, _ in banking_subset], [label for _, label in banking_subset])
        tracer.flush()
        certificate = tracer.fit()
        assert certificate.deployed, certificate.reason
        decisions = tracer.route_many([t for t, _ in banking_subset])
        handled = [(t, d.label) for (t, _), d in zip(banking_subset, decisions) if d.handled]
    finally:
        tracer.close()
    assert len(handled) >= 10, "the policy should answer some training queries"
    return db, handled[:10], info


@pytest.fixture
def trained_db(trained, tmp_path) -> Path:
    db = tmp_path / "tracer.db"
    shutil.copy(trained[0], db)
    return db


@pytest.fixture
def hits(trained) -> list[tuple[str, str]]:
    return trained[1]


@pytest.fixture
def task(trained):
    return trained[2]


# --- recording --------------------------------------------------------------------------------


def test_sync_completion_is_recorded_as_a_teacher_trace(use_callback, teacher, db_path, banking_subset, fake_embedder):
    callback = use_callback(alpha=ALPHA, db=str(db_path), embedder=fake_embedder)
    text, label = banking_subset[0]
    response = litellm.completion(**call_kwargs(teacher, text))
    assert response.choices[0].message.content == label
    callback.flush()
    [trace] = traces(db_path)
    info = describe_call({"model": "openai/teacher", "messages": messages_for(text)})
    assert (trace["task"], trace["fingerprint"], trace["input"], trace["label"]) == (info.task, info.fingerprint, text, label)
    assert (trace["source"], trace["route"]) == ("teacher", "no_policy")
    assert trace["model"] == "openai/teacher"
    assert trace["prompt_tokens"] == response.usage.prompt_tokens
    assert trace["completion_tokens"] == response.usage.completion_tokens
    assert trace["latency_ms"] is not None and trace["latency_ms"] >= 0
    assert teacher.request_count == 1
    version = callback.registry.store.versions(info.task)
    assert [v["fingerprint"] for v in version] == [info.fingerprint]


async def test_async_calls_streamed_or_not_are_recorded(use_callback, teacher, db_path, banking_subset, fake_embedder):
    callback = use_callback(alpha=ALPHA, db=str(db_path), embedder=fake_embedder)
    (text1, label1), (text2, label2) = banking_subset[1], banking_subset[2]
    await litellm.acompletion(**call_kwargs(teacher, text1))
    stream = await litellm.acompletion(**call_kwargs(teacher, text2), stream=True)
    chunks = [chunk async for chunk in stream]
    assert litellm.stream_chunk_builder(chunks).choices[0].message.content == label2
    await callback.aflush()
    assert sorted((t["input"], t["label"], t["source"]) for t in traces(db_path)) == sorted(
        [(text1, label1, "teacher"), (text2, label2, "teacher")]
    )
    assert teacher.request_count == 2


def test_flush_waits_for_litellm_logging_of_an_acompletion_batch(use_callback, teacher, db_path, banking_subset, fake_embedder):
    """Issue 11.5: a fit right after an acompletion batch must see every trace: flush, then count, no polling."""
    callback = use_callback(alpha=ALPHA, db=str(db_path), embedder=fake_embedder)
    batch = banking_subset[10:50]

    async def run() -> None:
        await asyncio.gather(*(litellm.acompletion(**call_kwargs(teacher, text)) for text, _ in batch))

    asyncio.run(run())
    callback.flush()
    tracer = callback.tracer_of(model="openai/teacher", messages=messages_for("any query"))
    evidence = tracer.store.teacher_evidence(tracer.task, tracer.fingerprint)  # what a fit() now trains on
    assert sorted(evidence.texts) == sorted(text for text, _ in batch)
    assert teacher.request_count == len(batch)


def test_explicit_task_from_metadata(use_callback, teacher, db_path, banking_subset, fake_embedder):
    callback = use_callback(alpha=ALPHA, db=str(db_path), embedder=fake_embedder)
    text, label = banking_subset[3]
    litellm.completion(**call_kwargs(teacher, text, metadata={"tracer_task": "support-intent"}))
    callback.flush()
    [trace] = traces(db_path)
    assert (trace["task"], trace["label"]) == ("support-intent", label)


# --- short-circuit ----------------------------------------------------------------------------


def test_sync_hit_sends_no_request_and_is_recorded_as_surrogate(use_callback, teacher, trained_db, hits, fake_embedder):
    callback = use_callback(alpha=ALPHA, db=str(trained_db), embedder=fake_embedder)
    before = last_id(trained_db)
    for text, label in hits[:3]:
        response = litellm.completion(**call_kwargs(teacher, text))
        assert response.choices[0].message.content == label
        assert response._hidden_params["cache_hit"] is True
    assert teacher.request_count == 0
    callback.flush()
    surrogate = new_traces(trained_db, before)
    assert [(t["input"], t["source"], t["route"]) for t in surrogate] == [(t, "surrogate", "handled") for t, _ in hits[:3]]
    assert all(t["policy_version"] == 1 and t["predicted"] == t["label"] for t in surrogate)


def test_sync_stream_hit_is_a_stream_of_the_label(use_callback, teacher, trained_db, hits, fake_embedder):
    callback = use_callback(alpha=ALPHA, db=str(trained_db), embedder=fake_embedder)
    before = last_id(trained_db)
    text, label = hits[0]
    stream = litellm.completion(**call_kwargs(teacher, text), stream=True)
    assert stream._hidden_params["tracer"]["handled"] is True
    assert litellm.stream_chunk_builder(list(stream)).choices[0].message.content == label
    assert teacher.request_count == 0
    callback.flush()
    [trace] = new_traces(trained_db, before)
    assert (trace["input"], trace["label"], trace["source"]) == (text, label, "surrogate")


async def test_async_hit_sends_no_request(use_callback, teacher, trained_db, hits, fake_embedder):
    callback = use_callback(alpha=ALPHA, db=str(trained_db), embedder=fake_embedder)
    before = last_id(trained_db)
    text, label = hits[0]
    response = await litellm.acompletion(**call_kwargs(teacher, text))
    assert response.choices[0].message.content == label
    assert response.usage.total_tokens == 0
    assert teacher.request_count == 0
    await callback.aflush()
    [trace] = new_traces(trained_db, before)
    assert (trace["input"], trace["label"], trace["source"]) == (text, label, "surrogate")


async def test_async_stream_hit_is_a_stream_of_the_label(use_callback, teacher, trained_db, hits, fake_embedder):
    callback = use_callback(alpha=ALPHA, db=str(trained_db), embedder=fake_embedder)
    before = last_id(trained_db)
    text, label = hits[1]
    stream = await litellm.acompletion(**call_kwargs(teacher, text), stream=True)
    chunks = [chunk async for chunk in stream]
    assert litellm.stream_chunk_builder(chunks).choices[0].message.content == label
    assert stream._hidden_params["tracer"]["handled"] is True
    assert teacher.request_count == 0
    await callback.aflush()
    [trace] = new_traces(trained_db, before)
    assert (trace["input"], trace["label"], trace["source"], trace["route"]) == (text, label, "surrogate", "handled")


async def test_async_router_hit_sends_no_request_and_miss_reaches_the_teacher(
    use_callback, teacher, trained_db, hits, fake_embedder
):
    use_callback(alpha=ALPHA, db=str(trained_db), embedder=fake_embedder)
    router = router_for(teacher)
    text, label = hits[2]
    response = await router.acompletion(model="intent", messages=messages_for(text))
    assert response.choices[0].message.content == label
    assert teacher.request_count == 0
    other = [SYSTEM | {"content": "A different prompt."}, {"role": "user", "content": text}]
    await router.acompletion(model="intent", messages=other)
    assert teacher.request_count == 1


def test_sync_router_is_short_circuited(use_callback, teacher, trained_db, hits, fake_embedder):
    """Issue 11.5: 30 of 30 sync Router calls reached the server while completion/acompletion were answered."""
    callback = use_callback(alpha=ALPHA, db=str(trained_db), embedder=fake_embedder)
    before = last_id(trained_db)
    router = router_for(teacher)
    for text, label in hits * 3:
        response = router.completion(model="intent", messages=messages_for(text))
        assert response.choices[0].message.content == label
        assert response._hidden_params["tracer"]["handled"] is True
    assert teacher.request_count == 0
    callback.flush()
    recorded = new_traces(trained_db, before)
    assert len(recorded) == 30 and {t["source"] for t in recorded} == {"surrogate"}


def test_caching_false_is_routed_on_sync_and_async_paths(use_callback, teacher, trained_db, hits, fake_embedder):
    """`caching=False` is LiteLLM's response cache only (the Router sends it on every call): tracer still routes."""
    use_callback(alpha=ALPHA, db=str(trained_db), embedder=fake_embedder)
    text, label = hits[3]
    assert litellm.completion(**call_kwargs(teacher, text, caching=False)).choices[0].message.content == label
    response = asyncio.run(litellm.acompletion(**call_kwargs(teacher, text, caching=False)))
    assert response.choices[0].message.content == label
    assert teacher.request_count == 0
    refused = litellm.completion(**call_kwargs(teacher, text, cache={"no-cache": True}))
    assert refused._hidden_params["tracer"]["reason"] == "tracer_off"
    asyncio.run(litellm.acompletion(**call_kwargs(teacher, text, cache={"no-cache": True})))
    assert teacher.request_count == 2


# --- what is never short-circuited ------------------------------------------------------------


def test_temperature_is_part_of_the_task(use_callback, teacher, trained_db, hits, task, fake_embedder):
    """Issue 11.2: a call at another temperature is another task version, without the certified policy."""
    callback = use_callback(alpha=ALPHA, db=str(trained_db), embedder=fake_embedder)
    before = last_id(trained_db)
    text, label = hits[0]
    response = litellm.completion(**call_kwargs(teacher, text, temperature=0.7))
    assert response.choices[0].message.content == label
    assert response._hidden_params["tracer"]["reason"] == "no_policy"
    assert teacher.request_count == 1
    callback.flush()
    [trace] = new_traces(trained_db, before)
    assert trace["fingerprint"] != task.fingerprint
    assert (trace["source"], trace["route"]) == ("teacher", "no_policy")
    assert callback.registry.store.versions(trace["task"])[0]["description"]["params"] == {"temperature": 0.7}


def conversation(*turns: str) -> list[dict]:
    """SYSTEM, then alternating user/assistant turns ending with a user message."""
    roles = ["user", "assistant"]
    return [SYSTEM, *({"role": roles[i % 2], "content": t} for i, t in enumerate(turns))]


def test_multi_turn_calls_share_one_version_are_recorded_and_never_short_circuited(
    use_callback, teacher, trained_db, hits, fake_embedder
):
    """Issue 11.5: each conversation became its own single-trace task; history must never reach the certificate."""
    callback = use_callback(alpha=ALPHA, db=str(trained_db), embedder=fake_embedder)
    before = last_id(trained_db)
    (a, la), (b, lb), (c, lc) = hits[0], hits[1], hits[2]
    conversations = [conversation(a, la, b), conversation(b, lb, c), conversation(c, lc, a, la, b)]
    for messages in conversations[:2]:
        response = litellm.completion(model="openai/teacher", api_base=teacher.base_url, api_key="k", messages=messages)
        assert response._hidden_params["tracer"]["reason"] == "conversation_history"
    asyncio.run(litellm.acompletion(model="openai/teacher", api_base=teacher.base_url, api_key="k", messages=conversations[2]))
    assert teacher.request_count == 3
    callback.flush()
    recorded = new_traces(trained_db, before)
    assert [(t["input"], t["source"], t["route"]) for t in recorded] == [
        (b, "teacher", "conversation_history"), (c, "teacher", "conversation_history"), (b, "teacher", "conversation_history")
    ]
    assert len({(t["task"], t["fingerprint"]) for t in recorded}) == 1
    [version] = callback.registry.store.versions(recorded[0]["task"])
    assert version["description"]["history"] is True


def test_declared_few_shot_turns_are_a_prompt_of_their_own(use_callback, teacher, trained_db, hits, fake_embedder):
    callback = use_callback(alpha=ALPHA, db=str(trained_db), embedder=fake_embedder)
    before = last_id(trained_db)
    (a, la), (b, _) = hits[0], hits[1]
    response = litellm.completion(
        model="openai/teacher", api_base=teacher.base_url, api_key="k", messages=conversation(a, la, b),
        metadata={"tracer_few_shot": True},
    )
    assert response._hidden_params["tracer"]["reason"] == "no_policy"  # routed: a new prompt without a policy yet
    callback.flush()
    [trace] = new_traces(trained_db, before)
    assert trace["route"] == "no_policy"


def test_tool_turns_are_not_routable(use_callback, teacher, trained_db, hits, fake_embedder):
    use_callback(alpha=ALPHA, db=str(trained_db), embedder=fake_embedder)
    text = hits[0][0]
    messages = [
        SYSTEM, {"role": "user", "content": text},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "no result"},
        {"role": "user", "content": text},
    ]
    response = litellm.completion(model="openai/teacher", api_base=teacher.base_url, api_key="k", messages=messages)
    assert response._hidden_params["tracer"]["reason"] == "not_routable"
    assert teacher.request_count == 1


def test_image_content_goes_to_the_llm(use_callback, teacher, trained_db, hits, fake_embedder):
    """Issue 11.7: a message with text and an image was answered from the text alone."""
    callback = use_callback(alpha=ALPHA, db=str(trained_db), embedder=fake_embedder)
    before = last_id(trained_db)
    text, label = hits[0]
    messages = [SYSTEM, {"role": "user", "content": [{"type": "text", "text": text}, IMAGE]}]
    for call in (litellm.completion, lambda **kw: asyncio.run(litellm.acompletion(**kw))):
        response = call(model="openai/teacher", api_base=teacher.base_url, api_key="k", messages=messages)
        assert response.choices[0].message.content == label
        assert response._hidden_params["tracer"]["reason"] == "non_text_content"
    assert teacher.request_count == 2
    callback.flush()
    assert [(t["input"], t["route"]) for t in new_traces(trained_db, before)] == [(text, "non_text_content")] * 2


def test_several_choices_go_to_the_llm(use_callback, teacher, trained_db, hits, fake_embedder):
    """Issue 11.5: n=2 returned one choice. Such calls are sent to the LLM (reason multiple_choices)."""
    callback = use_callback(alpha=ALPHA, db=str(trained_db), embedder=fake_embedder)
    before = last_id(trained_db)
    text, label = hits[0]
    response = litellm.completion(**call_kwargs(teacher, text, n=2))
    assert response._hidden_params["tracer"]["reason"] == "multiple_choices"
    assert teacher.request_count == 1 and teacher.requests[0]["n"] == 2
    callback.flush()
    [trace] = new_traces(trained_db, before)
    assert (trace["label"], trace["route"], trace["source"]) == (label, "multiple_choices", "teacher")


def test_per_call_opt_out_on_every_path(use_callback, teacher, trained_db, hits, fake_embedder):
    """Issue 11.5: metadata tracer_mode was ignored. off: not routed, not recorded; observe: recorded, not routed."""
    callback = use_callback(alpha=ALPHA, db=str(trained_db), embedder=fake_embedder)
    before = last_id(trained_db)
    router = router_for(teacher)
    text, label = hits[0]
    paths = {
        "sync": lambda meta: litellm.completion(**call_kwargs(teacher, text, metadata=meta)),
        "async": lambda meta: asyncio.run(litellm.acompletion(**call_kwargs(teacher, text, metadata=meta))),
        "router": lambda meta: router.completion(model="intent", messages=messages_for(text), metadata=meta),
        "async router": lambda meta: asyncio.run(router.acompletion(model="intent", messages=messages_for(text), metadata=meta)),
    }
    for name, run in paths.items():
        assert run({"tracer_mode": "off"}).choices[0].message.content == label, name
        observed = run({"tracer_mode": "observe"})
        assert observed._hidden_params["tracer"]["reason"] == "tracer_off", name
        assert run({}).usage.total_tokens == 0, name  # the same call without opt-out is answered
    assert teacher.request_count == 2 * len(paths)
    callback.flush()
    recorded = new_traces(trained_db, before)
    assert sorted((t["source"], t["route"]) for t in recorded) == sorted(
        [("teacher", "tracer_off")] * len(paths) + [("surrogate", "handled")] * len(paths)
    )


def test_observe_mode_never_short_circuits(use_callback, teacher, trained_db, hits, fake_embedder):
    callback = use_callback(alpha=ALPHA, db=str(trained_db), embedder=fake_embedder, mode="observe")
    before = last_id(trained_db)
    litellm.completion(**call_kwargs(teacher, hits[0][0]))
    assert teacher.request_count == 1
    callback.flush()
    [trace] = new_traces(trained_db, before)
    assert (trace["source"], trace["route"]) == ("teacher", "tracer_off")


# --- audits -----------------------------------------------------------------------------------


def test_an_audited_call_reaches_the_llm_and_stores_the_would_be_label(use_callback, teacher, trained_db, hits, fake_embedder):
    # the core caps audit_rate below 1; at 0.999 the chance that this one call is not audited is 0.1%
    callback = use_callback(alpha=ALPHA, db=str(trained_db), embedder=fake_embedder, audit_rate=0.999)
    before = last_id(trained_db)
    text, label = hits[0]
    response = litellm.completion(**call_kwargs(teacher, text))
    assert teacher.request_count == 1
    assert response.usage.total_tokens > 0  # the teacher's answer, not the surrogate's
    assert response.choices[0].message.content == label
    assert response._hidden_params["tracer"] == {
        "handled": False, "reason": "audit", "policy_version": 1,
        "task": response._hidden_params["tracer"]["task"], "fingerprint": response._hidden_params["tracer"]["fingerprint"],
    }
    callback.flush()
    [trace] = new_traces(trained_db, before)
    assert (trace["source"], trace["route"], trace["predicted"], trace["policy_version"]) == ("teacher", "audit", label, 1)


def monitored(db: Path, task, before: int) -> tuple[list[tuple[int, bool]], list[int]]:
    """(the monitor's audit outcomes, the ids a fit may use) among traces after `before`."""
    with TraceStore(db) as store:
        version = store.latest_policy_version(task.task, fingerprint=task.fingerprint)
        assert version is not None
        outcomes = store.audit_outcomes(task.task, task.fingerprint, since_id=before, policy_version=version)
        evidence = store.teacher_evidence(task.task, task.fingerprint, since_id=before)
    return outcomes, evidence.ids


def test_a_cached_audit_reaches_the_monitor_and_never_trains(use_callback, teacher, trained_db, hits, task, fake_embedder):
    """Issue 21.6: an audit answered from the user's cache was dropped, so which audits counted depended on the input."""
    saved = litellm.cache
    litellm.cache = litellm.Cache()
    try:
        callback = use_callback(alpha=ALPHA, db=str(trained_db), embedder=fake_embedder, audit_rate=0.999)
        before = last_id(trained_db)
        text, label = hits[0]
        answers = [litellm.completion(**call_kwargs(teacher, text)) for _ in range(2)]
    finally:
        litellm.cache = saved
    assert teacher.request_count == 1 and answers[1]._hidden_params.get("cache_hit") is True
    assert answers[0]._hidden_params["tracer"]["reason"] == "audit"  # LiteLLM returns a cache hit before tracer marks it
    callback.flush()
    first, cached = new_traces(trained_db, before)
    assert (first["source"], first["route"], first["predicted"]) == ("teacher", "audit", label)
    assert (cached["source"], cached["route"], cached["predicted"], cached["label"]) == ("cached", "audit", label, label)
    assert monitored(trained_db, task, before) == ([(first["id"], True), (cached["id"], True)], [first["id"]])
    assert callback.tracer_of(**call_kwargs(teacher, text)).status()["monitor"]["audits"] == 2


def test_an_unparsable_audit_answer_is_a_disagreement_and_never_trains(use_callback, trained_db, hits, task, fake_embedder):
    """Issue 21.6: an audit whose answer did not parse was dropped; now the monitor counts it against the policy."""
    (text, label), (other, other_label) = hits[0], hits[1]
    answers = {text: "", other: other_label}  # the teacher answers `text` with empty content
    with LocalTeacher(lambda messages: answers[messages[-1]["content"]]) as silent:
        callback = use_callback(alpha=ALPHA, db=str(trained_db), embedder=fake_embedder, audit_rate=0.999)
        before = last_id(trained_db)
        assert litellm.completion(**call_kwargs(silent, text)).choices[0].message.content in ("", None)
        assert litellm.completion(**call_kwargs(silent, other)).choices[0].message.content == other_label
        callback.flush()
    unparsed, parsed = new_traces(trained_db, before)
    assert (unparsed["source"], unparsed["route"], unparsed["predicted"]) == ("unparsed", "audit", label)
    assert (parsed["source"], parsed["route"]) == ("teacher", "audit")
    assert monitored(trained_db, task, before) == ([(unparsed["id"], False), (parsed["id"], True)], [parsed["id"]])


def test_a_callback_stricter_than_the_certificate_defers_with_its_own_reason(
    use_callback, teacher, trained_db, hits, fake_embedder, tmp_path
):
    """Issue 21.4: the policy is certified at alpha 0.9, delta 0.05; a callback at 0.99 or at delta 0.001 asks more,
    one at 0.8 less. Each level gets its own copy of the store (one process routes a version at one level)."""
    text, label = hits[0]
    for i, level in enumerate(({"alpha": 0.99}, {"alpha": ALPHA, "delta": 0.001})):
        db = shutil.copy(trained_db, tmp_path / f"strict{i}.db")
        callback = use_callback(db=str(db), embedder=fake_embedder, **level)
        response = litellm.completion(**call_kwargs(teacher, text))
        assert response.choices[0].message.content == label and response.usage.total_tokens > 0
        assert response._hidden_params["tracer"]["reason"] == "not_certified_at_alpha"
        headers = asyncio.run(callback.async_post_call_response_headers_hook({}, None, response))
        assert headers["x-tracer-decision"] == "deferred" and headers["x-tracer-reason"] == "not_certified_at_alpha"
        callback.flush()
        [trace] = new_traces(db, last_id(trained_db))
        assert (trace["source"], trace["route"], trace["policy_version"]) == ("teacher", "not_certified_at_alpha", 1)
    assert teacher.request_count == 2
    use_callback(alpha=0.8, db=str(trained_db), embedder=fake_embedder)
    assert litellm.completion(**call_kwargs(teacher, text))._hidden_params["tracer"]["handled"] is True
    assert teacher.request_count == 2


# --- what other parts of the ecosystem see ----------------------------------------------------


def test_other_loggers_see_surrogate_answers_as_cache_hits(use_callback, teacher, trained_db, hits, fake_embedder):
    """Issue 11.4: async hits reached other loggers with cache_hit=False."""
    spy = CacheHitSpy()
    callback = use_callback(spy, alpha=ALPHA, db=str(trained_db), embedder=fake_embedder)
    (hit, _), (miss, _) = hits[0], ("What is the capital of France?", None)
    litellm.completion(**call_kwargs(teacher, hit))
    litellm.completion(**call_kwargs(teacher, miss))
    callback.flush()
    sync_seen = list(spy.cache_hits)

    async def run() -> None:
        await litellm.acompletion(**call_kwargs(teacher, hit))
        await litellm.acompletion(**call_kwargs(teacher, miss))
        stream = await litellm.acompletion(**call_kwargs(teacher, hit), stream=True)
        assert "".join([chunk.choices[0].delta.content or "" async for chunk in stream]) == hits[0][1]
        await callback.aflush()

    asyncio.run(run())
    assert [bool(x) for x in sync_seen] == [True, False]
    assert [bool(x) for x in spy.cache_hits[2:]] == [True, False, True]
    assert teacher.request_count == 2


async def test_every_response_carries_the_decision(use_callback, teacher, trained_db, hits, task, fake_embedder):
    use_callback(alpha=ALPHA, db=str(trained_db), embedder=fake_embedder)
    hit = await litellm.acompletion(**call_kwargs(teacher, hits[0][0]))
    miss = await litellm.acompletion(**call_kwargs(teacher, "What is the capital of France?"))
    assert hit._hidden_params["tracer"] == {
        "handled": True, "reason": "handled", "policy_version": 1, "task": task.task, "fingerprint": task.fingerprint,
    }
    assert miss._hidden_params["tracer"]["handled"] is False
    assert miss._hidden_params["tracer"]["reason"] in {"low_confidence", "out_of_distribution", "unseen_label"}
    assert miss._hidden_params["tracer"]["fingerprint"] == task.fingerprint
    assert teacher.request_count == 1


# --- failures fall through --------------------------------------------------------------------


def failing_embedder(texts: list[str]):
    raise RuntimeError("embedder exploded")


async def test_gate_failure_falls_through_to_the_teacher(use_callback, teacher, trained_db, hits):
    use_callback(alpha=ALPHA, db=str(trained_db), embedder=failing_embedder)
    text, label = hits[0]
    sync = litellm.completion(**call_kwargs(teacher, text))
    assert sync.choices[0].message.content == label
    assert sync._hidden_params["tracer"]["reason"] == "error"
    response = await litellm.acompletion(**call_kwargs(teacher, text))
    assert response.choices[0].message.content == label
    assert teacher.request_count == 2


async def test_unusable_store_never_fails_the_call(use_callback, teacher, tmp_path, hits):
    use_callback(alpha=ALPHA, db=str(tmp_path))  # a directory: the store cannot open
    text, label = hits[0]
    assert litellm.completion(**call_kwargs(teacher, text)).choices[0].message.content == label
    assert (await litellm.acompletion(**call_kwargs(teacher, text))).choices[0].message.content == label
    assert teacher.request_count == 2


# --- the user's own cache ---------------------------------------------------------------------


def test_user_cache_keeps_working_and_its_hits_are_not_training_data(use_callback, teacher, db_path, banking_subset, fake_embedder):
    saved = litellm.cache
    litellm.cache = litellm.Cache()
    try:
        callback = use_callback(alpha=ALPHA, db=str(db_path), embedder=fake_embedder)
        (text, label), (later, _) = banking_subset[5], banking_subset[6]
        for _ in range(2):
            assert litellm.completion(**call_kwargs(teacher, text)).choices[0].message.content == label
        assert teacher.request_count == 1
        litellm.completion(**call_kwargs(teacher, later))
        callback.flush()
        recorded = traces(db_path)
        assert [(t["input"], t["source"], t["route"]) for t in recorded] == [
            (text, "teacher", "no_policy"), (text, "cached", "no_policy"), (later, "teacher", "no_policy")]
        assert recorded[1]["cost_usd"] is None  # a cached answer cost nothing the recorded LLM costs should average
        tracer = callback.tracer_of(**call_kwargs(teacher, text))
        assert tracer.store.teacher_evidence(tracer.task, tracer.fingerprint).texts == [text, later]
    finally:
        litellm.cache = saved


# --- subprocesses: a plain install, and a clean exit -------------------------------------------

NO_FASTAPI = textwrap.dedent(
    """
    import importlib.abc, sys

    class NoFastAPI(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "fastapi" or name.startswith("fastapi."):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by test)")
            return None

    sys.meta_path.insert(0, NoFastAPI())

    import litellm
    from tests.conftest import HashEmbedder  # the embedder the trained store was fitted with
    from tracer_demo.local_teacher import LocalTeacher
    from tracer_litellm import TracerCallback

    db, alpha, text, label = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]
    callback = TracerCallback(alpha=alpha, db=db, audit_rate=0.0, embedder=HashEmbedder())
    litellm.callbacks = [callback]
    with LocalTeacher({text: "teacher-answer"}) as srv:
        kwargs = dict(model="openai/teacher", api_base=srv.base_url, api_key="sk-test",
                      messages=[SYSTEM, {"role": "user", "content": text}])
        assert callback.tracer_of(**kwargs).policy_version == 1  # a first call would not wait for the policy to load
        answer = litellm.completion(**kwargs).choices[0].message.content
        chunks = list(litellm.completion(**kwargs, stream=True))
        streamed = litellm.stream_chunk_builder(chunks).choices[0].message.content
        assert (answer, streamed, srv.request_count) == (label, label, 0), (answer, streamed, srv.request_count)
    assert "fastapi" not in sys.modules
    print("OK")
    """
)

ASYNC_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    import litellm
    from tracer_demo.local_teacher import LocalTeacher
    from tracer_litellm import TracerCallback

    db, texts = sys.argv[1], sys.argv[2:]
    litellm.callbacks = [TracerCallback(alpha=0.9, db=db)]

    async def main(srv):
        await asyncio.gather(*(litellm.acompletion(model="openai/teacher", api_base=srv.base_url, api_key="k",
                                                   messages=[SYSTEM, {"role": "user", "content": t}]) for t in texts))

    with LocalTeacher({t: "some_label" for t in texts}) as srv:
        asyncio.run(main(srv))
        print("requests", srv.request_count)
    """
)


def run_script(tmp_path: Path, body: str, *args: str) -> subprocess.CompletedProcess:
    script = tmp_path / "script.py"
    script.write_text(f"SYSTEM = {SYSTEM!r}\n" + body, encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LITELLM_LOCAL_MODEL_COST_MAP": "True",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env, timeout=180, check=False)


@pytest.mark.slow  # a subprocess Python
def test_sync_hit_works_without_proxy_packages(trained_db, hits, tmp_path):
    text, label = hits[0]
    result = run_script(tmp_path, NO_FASTAPI, str(trained_db), str(ALPHA), text, label)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("OK")


@pytest.mark.slow  # a subprocess Python
def test_async_script_exits_cleanly_and_keeps_every_trace(tmp_path, banking_subset):
    """Issue 11.5: async scripts logged `cannot schedule new futures after interpreter shutdown` at exit."""
    db = tmp_path / "exit.db"
    texts = [t for t, _ in banking_subset[:12]]
    result = run_script(tmp_path, ASYNC_SCRIPT, str(db), *texts)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "requests 12" in result.stdout
    assert "cannot schedule new futures" not in result.stderr
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert sorted(t["input"] for t in traces(db)) == sorted(texts)
