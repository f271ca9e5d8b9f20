"""The real LiteLLM proxy with `examples/litellm_proxy/config.yaml`, driven by the openai SDK.

First calls go to the teacher and are recorded in the proxy's SQLite file; after this test
process fits a policy on that same file, the running proxy answers certified queries itself
(the teacher's request count stays put) without a restart. Every response says what tracer
decided in `x-tracer-*` headers.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest
import yaml
from openai import OpenAI

from tracer_core import Tracer

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # a LiteLLM proxy server process routing with MiniLM
CONFIG = ROOT / "examples" / "litellm_proxy" / "config.yaml"
DOCS = ROOT / "docs" / "litellm.md"
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)
SYSTEM = {"role": "system", "content": "Classify the banking query into its intent. Answer with the label only."}
ALPHA = 0.9

# a fresh process's first calls go to the LLM while the store's state is read off the caller's path
# (issue 22: they never wait for it): `policy_loading` until it is read, then `no_policy`
FIRST_CALLS = {"no_policy", "policy_loading"}

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def traces(db: Path) -> list[tuple]:
    if not db.exists():
        return []
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT task, fingerprint, input, label, source, model FROM traces ORDER BY id").fetchall()
    finally:
        conn.close()


def wait_until(check, what: str, limit_s: float = 60.0):
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"gave up waiting for {what}")


def proxy_env(**extra: str) -> dict[str, str]:
    """The test's environment for a proxy subprocess: this checkout importable, offline, plus `extra`."""
    return {
        **os.environ,
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        **extra,
    }


@contextmanager
def serving(command: list[str], env: dict[str, str], port: int, log_path: Path, cwd: Path | None = None) -> Iterator[None]:
    """Run the proxy `command` until it answers on `port`; stop it (its whole process group) on exit."""
    log = log_path.open("w")
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"proxy exited: {log_path.read_text()[-3000:]}")
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health/readiness", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(ready, "the proxy to be ready", limit_s=90)
        yield
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


@pytest.fixture
def proxy(teacher, db_path, tmp_path):
    """The LiteLLM proxy as a subprocess on 127.0.0.1, configured by TRACER_* variables."""
    port, key = free_port(), f"sk-{secrets.token_hex(32)}"
    env = proxy_env(
        LITELLM_MASTER_KEY=key,
        TEACHER_API_BASE=teacher.base_url,
        TEACHER_API_KEY="sk-test",
        TRACER_DB=str(db_path),
        TRACER_ALPHA=str(ALPHA),
        TRACER_MODE="on",
        TRACER_AUDIT_RATE="0",
    )
    command = [str(Path(sys.executable).parent / "litellm"), "--config", str(CONFIG), "--host", "127.0.0.1",
               "--port", str(port)]
    with serving(command, env, port, tmp_path / "proxy.log"):
        yield OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)


def messages_for(text: str) -> list[dict]:
    return [SYSTEM, {"role": "user", "content": text}]


def ask(client: OpenAI, text: str, **extra):
    return client.chat.completions.create(model="teacher", messages=messages_for(text), **extra)


