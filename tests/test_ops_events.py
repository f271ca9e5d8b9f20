"""Events reach a registered callable and a real local webhook receiver for each state change (a refused
fit, a suspension by the monitor, a withdrawal, a degraded and a recovered store); a webhook that hangs
or refuses connections delays no call and no exit; JSON logs carry the events' fields; the webhook's
secret never reaches a log."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from tests import clustered
from tests.faultkit import drop_traces_table, run_sql
from tests.webhooks import EventReceiver, HangingServer, refusing_url
from tracer_core import EventKind, Tracer, TracerEvent, off_event, on_event, use_json_logs
from tracer_core.observability import delivery, events, exposition, jsonlog, webhook
from tracer_core.observability.outbox import Outbox
from tracer_core.settings import SettingsError

ROOT = Path(__file__).resolve().parents[1]
SECRET = "s3cret-token-1234"
UNVERSIONED = "(unversioned)"


def wait_until(predicate, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def gauge(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


@pytest.fixture
def receiver(monkeypatch):
    server = EventReceiver()
    monkeypatch.setenv("TRACER_WEBHOOK_URL", server.url(SECRET))
    yield server
    server.close()


@pytest.fixture
def handled():
    """The events a registered callable receives."""
    got: list[TracerEvent] = []
    on_event(got.append)
    yield got
    off_event(got.append)


def delivered(got: list[TracerEvent], kind: EventKind, task: str | None) -> TracerEvent:
    assert wait_until(lambda: any(e.kind == kind and e.task == task for e in got)), [e.kind for e in got]
    return next(e for e in got if e.kind == kind and e.task == task)


def fitted(db: Path, task: str, **options) -> Tracer:
    """A Tracer whose policy v1 is certified on 1,200 clean traces (as tests/test_continual.py makes one)."""
    tracer = Tracer(task, db, alpha=0.9, embedder=clustered.embed, auto_refit=False, policy_check_s=0.0, **options)
    texts = clustered.texts(1200)
    tracer.record_many(texts, [clustered.label_of(t) for t in texts])
    assert tracer.fit().deployed
    return tracer


def serve(tracer: Tracer, texts: list[str], teacher) -> list:
    """Route a batch as an integration does: handled ones answered by the surrogate, the rest by `teacher`."""
    decisions = tracer.route_many(texts)
    for text, decision in zip(texts, decisions):
        tracer.record(text, decision.label if decision.handled else teacher(text), decision=decision)
    return decisions


def change_the_teacher_until_suspended(tracer: Tracer) -> list[float]:
    """Half the labels now come back otherwise; returns the seconds each routed batch took."""
    changed = {f"lab{k}": "lab7" for k in range(4)}
    seconds = []
    for start in range(0, 3000, 100):
        began = time.monotonic()
        serve(tracer, clustered.texts(100, f"c{start}"), lambda t: changed.get(clustered.label_of(t), clustered.label_of(t)))
        seconds.append(time.monotonic() - began)
        tracer.flush()
        if tracer.status()["suspended"]:
            return seconds
    raise AssertionError("the monitor never suspended the task")


# -- each state change reaches the webhook and the callable -------------------------------------------------

def test_a_refused_fit_is_delivered(tmp_path, receiver, handled, caplog):
    caplog.set_level(logging.INFO)
    tracer = Tracer("ops-refused", tmp_path / "r.db", embedder=clustered.embed, auto_refit=False)
    texts = clustered.texts(30)
    tracer.record_many(texts, [clustered.label_of(t) for t in texts])
    cert = tracer.fit()
    assert not cert.deployed
    posted = receiver.wait_for("fit_refused")
    assert posted == delivered(handled, EventKind.FIT_REFUSED, "ops-refused").to_dict()
    assert posted["task"] == "ops-refused" and posted["version"] == UNVERSIONED and posted["policy_version"] == cert.version
    assert posted["why"] == cert.reason and posted["details"]["reason_code"] == "too_few_traces"
    assert posted["what"] and posted["action"] and posted["time"].endswith("+00:00")
    assert receiver.paths[0] == f"/hook?token={SECRET}"  # the token reaches the receiver ...
    assert SECRET not in caplog.text  # ... and no log line
    assert gauge("tracer_refits_total", task="ops-refused", version=UNVERSIONED, outcome="refused") == 1
    tracer.close()


def test_a_suspension_by_the_monitor_is_delivered(tmp_path, receiver, handled):
    tracer = fitted(tmp_path / "s.db", "ops-suspended", audit_rate=0.2)
    assert receiver.wait_for("policy_deployed")["policy_version"] == 1
    change_the_teacher_until_suspended(tracer)
    posted = receiver.wait_for("suspended")
    assert posted == delivered(handled, EventKind.SUSPENDED, "ops-suspended").to_dict()
    assert posted["why"].startswith("audits contradict the certificate") and posted["policy_version"] == 1
    assert posted["details"]["cause"] == "monitor" and posted["details"]["wealth"] >= posted["details"]["reject_at"]
    assert "tracer resume --task ops-suspended" in posted["action"]
    labels = {"task": "ops-suspended", "version": UNVERSIONED}
    assert gauge("tracer_suspended", cause="monitor", **labels) == 1
    assert gauge("tracer_suspended", cause="manual", **labels) == 0
    assert gauge("tracer_monitor_reject_at", **labels) == 20  # 1 / delta
    assert gauge("tracer_audits", **labels) == 0 and gauge("tracer_monitor_wealth", **labels) == pytest.approx(1)  # afresh after it
    tracer.close()


def test_a_withdrawal_and_the_refused_fit_behind_it_are_delivered(tmp_path, receiver, handled):
    tracer = fitted(tmp_path / "w.db", "ops-withdrawn", audit_rate=0.0)
    rotated = clustered.texts(1200)  # the same inputs, now answered with the next label
    tracer.record_many(rotated, [f"lab{(int(clustered.label_of(t)[3:]) + 1) % 8}" for t in rotated])
    assert not tracer.fit().deployed
    posted = receiver.wait_for("withdrawn")
    assert posted == delivered(handled, EventKind.WITHDRAWN, "ops-withdrawn").to_dict()
    assert posted["why"].startswith("withdrawn: a refit was refused") and posted["details"]["cause"] == "withdrawn"
    kinds = [k for k, e in zip(receiver.kinds(), receiver.events) if e["task"] == "ops-withdrawn"]
    assert kinds == ["policy_deployed", "fit_refused", "withdrawn"]
    assert gauge("tracer_suspended", task="ops-withdrawn", version=UNVERSIONED, cause="withdrawn") == 1
    tracer.close()


def test_a_degraded_store_and_its_recovery_are_delivered(db_path, receiver, handled):
    tracer = Tracer("ops-degraded", db_path, auto_refit=False)
    tracer.record("first", "x")
    assert tracer.flush().ok
    create = drop_traces_table(db_path)
    tracer.record("while broken", "x")
    assert tracer.flush(timeout=10).spilled == 1
    posted = receiver.wait_for("store_degraded")
    assert posted == delivered(handled, EventKind.STORE_DEGRADED, None).to_dict()
    assert "no such table" in posted["why"] and posted["details"]["store"] == str(db_path)
    assert posted["details"]["spill_file"] == f"{db_path}.spill.jsonl" and posted["task"] is None
    assert gauge("tracer_store_degraded", store=str(db_path)) == 1
    assert gauge("tracer_store_spill_bytes", store=str(db_path)) > 0
    run_sql(db_path, create)  # the operator repairs the store
    recovered = receiver.wait_for("store_recovered", seconds=15)
    assert recovered["details"]["store"] == str(db_path)
    assert gauge("tracer_store_degraded", store=str(db_path)) == 0
    assert gauge("tracer_store_spill_bytes", store=str(db_path)) == 0
    tracer.close()


# -- a webhook that hangs or refuses delays nothing ----------------------------------------------------------

@pytest.fixture(params=["hanging", "refusing"])
def bad_webhook(request, monkeypatch):
    hanging = HangingServer() if request.param == "hanging" else None
    monkeypatch.setenv("TRACER_WEBHOOK_URL", hanging.url() if hanging else refusing_url())
    yield hanging
    if hanging is not None:
        hanging.close()


def test_a_hanging_or_refusing_webhook_delays_no_call(tmp_path, bad_webhook, handled):
    tracer = fitted(tmp_path / "h.db", "ops-hanging", audit_rate=0.2)
    batches = change_the_teacher_until_suspended(tracer)  # the batch that suspends emits the event on the call path
    assert max(batches) < 1.0, batches  # posting would take >= webhook.TIMEOUT_S (2 s) a try
    began = time.monotonic()
    for _ in range(3 * 1_000):  # a burst: three times what the webhook's queue holds
        delivery.emit(events.resumed("ops-hanging", "", "a burst", 1))
    assert time.monotonic() - began < 1.0
    delivered(handled, EventKind.SUSPENDED, "ops-hanging")  # the callables are not held up by the webhook
    if bad_webhook is not None:
        assert wait_until(lambda: bad_webhook.accepted), "the webhook was never tried"
    tracer.close()


@pytest.mark.slow  # a subprocess Python
@pytest.mark.parametrize("kind", ["hanging", "refusing"])
def test_a_hanging_or_refusing_webhook_delays_no_exit(tmp_path, kind):
    hanging = HangingServer() if kind == "hanging" else None
    script = textwrap.dedent("""
        import sys
        from tests import clustered
        from tracer_core import Tracer
        tracer = Tracer("ops-exit", sys.argv[1], embedder=clustered.embed, auto_refit=False)
        texts = clustered.texts(30)
        tracer.record_many(texts, [clustered.label_of(t) for t in texts])
        tracer.fit()  # refused: an event
        tracer.suspend("by hand")  # an event
        print("last call", flush=True)
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRACER_LOG_FORMAT": "json",
           "TRACER_WEBHOOK_URL": hanging.url() if hanging else refusing_url()}
    process = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "x.db")], env=env, cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline() == "last call\n", process.stderr.read()
        last_call = time.monotonic()
        process.wait(timeout=30)
        exited_after = time.monotonic() - last_call
    finally:
        process.kill()
        if hanging is not None:
            hanging.close()
    assert process.returncode == 0
    assert exited_after < 2.0, f"exited {exited_after:.2f} s after its last call"
    if hanging is not None:
        assert hanging.accepted, "the webhook was never tried"
    lines = [json.loads(line) for line in process.stderr.read().splitlines()]  # TRACER_LOG_FORMAT=json: every line
    assert {line.get("kind") for line in lines} >= {"fit_refused", "suspended"}
    assert "secret" not in json.dumps(lines)


