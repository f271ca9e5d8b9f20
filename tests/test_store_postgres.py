"""tracer on a real PostgreSQL server: secrets never shown, schema steps, a server that stops and comes back,
fit and route, coordination of several processes through the database, and copies to and from SQLite."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from tests import clustered
from tests.faultkit import subprocess_env
from tests.pgcluster import ThrowawayCluster
from tracer_core import Reason, Tracer, TraceStore
from tracer_core.cli.commands import main as cli
from tracer_core.errors import StoreError
from tracer_core.storage.store import COPY_TABLES
from tracer_core.storage.trace import make_trace
from tracer_core.store_address import redact
from tracer_litellm.settings import TracerSettings

ROOT = Path(__file__).resolve().parent.parent
TASK = "pg"


def fitted(db, **options) -> Tracer:
    """A Tracer (no audits) with 1,200 clean traces of the synthetic clustered task recorded, not yet fitted."""
    tracer = Tracer(TASK, db, alpha=0.9, embedder=clustered.embed, auto_refit=False, policy_check_s=0.0, audit_rate=0.0,
                    **options)
    texts = clustered.texts(1200)
    tracer.record_many(texts, [clustered.label_of(t) for t in texts])
    return tracer


def spawn(script: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", script, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=subprocess_env())


# --- secrets ---------------------------------------------------------------------------------

def test_redact_hides_every_form_of_password() -> None:
    assert redact("postgresql://u:s3cr%40t@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact("see postgres://admin:pw@10.0.0.1/x?sslmode=require now") == "see postgres://admin:***@10.0.0.1/x?sslmode=require now"
    assert redact("postgresql://u@h/db?password=topsecret&sslmode=require") == "postgresql://u@h/db?password=***&sslmode=require"
    assert redact("host=h password='it\\'s here' user=u") == "host=h password=*** user=u"
    assert redact("password=plain dbname=x") == "password=*** dbname=x"
    assert redact("error near plainsecret", ("plainsecret",)) == "error near ***"
    assert redact("postgresql://u@h/db") == "postgresql://u@h/db" and redact("/tmp/tracer.db") == "/tmp/tracer.db"


def test_password_never_shown_in_repr_errors_logs_or_cli(pg_cluster: ThrowawayCluster, pg_url: str, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    secret = pg_cluster.password
    assert secret in pg_url
    with TraceStore(pg_url) as store:
        store.append(make_trace("t", "hello", "a"))
        shown = [repr(store), store.name, str(store.path), str(store.spill_path)]
    shown.append(repr(TracerSettings(db=pg_url)))
    assert all("***" in s for s in shown[:3]) and not any(secret in s for s in shown)
    wrong = pg_url.replace(secret, "not-the-password-9f3")
    unreachable = pg_url.replace(str(pg_cluster.port), "1")  # nothing listens on port 1
    bad_port = pg_url.replace(str(pg_cluster.port), "notaport")
    for url, hidden, why in ((wrong, "not-the-password-9f3", "password authentication failed"),
                             (unreachable, secret, "cannot reach"), (bad_port, secret, "")):
        with pytest.raises(StoreError, match=why) as raised:
            TraceStore(url)
        text = "".join(traceback.format_exception(raised.value))
        assert hidden not in text and "***" in text
    runner = CliRunner()
    for args in (["status"], ["tasks"], ["export", "--task", "t"], ["status", "--task", "nope"]):
        out = runner.invoke(cli, [*args, "--db", pg_url])
        assert secret not in out.output, args
    assert runner.invoke(cli, ["tasks", "--db", pg_url]).exit_code == 0
    assert not any(secret in r.getMessage() for r in caplog.records)


# --- schema -----------------------------------------------------------------------------------

def test_schema_steps_are_recorded_and_a_newer_store_is_refused(pg_cluster: ThrowawayCluster, pg_url: str) -> None:
    TraceStore(pg_url).close()
    TraceStore(pg_url).close()  # a second open applies nothing
    with psycopg.connect(pg_url, autocommit=True) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM tracer_migrations ORDER BY name")]
        assert names == ["m001_traces_and_policies", "m002_routing_context", "m003_certification_attempts",
                         "m004_packed_calibration_ids"]
        columns = {r[0] for r in conn.execute("SELECT column_name FROM information_schema.columns "
                                               "WHERE table_name = 'traces' AND table_schema = current_schema()")}
        assert {"route", "policy_version", "predicted", "score", "metadata"} <= columns
        conn.execute("INSERT INTO tracer_migrations VALUES ('m003_from_the_future', 0)")
    with pytest.raises(StoreError, match="m003_from_the_future.*upgrade tracer"):
        TraceStore(pg_url)
    other = pg_cluster.fresh_url()
    with psycopg.connect(other, autocommit=True) as conn:
        conn.execute("CREATE TABLE traces (id int, what text)")
    with pytest.raises(StoreError, match="tables tracer did not create \\(traces\\).*search_path"):
        TraceStore(other)


# --- the server stops, then comes back ----------------------------------------------------------

@pytest.mark.slow
def test_server_stopped_then_restarted_loses_nothing(pg_cluster: ThrowawayCluster, pg_url: str, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="tracer.store")
    tracer = fitted(pg_url)
    assert tracer.fit().deployed
    tracer.flush()
    pg_cluster.stop()
    try:
        slowest = 0.0
        for i in range(300):
            started = time.perf_counter()
            tracer.record(f"lab{i % 8} while down {i}", f"lab{i % 8}")
            slowest = max(slowest, time.perf_counter() - started)
        assert slowest < 0.5  # the caller never waits for the server
        report = tracer.flush(timeout=20)
        assert report.spilled == 300 and report.lost == 0 and tracer.store.degraded
        decision = tracer.route("lab3 while down")
        assert (decision.handled, decision.reason) == (False, Reason.STORE_UNAVAILABLE)
    finally:
        pg_cluster.start()
    deadline = time.monotonic() + 30
    while tracer.store.degraded and time.monotonic() < deadline:
        time.sleep(0.2)  # the writer probes the store every couple of seconds and replays the spill file
    assert tracer.store.degraded is None
    assert tracer.flush(timeout=20).ok
    assert tracer.store.counts(TASK)["teacher"] == 1500
    assert not tracer.store.spill_path.exists()
    assert tracer.route("lab3 after the restart").handled
    tracer.close()
    assert any("saved them to" in r.getMessage() for r in caplog.records)
    assert not any(pg_cluster.password in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_a_store_that_does_not_answer_makes_calls_defer_without_waiting(pg_url: str) -> None:
    """A table locked by another session (a migration, a DBA) stalls reads: route() waits at most the
    read budget once, then defers at once until the store answers again."""
    from tracer_core.serving.watcher import READ_BUDGET_S

    tracer = fitted(pg_url)
    assert tracer.fit().deployed and tracer.route("lab3 before the lock").handled
    with psycopg.connect(pg_url) as blocker:
        blocker.execute("LOCK TABLE policies IN ACCESS EXCLUSIVE MODE")  # held until the block ends
        started = time.perf_counter()
        first = tracer.route("lab3 while locked")
        waited = time.perf_counter() - started
        assert (first.handled, first.reason) == (False, Reason.STORE_UNAVAILABLE)
        assert waited < READ_BUDGET_S + 1.0
        started = time.perf_counter()
        later = [tracer.route(f"lab{i % 8} while locked {i}") for i in range(20)]
        assert time.perf_counter() - started < 1.0  # nobody waits for the stalled read again
        assert {(d.handled, d.reason) for d in later} == {(False, Reason.STORE_UNAVAILABLE)}
    deadline = time.monotonic() + 10
    while not (decision := tracer.route("lab3 after the lock")).handled and time.monotonic() < deadline:
        time.sleep(0.05)
    assert decision.handled
    tracer.close()


# --- fit and route ------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_fit_on_postgres_certifies_and_routes_as_on_sqlite(pg_url: str, tmp_path: Path) -> None:
    results = []
    for db in (pg_url, tmp_path / "same.db"):
        with fitted(db) as tracer:
            cert = tracer.fit()
            texts = clustered.texts(40, "later") + ["far away thing"]
            results.append((cert.deployed, cert.coverage, cert.agreement_lower_bound, cert.n_traces, cert.trace_max_id,
                            [(d.handled, d.label, d.reason) for d in tracer.route_many(texts)]))
    assert results[0] == results[1]
    assert results[0][0] and any(handled for handled, _, _ in results[0][5])


# --- several processes, one database ------------------------------------------------------------

WATCH = """
import sys, time
from tests import clustered
from tracer_core import Tracer
tracer = Tracer("pg", sys.argv[1], alpha=0.9, embedder=clustered.embed, auto_refit=False, policy_check_s=0.5,
                audit_rate=0.0)
