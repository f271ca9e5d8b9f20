"""tracer's Prometheus metrics over real HTTP: from a plain process (`serve_metrics`), summed over
several processes (prometheus-client's multiprocess mode), and at a LiteLLM proxy's own `/metrics`
(and TRACER_METRICS_PORT) with tracer's callback; the counters match the calls made, and every
metric and event name is documented."""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import httpx
import pytest
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from tests import clustered
from tests.test_litellm_proxy import free_port, messages_for, traces, wait_until
from tests.test_ops_events import fitted, serve
from tracer_core import Reason, Tracer, serve_metrics
from tracer_core.observability.events import EventKind
from tracer_core.observability.metrics import SPECS
from tracer_core.settings import SettingsError

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "operations-metrics.md"
UNVERSIONED = "(unversioned)"


def scrape(port: int, key: str | None = None, **labels: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of `http://127.0.0.1:port/metrics` (sent `key` as a bearer token) whose labels include
    `labels`: {(name, labels): value}."""
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10, follow_redirects=True,
                         headers={"Authorization": f"Bearer {key}"} if key else {})
    assert response.status_code == 200, response.text
    body = response.text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body) for s in family.samples
            if labels.items() <= s.labels.items()}


def total(samples: dict, name: str, **labels: str) -> float:
    return sum(v for (n, found), v in samples.items() if n == name and set(labels.items()) <= found)


def test_a_plain_process_serves_counters_that_match_its_calls(tmp_path):
    tracer = fitted(tmp_path / "p.db", "ops-plain", audit_rate=0.1)
    port = serve_metrics(0)
    assert serve_metrics(0) == port  # one server per process
    texts = clustered.texts(300, "live") + [f"far away {i}" for i in range(40)]
    decisions = serve(tracer, texts, clustered.label_of)
    assert tracer.flush().ok
    tracer.watcher.current(force=True)  # the state read every policy_check_s while calls arrive
    got = scrape(port, task="ops-plain")
    reasons = Counter(str(d.reason) for d in decisions)
    handled = reasons[Reason.HANDLED]
    assert total(got, "tracer_calls_total") == len(texts)
    assert {dict(k)["reason"]: v for (n, k), v in got.items() if n == "tracer_calls_total"} == reasons
    assert total(got, "tracer_calls_total", decision="handled") == handled > 200
    assert total(got, "tracer_llm_calls_saved_total") == handled
    assert total(got, "tracer_traces_recorded_total", source="surrogate") == handled
    assert total(got, "tracer_traces_recorded_total", source="teacher") == 1200 + len(texts) - handled
    cert = tracer.certificate
    assert total(got, "tracer_policy_version") == 1 and total(got, "tracer_policy_coverage") == cert.coverage
    assert total(got, "tracer_policy_alpha") == 0.9
    assert total(got, "tracer_policy_delta_spent") == cert.delta_spent > 0
    assert total(got, "tracer_refits_total", outcome="deployed") == 1
    assert total(got, "tracer_refit_duration_seconds_count") == 1
    assert total(got, "tracer_audits") == tracer.status()["monitor"]["audits"] > 0
    assert total(got, "tracer_audit_agreement") > 0.9 and total(got, "tracer_monitor_wealth") < 20
    assert total(got, "tracer_suspended") == 0
    store = scrape(port, store=str(tmp_path / "p.db"))
    assert total(store, "tracer_store_degraded") == 0 and total(store, "tracer_writer_queue_depth") == 0
    tracer.close()


def test_the_llm_cost_and_the_estimated_savings_follow_the_recorded_costs(tmp_path):
    tracer = fitted(tmp_path / "c.db", "ops-cost", audit_rate=0.0)
    port = serve_metrics(0)
    for text in clustered.texts(20, "paid"):
        tracer.record(text, clustered.label_of(text), cost_usd=0.002)  # LLM answers with their cost
    handled = [d for d in tracer.route_many(clustered.texts(50, "free")) if d.handled]
    for decision in handled:
        tracer.record("a surrogate answer", decision.label, decision=decision, cost_usd=0.0)
    got = scrape(port, task="ops-cost")
    assert total(got, "tracer_llm_cost_usd_total") == pytest.approx(0.04)
    assert total(got, "tracer_llm_cost_saved_usd_total") == pytest.approx(0.002 * len(handled))
    tracer.close()


def test_calls_an_integration_decides_are_counted_with_the_cores(tmp_path, teacher, fake_embedder, banking_subset):
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_openai import ChatOpenAI

    from tracer_langchain import with_tracer

    model = ChatOpenAI(base_url=teacher.base_url, api_key="sk-test", model="stand-in", max_retries=0)
    chain = ChatPromptTemplate([("system", "Classify the banking query."), ("human", "{text}")]) | model | StrOutputParser()
    wrapped = with_tracer(chain, task="ops-langchain", db=tmp_path / "l.db", embedder=fake_embedder, auto_refit=False)
    port = serve_metrics(0)
    for text, _ in banking_subset[:2]:
        wrapped.invoke({"text": text})
    wrapped.invoke({"text": banking_subset[2][0]}, {"configurable": {"tracer_mode": "observe"}})
    wrapped.flush()
    got = scrape(port, task="ops-langchain")
    assert {dict(k)["reason"]: v for (n, k), v in got.items() if n == "tracer_calls_total"} == {
        "no_policy": 2, "tracer_off": 1}
    assert total(got, "tracer_traces_recorded_total", source="teacher") == 3


def test_serve_metrics_refuses_a_bad_port():
    with pytest.raises(SettingsError, match="port must be an integer"):
        serve_metrics(70_000)


def test_every_metric_and_event_name_is_documented():
    page = DOCS.read_text(encoding="utf-8")
    table = re.findall(r"^\| `(tracer_\w+)` \| (\w+) \| ([^|]*) \|", page, re.M)  # name | type | labels | meaning
    assert sorted(name for name, _, _ in table) == sorted(spec.name for spec in SPECS)  # every one, no stale one
    for spec in SPECS:
        assert (spec.name, spec.kind, ", ".join(f"`{label}`" for label in spec.label_names)) in table, spec.name
    events = page.split("\n## Events\n", 1)[1].split("\n## ", 1)[0]
    assert sorted(re.findall(r"^\| `([a-z_]+)` \|", events, re.M)) == sorted(EventKind)


WORKER = textwrap.dedent("""
    import sys
    from tests import clustered
    from tracer_core import Tracer, serve_metrics
    tracer = Tracer("ops-multi", sys.argv[1], alpha=0.9, embedder=clustered.embed, auto_refit=False)
    texts = clustered.texts(int(sys.argv[2]), sys.argv[3])
    for text, decision in zip(texts, tracer.route_many(texts)):
        tracer.record(text, clustered.label_of(text), decision=decision)
    tracer.close()
    if sys.argv[3] == "serve":
        print(serve_metrics(0), flush=True)
        sys.stdin.read()  # serve until the test closes stdin
""")


@pytest.mark.slow  # subprocess Pythons
def test_counters_of_several_processes_add_up_in_multiprocess_mode(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom")}
    (tmp_path / "prom").mkdir()
    db = str(tmp_path / "m.db")
    done = subprocess.run([sys.executable, "-c", WORKER, db, "70", "first"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    server = subprocess.Popen([sys.executable, "-c", WORKER, db, "50", "serve"], env=env, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        port = int(server.stdout.readline())
        got = scrape(port, task="ops-multi")
    finally:
        server.communicate("", timeout=30)
    # 70 in one process + 50 in the other, each one batch: deferred with no policy, or, when a fresh process's
    # batch comes before the store's state is read (it never waits for it), as the policy still loading
    assert total(got, "tracer_calls_total", reason="no_policy") + total(got, "tracer_calls_total",
                                                                         reason="policy_loading") == 120
    assert total(got, "tracer_traces_recorded_total", source="teacher") == 120
    assert total(got, "tracer_policy_alpha") == 0.9  # a gauge: the most recent value, not a sum


# -- the LiteLLM proxy ------------------------------------------------------------------------------------------

PROXY_CONFIG = """
model_list:
  - model_name: teacher
    litellm_params:
      model: openai/teacher
      api_base: os.environ/TEACHER_API_BASE
      api_key: os.environ/TEACHER_API_KEY
litellm_settings:
  callbacks: ["prometheus", "tracer_litellm.proxy_handler"]
general_settings:
  master_key: os.environ/LITELLM_MASTER_KEY
"""


@pytest.fixture
def proxy(teacher, db_path, tmp_path):
    """The LiteLLM proxy with its prometheus callback and tracer's, also serving tracer's metrics on TRACER_METRICS_PORT."""
    port, metrics_port, key = free_port(), free_port(), f"sk-{secrets.token_hex(32)}"
    config = tmp_path / "config.yaml"
    config.write_text(PROXY_CONFIG)
    env = {
        **os.environ, "PYTHONPATH": str(ROOT), "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_MASTER_KEY": key,
        "TEACHER_API_BASE": teacher.base_url, "TEACHER_API_KEY": "sk-test", "TRACER_DB": str(db_path),
        "TRACER_ALPHA": "0.9", "TRACER_AUDIT_RATE": "0", "TRACER_METRICS_PORT": str(metrics_port),
    }
    log = (tmp_path / "proxy.log").open("w")
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "litellm"), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"proxy exited: {(tmp_path / 'proxy.log').read_text()[-3000:]}")
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health/readiness", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(ready, "the proxy to be ready", limit_s=90)
        yield OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0), port, metrics_port, key
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


@pytest.mark.slow  # a LiteLLM proxy server process routing with MiniLM
def test_the_litellm_proxy_shows_tracer_metrics_at_its_own_metrics(proxy, teacher, db_path, banking_subset, embedder):
    client, port, metrics_port, key = proxy
    answers: Counter = Counter()  # (decision, reason) of every response, from its x-tracer-* headers

    def ask(text: str, **extra) -> str:
        raw = client.chat.completions.with_raw_response.create(model="teacher", messages=messages_for(text), **extra)
        answers[(raw.headers["x-tracer-decision"], raw.headers["x-tracer-reason"])] += 1
        return raw.headers["x-tracer-decision"]

    for text, _ in banking_subset[:3]:
        ask(text)
    recorded = wait_until(lambda: len(traces(db_path)) >= 3 and traces(db_path), "the proxy's traces")
    task, fingerprint = recorded[0][0], recorded[0][1]
    tracer = Tracer(task=task, db=str(db_path), alpha=0.9, fingerprint=fingerprint, embedder=embedder, auto_refit=False,
                    audit_rate=0.0)
    try:
        rest = banking_subset[3:]
        tracer.record_many([t for t, _ in rest], [label for _, label in rest])
        assert tracer.fit().deployed
    finally:
        tracer.close()
    wait_until(lambda: ask(banking_subset[0][0]) == "handled", "the proxy to load the new policy")
    for text, _ in banking_subset[:40]:
        ask(text)
    ask(banking_subset[1][0], extra_body={"metadata": {"tracer_mode": "observe"}})  # decided by the integration
    calls, handled = sum(answers.values()), answers[("handled", "handled")]
    assert handled > 10 and answers[("deferred", "tracer_off")] == 1

    def settled() -> dict:
        got = scrape(port, key, task=task)
        return got if total(got, "tracer_traces_recorded_total") == calls else {}

    got = wait_until(settled, "the proxy to record every call")
    assert total(got, "tracer_calls_total") == calls
    assert {(dict(k)["decision"], dict(k)["reason"]): v for (n, k), v in got.items() if n == "tracer_calls_total"} == answers
    assert total(got, "tracer_llm_calls_saved_total") == handled
    assert total(got, "tracer_traces_recorded_total", source="surrogate") == handled
    assert total(got, "tracer_policy_version") == 1
    assert total(scrape(port, key, store=str(db_path)), "tracer_store_degraded") == 0
    assert any(name.startswith("litellm_") for name, _ in scrape(port, key))  # the proxy's own /metrics (behind its key)
    own = scrape(metrics_port, task=task)  # TRACER_METRICS_PORT serves the same registry
    assert {k: v for k, v in own.items() if k[0] == "tracer_calls_total"} == {
        k: v for k, v in got.items() if k[0] == "tracer_calls_total"}
