"""TracerCallback through the real LiteLLM SDK, over real HTTP to a LocalTeacher.

Every short-circuit test counts the teacher's requests: a hit is a call that sent none.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import litellm
import pytest

from tracer_core import Tracer
from tracer_litellm import TracerCallback
from tracer_litellm.request import describe_call

SYSTEM = {"role": "system", "content": "Classify the banking query into its intent. Answer with the label only."}
ALPHA = 0.9


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
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        rows = conn.execute("SELECT * FROM traces ORDER BY id").fetchall()
    finally:
        conn.close()
    return [dict(r) for r in rows]


def wait_for_traces(callback: TracerCallback, db: Path, n: int, source: str | None = None) -> list[dict]:
    """Traces once LiteLLM's logging thread has delivered `n` of them (bounded wait, not a timing assertion)."""
    deadline = time.monotonic() + 20
    while True:
        callback.flush()
        found = [t for t in traces(db) if source is None or t["source"] == source] if db.exists() else []
        if len(found) >= n or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


async def await_traces(callback: TracerCallback, db: Path, n: int, source: str | None = None) -> list[dict]:
    deadline = time.monotonic() + 20
    while True:
        await asyncio.to_thread(callback.flush)
        found = [t for t in traces(db) if source is None or t["source"] == source] if db.exists() else []
        if len(found) >= n or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.05)


@pytest.fixture
def use_callback():
    """Install callbacks into LiteLLM's global state for one test, then put everything back."""
    made: list[TracerCallback] = []
    saved_cache = litellm.cache

    def install(**kwargs) -> TracerCallback:
        callback = TracerCallback(**kwargs)
        litellm.callbacks = [callback]
        made.append(callback)
        return callback

    yield install
    litellm.logging_callback_manager._reset_all_callbacks()
    litellm.cache = saved_cache
    for callback in made:
        callback.close()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, banking_subset, fake_embedder):
    """A store with a deployed policy for the SYSTEM prompt task, and texts that policy answers."""
    db = tmp_path_factory.mktemp("trained") / "tracer.db"
    info = describe_call({"model": "openai/teacher", "messages": messages_for("x")})
    tracer = Tracer(task=info.task, db=str(db), alpha=ALPHA, fingerprint=info.fingerprint, embedder=fake_embedder, auto_refit=False)
    try:
        tracer.record_many([t for t, _ in banking_subset], [label for _, label in banking_subset])
        tracer.flush()
        certificate = tracer.fit()
        assert certificate.deployed, certificate.reason
        handled = [(t, d.label) for (t, _), d in zip(banking_subset, tracer.route_many([t for t, _ in banking_subset])) if d.handled]
    finally:
        tracer.close()
    assert len(handled) >= 10, "the policy should answer some training queries"
    return db, handled[:10]


@pytest.fixture
def trained_db(trained, tmp_path) -> Path:
    db = tmp_path / "tracer.db"
    shutil.copy(trained[0], db)
    return db


@pytest.fixture
def hits(trained) -> list[tuple[str, str]]:
    return trained[1]


# --- recording --------------------------------------------------------------------------------


def test_sync_completion_is_recorded_as_a_teacher_trace(use_callback, teacher, db_path, banking_subset, fake_embedder):
    callback = use_callback(alpha=ALPHA, db=str(db_path), embedder=fake_embedder)
    text, label = banking_subset[0]
    response = litellm.completion(**call_kwargs(teacher, text))
    assert response.choices[0].message.content == label
    [trace] = wait_for_traces(callback, db_path, 1)
    info = describe_call({"model": "openai/teacher", "messages": messages_for(text)})
    assert (trace["task"], trace["fingerprint"], trace["input"], trace["label"]) == (info.task, info.fingerprint, text, label)
    assert trace["source"] == "teacher"
    assert trace["model"] == "openai/teacher"
    assert trace["prompt_tokens"] == response.usage.prompt_tokens
    assert trace["completion_tokens"] == response.usage.completion_tokens
    assert trace["latency_ms"] is not None and trace["latency_ms"] >= 0
    assert json.loads(trace["metadata"])["deferred_reason"] == "no_policy"
    assert teacher.request_count == 1