# -- the parts -------------------------------------------------------------------------------------------------

def test_an_outbox_never_blocks_and_drops_what_it_cannot_hold(caplog):
    release = threading.Event()
    outbox: Outbox[int] = Outbox(lambda item: release.wait(), "test-outbox", size=100)
    began = time.monotonic()
    for i in range(1_000):
        outbox.put(i)
    assert time.monotonic() - began < 0.5
    assert 899 <= outbox.dropped <= 900  # the thread holds one item, the queue 100
    assert caplog.text.count("later ones are dropped") == 1
    assert not outbox.drain(0.1)
    release.set()
    assert outbox.drain(5.0)


def test_a_failing_handler_is_logged_once_and_breaks_nothing(caplog, handled):
    def broken(event: TracerEvent) -> None:
        raise RuntimeError("handler bug")

    on_event(broken)
    try:
        for _ in range(3):
            delivery.emit(events.resumed("ops-handler", "", "test", 2))
        assert wait_until(lambda: sum(e.task == "ops-handler" for e in handled) == 3)
    finally:
        off_event(broken)
    assert caplog.text.count("RuntimeError: handler bug") == 1


def test_the_webhook_url_never_shows_its_secrets(monkeypatch, caplog):
    receiver = EventReceiver()
    try:
        hook = webhook.Webhook(f"http://user:{SECRET}@127.0.0.1:{receiver.port}/services/T0/{SECRET}?key={SECRET}")
        assert SECRET not in hook.shown and hook.shown == "http://127.0.0.1/***"
        hook.deliver(events.resumed("ops-url", "", "test", 1))
        assert receiver.headers[0]["Authorization"].startswith("Basic ")  # the user info became a header
    finally:
        receiver.close()
    monkeypatch.setattr(webhook, "BACKOFF_S", (0.0, 0.0))
    failing = webhook.Webhook(refusing_url().replace("refused-secret", SECRET))
    failing.deliver(events.resumed("ops-url", "", "test", 1))
    assert "not delivered after 3 attempts" in caplog.text and SECRET not in caplog.text
    with pytest.raises(SettingsError, match="http:// or https://") as error:
        webhook.Webhook(f"ftp://127.0.0.1/{SECRET}")
    assert SECRET not in str(error.value)