def test_proxy_records_then_short_circuits_after_a_fit(proxy, teacher, db_path, banking_subset, embedder):
    # 1. No policy yet: every call reaches the teacher and is recorded by the proxy process.
    first = banking_subset[:3]
    for text, label in first:
        raw = proxy.chat.completions.with_raw_response.create(model="teacher", messages=messages_for(text))
        assert raw.parse().choices[0].message.content == label
        assert raw.headers["x-tracer-decision"] == "deferred" and raw.headers["x-tracer-reason"] in FIRST_CALLS
        assert "x-tracer-policy-version" not in raw.headers
    assert teacher.request_count == 3
    recorded = wait_until(lambda: len(traces(db_path)) >= 3 and traces(db_path), "the proxy's traces")
    assert [(row[2], row[3], row[4]) for row in recorded] == [(t, label, "teacher") for t, label in first]
    task, fingerprint = recorded[0][0], recorded[0][1]
    assert task.startswith("litellm-") and recorded[0][5] == "openai/teacher"

    # 2. This process fits a policy on the same file (traces as the proxy would have recorded them).
    tracer = Tracer(task=task, db=str(db_path), alpha=ALPHA, fingerprint=fingerprint, embedder=embedder, auto_refit=False,
                    audit_rate=0.0)
    try:
        rest = banking_subset[3:]
        tracer.record_many([t for t, _ in rest], [label for _, label in rest])
        tracer.flush()
        certificate = tracer.fit()
        assert certificate.deployed, certificate.reason
        decisions = tracer.route_many([t for t, _ in banking_subset[:200]])
        hits = [(t, d.label) for (t, _), d in zip(banking_subset[:200], decisions) if d.handled][:4]
    finally:
        tracer.close()
    assert len(hits) == 4

    # 3. The running proxy picks the policy up and answers certified queries without the teacher.
    text = hits[0][0]
    wait_until(lambda: ask(proxy, text).usage.total_tokens == 0, "the proxy to load the new policy")
    settled = teacher.request_count
    for text, label in hits[1:]:
        raw = proxy.chat.completions.with_raw_response.create(model="teacher", messages=messages_for(text))
        response = raw.parse()
        assert response.choices[0].message.content == label
        assert response.usage.total_tokens == 0
        assert (raw.headers["x-tracer-decision"], raw.headers["x-tracer-reason"]) == ("handled", "handled")
        assert raw.headers["x-tracer-policy-version"] == "1"
        assert raw.headers["x-tracer-task"] == task
    raw = proxy.chat.completions.with_raw_response.create(model="teacher", messages=messages_for(hits[0][0]), stream=True)
    assert raw.headers["x-tracer-decision"] == "handled"
    assert "".join(chunk.choices[0].delta.content or "" for chunk in raw.parse() if chunk.choices) == hits[0][1]
    assert teacher.request_count == settled

    # 4. Per-call opt-out through the proxy: metadata travels in the request body.
    text, label = hits[1]
    raw = proxy.chat.completions.with_raw_response.create(
        model="teacher", messages=messages_for(text), extra_body={"metadata": {"tracer_mode": "observe"}}
    )
    assert raw.parse().choices[0].message.content == label
    assert (raw.headers["x-tracer-decision"], raw.headers["x-tracer-reason"]) == ("deferred", "tracer_off")
    assert teacher.request_count == settled + 1
    surrogate = wait_until(lambda: [r for r in traces(db_path) if r[4] == "surrogate"], "surrogate traces")
    assert {r[2] for r in surrogate} <= {t for t, _ in hits}


# -- the proxy snippet of docs/litellm.md, as written (issue 23, point 5) -------------------
def proxy_snippet() -> tuple[str, str]:
    """The YAML and the shell block of the Proxy section of docs/litellm.md."""
    section = DOCS.read_text(encoding="utf-8").split("\n## Proxy\n", 1)[1].split("\n## ", 1)[0]
    blocks = dict(BLOCK.findall(section))
    return blocks["yaml"], blocks["bash"]


def test_the_docs_proxy_snippet_starts_and_answers_as_pasted(teacher, banking_subset, tmp_path):
    config, shell = proxy_snippet()
    (tmp_path / "config.yaml").write_text(config, encoding="utf-8")
    setup, start = shell.rstrip().rsplit("\n", 1)
    # the snippet's own lines make the key (printed here only to hand it to the client)
    made = subprocess.run(["bash", "-ec", setup + '\nprintf %s "$LITELLM_MASTER_KEY"'], cwd=tmp_path,
                          capture_output=True, text=True, timeout=30, check=True)
    key = made.stdout
    assert key.startswith("sk-") and len(key) >= 35
    command = shlex.split(start, comments=True)
    assert command == ["litellm", "--config", "config.yaml"]
    port = free_port()
    # the teacher plays the OpenAI API; HOST and PORT are the litellm CLI's --host/--port
    env = proxy_env(LITELLM_MASTER_KEY=key, OPENAI_API_KEY="sk-test", OPENAI_API_BASE=teacher.base_url,
                    OPENAI_BASE_URL=teacher.base_url, HOST="127.0.0.1", PORT=str(port))
    for name in ("TRACER_DB", "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY"):
        env.pop(name, None)
    model = yaml.safe_load(config)["model_list"][0]["model_name"]
    text, label = banking_subset[0]
    with serving(command, env, port, tmp_path / "proxy.log", cwd=tmp_path):
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
        raw = client.chat.completions.with_raw_response.create(model=model, messages=messages_for(text))
        assert raw.parse().choices[0].message.content == label
        assert raw.headers["x-tracer-decision"] == "deferred" and raw.headers["x-tracer-reason"] in FIRST_CALLS
        stranger = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-not-the-key", max_retries=0)
        with pytest.raises(openai.APIStatusError):  # 400 "No connected db." (no virtual keys without one)
            stranger.chat.completions.create(model=model, messages=messages_for(text))
        recorded = wait_until(lambda: traces(tmp_path / "tracer.db"), "the proxy's trace in ./tracer.db")
    assert [(row[2], row[3], row[4]) for row in recorded] == [(text, label, "teacher")]
    assert teacher.request_count == 1