async def test_async_calls_streamed_or_not_are_recorded(use_callback, teacher, db_path, banking_subset, fake_embedder):
    callback = use_callback(alpha=ALPHA, db=str(db_path), embedder=fake_embedder)
    (text1, label1), (text2, label2) = banking_subset[1], banking_subset[2]
    await litellm.acompletion(**call_kwargs(teacher, text1))
    stream = await litellm.acompletion(**call_kwargs(teacher, text2), stream=True)
    chunks = [chunk async for chunk in stream]
    assert litellm.stream_chunk_builder(chunks).choices[0].message.content == label2
    recorded = await await_traces(callback, db_path, 2)
    assert sorted((t["input"], t["label"], t["source"]) for t in recorded) == sorted(
        [(text1, label1, "teacher"), (text2, label2, "teacher")]
    )
    assert teacher.request_count == 2


def test_explicit_task_from_metadata(use_callback, teacher, db_path, banking_subset, fake_embedder):
    callback = use_callback(alpha=ALPHA, db=str(db_path), embedder=fake_embedder)
    text, label = banking_subset[3]
    litellm.completion(**call_kwargs(teacher, text, metadata={"tracer_task": "support-intent"}))
    [trace] = wait_for_traces(callback, db_path, 1)
    assert (trace["task"], trace["label"]) == ("support-intent", label)


# --- short-circuit ----------------------------------------------------------------------------


def test_sync_hit_sends_no_request_and_is_recorded_as_surrogate(use_callback, teacher, trained_db, hits, fake_embedder):
    callback = use_callback(alpha=ALPHA, db=str(trained_db), embedder=fake_embedder)
    before = len(traces(trained_db))
    for text, label in hits[:3]:
        response = litellm.completion(**call_kwargs(teacher, text))
        assert response.choices[0].message.content == label
        assert response._hidden_params["cache_hit"] is True
    assert teacher.request_count == 0
    surrogate = wait_for_traces(callback, trained_db, 3, source="surrogate")
    assert [t["input"] for t in surrogate] == [t for t, _ in hits[:3]]
    assert all(json.loads(t["metadata"])["policy_version"] is not None for t in surrogate)
    assert len([t for t in traces(trained_db) if t["source"] == "teacher"]) == before


def test_sync_stream_hit_is_a_stream_of_the_label(use_callback, teacher, trained_db, hits, fake_embedder):
    use_callback(alpha=ALPHA, db=str(trained_db), embedder=fake_embedder)
    text, label = hits[0]
    chunks = list(litellm.completion(**call_kwargs(teacher, text), stream=True))
    assert litellm.stream_chunk_builder(chunks).choices[0].message.content == label
    assert teacher.request_count == 0


async def test_async_hit_sends_no_request(use_callback, teacher, trained_db, hits, fake_embedder):
    callback = use_callback(alpha=ALPHA, db=str(trained_db), embedder=fake_embedder)
    text, label = hits[0]
    response = await litellm.acompletion(**call_kwargs(teacher, text))
    assert response.choices[0].message.content == label
    assert response.usage.total_tokens == 0
    assert response._hidden_params["tracer_surrogate"]["policy_version"] is not None
    assert teacher.request_count == 0
    [trace] = await await_traces(callback, trained_db, 1, source="surrogate")
    assert (trace["input"], trace["label"]) == (text, label)


async def test_async_stream_hit_is_a_stream_of_the_label(use_callback, teacher, trained_db, hits, fake_embedder):
    use_callback(alpha=ALPHA, db=str(trained_db), embedder=fake_embedder)
    text, label = hits[1]
    stream = await litellm.acompletion(**call_kwargs(teacher, text), stream=True)
    chunks = [chunk async for chunk in stream]
    assert litellm.stream_chunk_builder(chunks).choices[0].message.content == label
    assert teacher.request_count == 0


async def test_router_hit_sends_no_request_and_miss_reaches_the_teacher(
    use_callback, teacher, trained_db, hits, fake_embedder
):
    use_callback(alpha=ALPHA, db=str(trained_db), embedder=fake_embedder)
    router = litellm.Router(
        model_list=[
            {
                "model_name": "intent",
                "litellm_params": {"model": "openai/teacher", "api_base": teacher.base_url, "api_key": "sk-test"},
            }
        ]
    )
    text, label = hits[2]
    response = await router.acompletion(model="intent", messages=messages_for(text))
    assert response.choices[0].message.content == label
    assert teacher.request_count == 0
    other = [SYSTEM | {"content": "A different prompt."}, {"role": "user", "content": text}]
    await router.acompletion(model="intent", messages=other)
    assert teacher.request_count == 1