def test_bad_settings_in_the_environment_are_named_and_break_nothing(monkeypatch, caplog, handled):
    monkeypatch.setenv("TRACER_WEBHOOK_URL", f"hooks.example.com/{SECRET}")
    for _ in range(2):
        delivery.emit(events.resumed("ops-env", "", "test", 1))
    assert caplog.text.count("TRACER_WEBHOOK_URL must be an http:// or https:// URL") == 1 and SECRET not in caplog.text
    delivered(handled, EventKind.RESUMED, "ops-env")  # the callables still get it
    monkeypatch.setattr(exposition, "_env_tried", None)
    monkeypatch.setenv("TRACER_METRICS_PORT", "ninety")
    exposition.serve_from_env()
    assert "TRACER_METRICS_PORT must be a port number in [0, 65535], got 'ninety'" in caplog.text
    monkeypatch.setenv("TRACER_LOG_FORMAT", "yaml")
    jsonlog.apply_log_format_from_env()
    assert "TRACER_LOG_FORMAT must be json or text, got 'yaml'" in caplog.text


def test_json_logs_carry_the_fields_of_the_event(tmp_path):
    saved = {name: (logging.getLogger(name).handlers[:], logging.getLogger(name).level, logging.getLogger(name).propagate)
             for name in jsonlog.LOGGERS}
    stream = io.StringIO()
    use_json_logs(stream)
    try:
        tracer = Tracer("ops-json", tmp_path / "j.db", auto_refit=False)
        tracer.suspend("maintenance")
        logging.getLogger("tracer_litellm").warning("from the LiteLLM integration")
        tracer.close()
    finally:
        for name, (handlers, level, propagate) in saved.items():
            logger = logging.getLogger(name)
            logger.handlers[:], logger.propagate = handlers, propagate
            logger.setLevel(level)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    (event,) = [line for line in lines if line.get("kind") == "suspended"]
    assert event["logger"] == "tracer.events" and event["level"] == "INFO"
    assert event["task"] == "ops-json" and event["version"] == UNVERSIONED and event["why"] == "maintenance"
    assert event["details"]["cause"] == "manual" and event["action"].startswith("`tracer resume --task ops-json`")
    assert {"time", "what", "fingerprint", "policy_version", "process"} <= set(event)
    plain = [line for line in lines if line["logger"] == "tracer_litellm"]
    assert plain == [{"time": plain[0]["time"], "level": "WARNING", "logger": "tracer_litellm",
                      "message": "from the LiteLLM integration"}]
