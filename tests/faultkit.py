"""Fault injection shared by tests/test_faults.py and bench/faults.py: break a store or a stored
policy from another connection, and the subprocess scripts that exit or are killed mid-work."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import sqlite3
import subprocess
import sys
import textwrap
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SUBSET = ROOT / "tests" / "data" / "banking77_subset.jsonl"


def run_sql(db: Path, *statements: str) -> None:
    """Run statements on `db` from a connection of its own (another process would do the same)."""
    conn = sqlite3.connect(db)
    try:
        for statement in statements:
            conn.execute(statement)
        conn.commit()
    finally:
        conn.close()


def drop_traces_table(db: Path) -> str:
    """Drop `traces` from another connection; returns its CREATE statement to restore it."""
    conn = sqlite3.connect(db)
    try:
        (create,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'traces'").fetchone()
        conn.execute("DROP TABLE traces")
        conn.commit()
    finally:
        conn.close()
    return create


def tamper(db: Path, change) -> None:
    """Rewrite the newest deployed policy's artifact in place: `change(arrays, meta)` edits it."""
    conn = sqlite3.connect(db)
    try:
        version, blob = conn.execute(
            "SELECT version, artifact FROM policies WHERE status = 'deployed' ORDER BY version DESC LIMIT 1"
        ).fetchone()
        with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        meta = json.loads(arrays.pop("meta").tobytes().decode("utf-8"))
        change(arrays, meta)
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        conn.execute("UPDATE policies SET artifact = ? WHERE version = ?", (buf.getvalue(), version))
        conn.commit()
    finally:
        conn.close()


def nan_threshold(arrays: dict, meta: dict) -> None:
    meta["threshold"] = float("nan")


WEIGHTS = re.compile(r"^s_(m\d+_)?w\d+$")  # a surrogate's (or an ensemble member's) weight matrices


def nan_weights(arrays: dict, meta: dict) -> None:
    for key in [k for k in arrays if WEIGHTS.match(k)]:
        arrays[key] = np.full_like(arrays[key], np.nan)


def rotated_labels(arrays: dict, meta: dict) -> None:
    """Every label moved to the next one's place: each answer names the neighbouring label."""
    meta["labels"] = meta["labels"][1:] + meta["labels"][:1]


HANDLE_EVERYTHING = {"threshold": 0.0, "ood_threshold": 1e9}  # no confidence or out-of-distribution limit


def handle_everything(arrays: dict, meta: dict) -> None:
    """The artifact's limits lifted (a certified threshold may already be 0: the OOD limit changes anyway)."""
    meta.update(HANDLE_EVERYTHING)


def edit_certificate(db: Path, **changes: object) -> None:
    """Rewrite fields of the newest deployed policy's certificate in place (from another connection)."""
    conn = sqlite3.connect(db)
    try:
        version, body = conn.execute(
            "SELECT version, certificate FROM policies WHERE status = 'deployed' ORDER BY version DESC LIMIT 1"
        ).fetchone()
        conn.execute("UPDATE policies SET certificate = ? WHERE version = ?", (json.dumps(json.loads(body) | changes), version))
        conn.commit()
    finally:
        conn.close()


# store URLs that are malformed (or fail at once: nothing listens on port 1), with the pieces of their
# password that must never be shown, and what the error says
MALFORMED_URLS = [
    ("postgresql://tracer:Pa ss W0rd@127.0.0.1:1/postgres", ["Pa ss W0rd", "W0rd"], "unexpected spaces"),
    ("postgresql://tracer:Qx7w@Zk9v@127.0.0.1:55432/postgres", ["Qx7w", "Zk9v"], "more than one '@'"),
    ("postgresql://tracer:Qx7w:Zk9v@127.0.0.1:1/postgres", ["Qx7w", "Zk9v"], "cannot reach"),
    ("postgresql://tracer:Qx7w/Zk9v@127.0.0.1:1/postgres", ["Qx7w", "Zk9v"], "'/'"),
    ("postgresql://tracer:Qx7w%40Zk9v@127.0.0.1:1/postgres", ["Qx7w", "Zk9v"], "cannot reach"),
    ("postgresql://tracer:Qx7w%zzZk9v@127.0.0.1:1/postgres", ["Qx7w", "Zk9v"], "percent-encoded"),
    ("postgresql://tracer:Qx7w%@127.0.0.1:1/postgres", ["Qx7w"], "percent-encoded"),
    ("postgresql://tracer:Qx7w%ffZk9v@127.0.0.1:1/postgres", ["Qx7w", "Zk9v"], "UTF-8"),
    ("postgresql://tracer:Qx7wZk9v@[::1:55432/postgres", ["Qx7wZk9v"], "IPv6"),
    ("postgresql://tracer:Qx7wZk9v@127.0.0.1:99999/postgres", ["Qx7wZk9v"], "invalid port"),
    ("postgresql://tracer:Qx7wZk9v@127.0.0.1:notaport/postgres", ["Qx7wZk9v"], "invalid"),
    ("postgresql://tracer:Qx7wZk9v@127.0.0.1:1/postgres?bogus=1", ["Qx7wZk9v"], "bogus"),
    ("postgresql://tracer:Qx7wZk9v@:1/postgres", ["Qx7wZk9v"], "cannot reach"),
    ("postgresql://tracer@127.0.0.1:1/postgres?password=Qx7wZk9v&sslmode=disable", ["Qx7wZk9v"], "cannot reach"),
    ("postgresql://tracer@127.0.0.1:1/postgres?password=Qx7w&Zk9v&sslmode=disable", ["Qx7w", "Zk9v"], "%26"),
    ("postgresql://tracer@127.0.0.1:1/postgres?sslpassword=Qx7wZk9v&x=1", ["Qx7wZk9v"], "x"),
    ("postgresql:tracer:Qx7wZk9v@127.0.0.1:1/postgres", ["Qx7wZk9v"], "postgresql://"),
    ("  POSTGRES://tracer:Qx7w Zk9v@127.0.0.1:1/postgres  ", ["Qx7w", "Zk9v"], "unexpected spaces"),
]