def test_multi_turn_call_is_never_short_circuited(use_callback, teacher, trained_db, hits, fake_embedder):
    use_callback(alpha=ALPHA, db=str(trained_db), embedder=fake_embedder)
    (first, first_label), (second, second_label) = hits[0], hits[1]
    conversation = [
        SYSTEM,
        {"role": "user", "content": first},
        {"role": "assistant", "content": first_label},
        {"role": "user", "content": second},
    ]
    response = litellm.completion(
        model="openai/teacher", api_base=teacher.base_url, api_key="sk-test", messages=conversation
    )
    assert response.choices[0].message.content == second_label
    assert teacher.request_count == 1

    async def async_call():
        return await litellm.acompletion(
            model="openai/teacher", api_base=teacher.base_url, api_key="sk-test", messages=conversation
        )

    asyncio.run(async_call())
    assert teacher.request_count == 2


def test_observe_mode_never_short_circuits(use_callback, teacher, trained_db, hits, fake_embedder):
    callback = use_callback(alpha=ALPHA, db=str(trained_db), embedder=fake_embedder, mode="observe")
    before = len(traces(trained_db))
    litellm.completion(**call_kwargs(teacher, hits[0][0]))
    assert teacher.request_count == 1
    assert wait_for_traces(callback, trained_db, before + 1)[-1]["source"] == "teacher"


# --- failures fall through --------------------------------------------------------------------


def failing_embedder(texts: list[str]):
    raise RuntimeError("fake_embedder exploded")


async def test_gate_failure_falls_through_to_the_teacher(use_callback, teacher, trained_db, hits):
    use_callback(alpha=ALPHA, db=str(trained_db), embedder=failing_embedder)
    text, label = hits[0]
    assert litellm.completion(**call_kwargs(teacher, text)).choices[0].message.content == label
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
    litellm.cache = litellm.Cache()
    callback = use_callback(alpha=ALPHA, db=str(db_path), embedder=fake_embedder)
    (text, label), (later, _) = banking_subset[5], banking_subset[6]
    for _ in range(2):
        assert litellm.completion(**call_kwargs(teacher, text)).choices[0].message.content == label
    assert teacher.request_count == 1
    litellm.completion(**call_kwargs(teacher, later))  # logged after the cache hit was
    recorded = wait_for_traces(callback, db_path, 2)
    assert [(t["input"], t["source"]) for t in recorded] == [(text, "teacher"), (later, "teacher")]


# --- plain install: no proxy packages ---------------------------------------------------------

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
    from tracer_demo.local_teacher import LocalTeacher
    from tracer_litellm import TracerCallback

    db, alpha, text, label = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]
    sys.path.insert(0, ROOT)
    from tests.conftest import HashEmbedder  # the policy was fitted on the fake embedder

    litellm.callbacks = [TracerCallback(alpha=alpha, db=db, embedder=HashEmbedder())]
    with LocalTeacher({text: "teacher-answer"}) as srv:
        kwargs = dict(model="openai/teacher", api_base=srv.base_url, api_key="sk-test",
                      messages=[SYSTEM, {"role": "user", "content": text}])
        answer = litellm.completion(**kwargs).choices[0].message.content
        chunks = list(litellm.completion(**kwargs, stream=True))
        streamed = litellm.stream_chunk_builder(chunks).choices[0].message.content
        assert (answer, streamed, srv.request_count) == (label, label, 0), (answer, streamed, srv.request_count)
    assert "fastapi" not in sys.modules
    print("OK")
    """
)


def test_sync_hit_works_without_proxy_packages(trained_db, hits, tmp_path):
    script = tmp_path / "no_fastapi.py"
    root = str(Path(__file__).resolve().parents[1])
    script.write_text(f"SYSTEM = {SYSTEM!r}\nROOT = {root!r}\n" + NO_FASTAPI, encoding="utf-8")
    text, label = hits[0]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    result = subprocess.run(
        [sys.executable, str(script), str(trained_db), str(ALPHA), text, label],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("OK")