print("ready", flush=True)
seen = None
deadline = time.time() + 60
while time.time() < deadline:
    reason = tracer.route("lab2 from the other process").reason
    if reason != seen and reason != "store_unavailable":  # a new policy still loading defers meanwhile (issue 22)
        print(reason, time.time(), flush=True)
        seen = reason
    if reason == "suspended":
        break
    time.sleep(0.05)
"""


# policy_check_s (0.5) plus one route, with room for a loaded 2-core machine (1.64 s was seen under `make test`): what
# is tested is that the running process picks the change up by itself, without a restart; speed is the bench's job
PICKUP_S = 0.5 + 4.5


@pytest.mark.slow
def test_another_process_picks_up_a_new_policy_and_a_suspension(pg_url: str) -> None:
    tracer = fitted(pg_url)
    tracer.flush()
    child = spawn(WATCH, pg_url)
    assert child.stdout.readline().strip() == "ready"
    assert child.stdout.readline().split()[0] == "no_policy"
    assert tracer.fit().deployed
    deployed_at = time.time()
    handled, at = child.stdout.readline().split()
    assert handled == "handled" and float(at) - deployed_at < PICKUP_S
    tracer.suspend("checked from another process")
    suspended_at = time.time()
    reason, at = child.stdout.readline().split()
    assert reason == "suspended" and float(at) - suspended_at < PICKUP_S
    assert child.wait(timeout=30) == 0, child.stderr.read()
    tracer.close()


HOLD_LOCK = """
import sys
from tracer_core import TraceStore
with TraceStore(sys.argv[1]) as store, store.refit_lock("pg", "") as acquired:
    print("held" if acquired else "busy", flush=True)
    sys.stdin.readline()
