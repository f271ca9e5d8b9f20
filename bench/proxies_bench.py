"""Two LiteLLM proxies (two processes, two ports, separate embedding caches) on one PostgreSQL store behind a
round-robin client: traces from both, exactly one refit per trigger, both short-circuit once a policy is certified.

The teacher is the local OpenAI-compatible stand-in (tracer_demo.local_teacher) answering Banking77 labels;
the proxies run `examples/litellm_proxy/config.yaml` with TRACER_DB set to the server's URL.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
from openai import OpenAI

from tests.pgcluster import ThrowawayCluster, free_port
from tracer_core.storage.store import TraceStore
from tracer_demo.local_teacher import LocalTeacher

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "examples" / "litellm_proxy" / "config.yaml"
SUBSET = ROOT / "tests" / "data" / "banking77_subset.jsonl"
SYSTEM = {"role": "system", "content": "Classify the banking query into its intent. Answer with the label only."}
# the `litellm` command, with tracer's INFO log (refits run and skipped) on stderr
LAUNCH = ("import logging, sys; handler = logging.StreamHandler(); log = logging.getLogger('tracer'); "
          "log.setLevel(logging.INFO); log.addHandler(handler); sys.argv[0] = 'litellm'; "
          "from litellm_cli.main import proxy_server; sys.exit(proxy_server())")
REFIT_EVERY = 400  # each proxy counts its own teacher traces: both reach it on the last two calls of phase 1
ALPHA = 0.9


class Proxy:
    """One `litellm --config` process with tracer on `db`, its own embedding cache, on a free port."""

    def __init__(self, name: str, db: str, teacher: LocalTeacher, workdir: Path) -> None:
        self.name, self.port, key = name, free_port(), f"sk-{secrets.token_hex(16)}"
        env = {
            **os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_MASTER_KEY": key, "TEACHER_API_BASE": teacher.base_url, "TEACHER_API_KEY": "sk-test",
            "TRACER_DB": db, "TRACER_ALPHA": str(ALPHA), "TRACER_MODE": "on", "TRACER_AUDIT_RATE": "0",
            "TRACER_REFIT_EVERY": str(REFIT_EVERY), "TRACER_CACHE_DIR": str(workdir / f"cache-{name}"),
            "TRACER_SPILL_DIR": str(workdir / f"spill-{name}"),
        }
        self.log_path = workdir / f"proxy-{name}.log"
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-c", LAUNCH, "--config", str(CONFIG), "--host", "127.0.0.1", "--port", str(self.port)], env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.client = OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key=key, max_retries=0, timeout=120)

    def ready(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"proxy {self.name} exited: {self.log_path.read_text()[-2000:]}")
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/health/readiness", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def ask(self, text: str) -> tuple[str, str]:
        """(answer, x-tracer-decision) of one chat call."""
        raw = self.client.chat.completions.with_raw_response.create(
            model="teacher", messages=[SYSTEM, {"role": "user", "content": text}],  # type: ignore[list-item]
        )
        return raw.parse().choices[0].message.content or "", raw.headers.get("x-tracer-decision", "?")

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self._log.close()


def wait_until(check, what: str, limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise RuntimeError(f"gave up waiting for {what}")


def drive(proxies: list[Proxy], url: str, teacher: LocalTeacher, rows: list[dict]) -> dict:
    """Phase 1 (every call to the teacher, both proxies trigger a refit), then phase 2 (certified calls)."""
    wait_until(lambda: all(p.ready() for p in proxies), "both proxies to be ready", 240)
    sent: dict[str, list[str]] = {p.name: [] for p in proxies}
    wrong = 0
    started = time.monotonic()
    for proxy, row in zip(itertools.cycle(proxies), rows):
        answer, _ = proxy.ask(row["input"])
        wrong += answer != row["label"]
        sent[proxy.name].append(row["input"])
    phase1_s = time.monotonic() - started
    with TraceStore(url) as store:
        wait_until(lambda: any(store.policies(v["task"]) for v in store.versions()), "a refit to finish", 600)
        time.sleep(10)  # a second refit (there must be none) would have saved its policy by now
        (version,) = store.versions()
        stored = {t.input for t in store.iter_traces(version["task"], source="teacher")}
        policies = store.policies(version["task"], fingerprint=version["fingerprint"])
    before = teacher.request_count
    decisions: dict[str, Counter] = {p.name: Counter() for p in proxies}
    for proxy, row in zip(itertools.cycle(proxies), rows[:200]):
        decisions[proxy.name][proxy.ask(row["input"])[1]] += 1
    return {"sent": sent, "wrong": wrong, "phase1_s": phase1_s, "stored": stored, "policies": policies,
            "decisions": decisions, "to_teacher": teacher.request_count - before}


def run() -> list[dict]:
    rows = [json.loads(line) for line in SUBSET.open(encoding="utf-8")]
    cluster = ThrowawayCluster().init()
    try:
        with tempfile.TemporaryDirectory() as tmp, LocalTeacher({r["input"]: r["label"] for r in rows}) as teacher:
            url = cluster.fresh_url()
            TraceStore(url).close()  # the schema, created once
            proxies = [Proxy(name, url, teacher, Path(tmp)) for name in ("A", "B")]
            try:
                got = drive(proxies, url, teacher, rows)
            finally:
                for proxy in proxies:
                    proxy.stop()
            logs = [p.log_path.read_text() for p in proxies]
            refits = {"run": sum(text.count(": refit v") for text in logs),
                      "skipped": sum(text.count("another process is refitting") for text in logs)}
    finally:
        cluster.destroy()
    out = []
    for name, mine in got["sent"].items():
        decided = got["decisions"][name]
        stored = sum(t in got["stored"] for t in mine)
        out.append({"proxy": name, "phase 1 calls": len(mine), "their traces in the store": stored,
                    "phase 2 handled / calls": f"{decided['handled']} / {sum(decided.values())}",
                    "ok": stored == len(mine) and decided["handled"] > 0})
    policies = got["policies"]
    deployed = [p for p in policies if p["status"] == "deployed"]
    out.append({
        "proxy": "both", "phase 1 calls": len(rows), "their traces in the store": len(got["stored"]),
        "phase 2 handled / calls": f"{sum(d['handled'] for d in got['decisions'].values())} / 200 "
                                   f"({got['to_teacher']} reached the teacher)",
        "refits (policy rows) / triggers": f"{len(policies)} / 2 (deployed: {len(deployed)})",
        "refits run / skipped for the lock (proxy logs)": f"{refits['run']} / {refits['skipped']}",
        "phase 1 wall (s)": round(got["phase1_s"], 1),
        "ok": len(policies) == 1 and len(deployed) == 1 and got["wrong"] == 0 and refits == {"run": 1, "skipped": 1},
    })
    return out


NOTE = (f"800 Banking77 queries sent alternately to proxy A and B (refit_every {REFIT_EVERY} per proxy, so both "
        "trigger a refit at the end of phase 1), then the first 200 again. Each proxy has its own embedding cache "
        "and spill directory; traces, policies and the refit lock are in one PostgreSQL store (a throwaway local "
        f"cluster). alpha {ALPHA}, audit rate 0.")