def opening_outputs(url: str) -> tuple[BaseException | None, list[str]]:
    """Open a trace store at `url` and collect every text a user could see of it: the error (message, repr,
    formatted traceback, anything chained), what was logged, the store key and the name it is shown by."""
    from tracer_core import TraceStore
    from tracer_core.store_address import display, resolve_path, store_key

    logged = io.StringIO()
    handler = logging.StreamHandler(logged)
    root = logging.getLogger()
    root.addHandler(handler)
    level, root.level = root.level, logging.DEBUG
    error: BaseException | None = None
    try:
        with TraceStore(url):
            pass
    except Exception as exc:  # noqa: BLE001 - whatever it is, its text is checked
        error = exc
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    texts = [logged.getvalue(), store_key(resolve_path(url)), display(url)]
    if error is not None:
        texts += [str(error), repr(error), "".join(traceback.format_exception(error))]
        texts += [repr(chained) for chained in (error.__cause__, error.__context__) if chained is not None]
    return error, texts


def subprocess_env(**extra: str) -> dict:
    """The environment of a child Python that imports this checkout's packages."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), **extra}


# The first lines of a script whose exit is timed (`run_to_exit`): an exit hook registered before
# tracer's, so it runs after them, says when they are done.
EXIT_MARK = textwrap.dedent("""
    import atexit, sys, time
    atexit.register(lambda: print("exit hooks done", time.monotonic(), flush=True))
""")

# argv: db path, JSONL rows. Records 2 x the rows (a refit starts), waits until the refit thread
# has loaded the embedding model, then ends while the refit embeds the uncached texts.
REFIT_AT_EXIT = EXIT_MARK + textwrap.dedent("""
    import json, sys, time
    from tracer_core import Tracer
    from tracer_core.learning import embedder
    rows = [json.loads(line) for line in open(sys.argv[2], encoding="utf-8")]
    tracer = Tracer("exit-refit", db=sys.argv[1], alpha=0.9, refit_every=200)
    tracer.record_many([f"{r['input']} (variant {k})" for k in range(2) for r in rows],
                       [r["label"] for k in range(2) for r in rows])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (embedder._default is None or embedder._default._model is None):
        time.sleep(0.1)
    time.sleep(2)
    print("last line", time.monotonic(), flush=True)
""")

# argv: db path, JSONL rows. Like REFIT_AT_EXIT, but while the refit embeds it makes a last call,
# says so, closes the tracer (printing the report to stderr) and ends: the process must end within
# seconds, print nothing after close() and leave no policy row.
REFIT_THEN_CLOSE = EXIT_MARK + textwrap.dedent("""
    import json, sys, time
    from tracer_core import Tracer
    from tracer_core.learning import embedder
    rows = [json.loads(line) for line in open(sys.argv[2], encoding="utf-8")]
    tracer = Tracer("exit-refit", db=sys.argv[1], alpha=0.9, refit_every=200)
    tracer.record_many([f"{r['input']} (variant {k})" for k in range(2) for r in rows],
                       [r["label"] for k in range(2) for r in rows])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (embedder._default is None or embedder._default._model is None):
        time.sleep(0.1)
    time.sleep(1)
    tracer.record(rows[0]["input"], rows[0]["label"], decision=tracer.route(rows[0]["input"]))
    print("last line", time.monotonic(), flush=True)
    report = tracer.close()
    print(f"closed: abandoned_refits={getattr(report, 'abandoned_refits', None)} ok={report.ok}", file=sys.stderr, flush=True)
""")


@dataclass(frozen=True)
class ExitRun:
    """A script run to its end: its output, and the seconds from its `last line` to the end of the
    exit hooks (tracer's part) and to the end of the process (with the interpreter's teardown)."""

    returncode: int
    stdout: str
    stderr: str
    hooks_s: float
    exit_s: float


def run_to_exit(script: str, *args: str, env: dict, timeout: float = 300) -> ExitRun:
    """Run `script` (starting with EXIT_MARK, printing `last line <time.monotonic()>`) to its end."""
    done = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True,
                          timeout=timeout)
    ended = time.monotonic()  # one clock for every process of this machine
    stamps = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in done.stdout.splitlines()
              if line.startswith(("last line ", "exit hooks done "))}
    last = stamps.get("last line", float("nan"))
    return ExitRun(done.returncode, done.stdout, done.stderr, stamps.get("exit hooks done", float("nan")) - last,
                   ended - last)

# argv: db path, queue size. Records 5,000 traces, says so, then waits to be killed.
RECORD_THEN_WAIT = textwrap.dedent("""
    import sys, time
    from tracer_core import Tracer, TraceStore
    tracer = Tracer("kill", db=TraceStore(sys.argv[1], queue_size=int(sys.argv[2])), auto_refit=False)
    for i in range(5000):
        tracer.record(f"trace {i}", "x")
    print("recorded", flush=True)
    time.sleep(60)
""")