"""


@pytest.mark.slow
def test_one_refit_at_a_time_across_processes(pg_url: str, caplog) -> None:
    caplog.set_level(logging.INFO, logger="tracer")
    tracer = fitted(pg_url)
    tracer.flush()
    holder = spawn(HOLD_LOCK, pg_url)
    assert holder.stdout.readline().strip() == "held"
    second = spawn(HOLD_LOCK, pg_url)
    assert second.stdout.readline().strip() == "busy"
    second.communicate("\n", timeout=30)
    tracer._fitter.refit()  # what the background refit runs: skipped while another process refits
    assert tracer.store.policies(TASK) == []
    assert any("another process is refitting" in r.getMessage() for r in caplog.records)
    holder.communicate("\n", timeout=30)
    tracer._fitter.refit()
    assert [p["version"] for p in tracer.store.policies(TASK)] == [1]
    tracer.close()


def test_concurrent_refit_locks_in_threads_admit_one(pg_url: str) -> None:
    with TraceStore(pg_url) as store:
        results: list[bool] = []
        gate = threading.Barrier(4)
        release = threading.Event()

        def take() -> None:
            with store.refit_lock(TASK, "fp") as acquired:
                results.append(acquired)
                gate.wait(timeout=10)
                release.wait(timeout=10)

        threads = [threading.Thread(target=take) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        release.set()
        for t in threads:
            t.join()
        assert sorted(results) == [False, False, False, True]
        with store.refit_lock(TASK, "fp") as again, store.refit_lock(TASK, "other") as other:
            assert again and other


# --- copies between SQLite and PostgreSQL ---------------------------------------------------------

def all_rows(db) -> dict[str, list[tuple]]:
    with TraceStore(db) as store:
        return {table: [row for chunk in store.export_rows(table, "release1") for row in chunk] for table in COPY_TABLES}


def test_copy_round_trip_sqlite_postgres_sqlite(pg_url: str, tmp_path: Path) -> None:
    original = tmp_path / "release1.db"
    shutil.copy(ROOT / "tests" / "data" / "release1.db", original)
    with TraceStore(original) as store:  # suspension events (of another version of the task) are copied too
        for action in ("suspend", "resume"):
            store.log_suspension("release1", "another version", action=action, reason="copied", details={"n": 1})
    back = tmp_path / "back.db"
    runner = CliRunner()
    out = runner.invoke(cli, ["copy", "--from", str(original), "--to", pg_url])
    assert out.exit_code == 0, out.output
    assert "421 traces" in out.output and "1 policies" in out.output and "***" in out.output
    out = runner.invoke(cli, ["copy", "--from", pg_url, "--to", str(back), "--task", "release1"])
    assert out.exit_code == 0, out.output
    rows = [all_rows(db) for db in (original, pg_url, back)]
    assert rows[0] == rows[1] == rows[2]
    assert len(rows[0]["traces"]) == 421 and len(rows[0]["suspensions"]) == 2 and len(rows[0]["policies"]) >= 1
    decisions = []
    for db in (original, pg_url, back):
        with Tracer("release1", db, alpha=0.9, embedder=clustered.embed, fingerprint="0123456789abcdef",
                    audit_rate=0.0, auto_refit=False) as tracer:
            decisions.append([(d.handled, d.label, d.reason, d.policy_version)
                              for d in tracer.route_many(clustered.texts(30, "copied") + ["far away"])])
            tracer.record("lab1 new after the copy", "lab1")  # ids continue after the copied ones
            tracer.flush()
            assert tracer.store.max_id("release1") > max(r[0] for r in rows[0]["traces"])
    assert decisions[0] == decisions[1] == decisions[2] and any(d[0] for d in decisions[0])
    out = runner.invoke(cli, ["copy", "--from", str(original), "--to", pg_url])
    assert out.exit_code == 1 and "already holds task 'release1'" in out.output


def test_every_entry_point_takes_the_url(pg_url: str, monkeypatch) -> None:
    from tracer_core.serving.registry import registry_for
    from tracer_litellm import TracerCallback

    monkeypatch.setenv("TRACER_DB", pg_url)
    with TraceStore() as store:
        assert store.is_postgres and store.key != pg_url and "***" in store.key
        with TraceStore(store.key) as again:  # a key stands for its URL within this process
            assert again.key == store.key
    registry = registry_for(pg_url)
    assert registry is registry_for(pg_url) and registry.store.is_postgres
    assert TracerCallback().settings.db == pg_url == TracerSettings.from_env().db
    out = CliRunner().invoke(cli, ["import", str(ROOT / "tests" / "data" / "banking77_subset.jsonl"), "--task", "b77"])
    assert out.exit_code == 0 and "imported 800 traces" in out.output
    assert registry.store.counts("b77")["teacher"] == 800


def test_traces_move_to_the_name_a_fingerprint_resolves_to_on_postgres(pg_url: str) -> None:
    """One task per prompt on PostgreSQL: an automatic name's traces move in one transaction; a certified one's never."""
    store = TraceStore(pg_url)
    fingerprint = "f" * 64
    store.register_version("litellm-ffffffffffff", fingerprint, {"model": "m"})
    store.register_version("intent", fingerprint, {"model": "m"})
    store.append_many([make_trace("litellm-ffffffffffff", f"text {i}", "a", fingerprint=fingerprint) for i in range(3)])
    store.flush()
    assert store.move_traces("litellm-ffffffffffff", fingerprint, "intent") == 3
    assert not store.has_traces("litellm-ffffffffffff", fingerprint) and store.has_traces("intent", fingerprint)
    assert store.versions_by_fingerprint(fingerprint) == ["intent"]
    store.log_suspension("intent", fingerprint, action="suspend", reason="by hand", details={})
    assert store.move_traces("intent", fingerprint, "other") == 0
    assert store.has_traces("intent", fingerprint)
    store.close()
