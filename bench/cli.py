"""How long the `tracer` command makes a person wait (issue 23), and the report and suspects at 200,000 traces.

At 10,000: the 10,003 Banking77 train traces (T1 labels) go into a new SQLite store with `tracer import`,
`tracer fit` deploys a policy (real all-MiniLM-L6-v2, embeddings from the on-disk cache), then each
command runs as a user runs it: the `tracer` console script in a fresh process, wall time from start to
exit. At 200,000: a store filled as bench/fit_scale.py fills it, with its hashed bag-of-words embedder
standing in for MiniLM (the bound is about tracer's work, not encoding); the fit, the suspects' cross-fit
and the report each run in a fresh process whose peak RSS is read from `os.wait4`.

`python -m bench.cli --child WHAT DB CACHE` is such a process at 200,000 (prints one JSON line).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TASK = "intent"
FAST_TARGET_S = 0.5
REPORT_TARGET_S = 10.0
SUSPECTS_TARGET_S = 20.0
REPORT_TARGET_MB = 1.5
REPEATS = 3  # runs of each fast command (the median is shown)
BOUND_TRACES = 200_000
ROOT = Path(__file__).resolve().parent.parent


def tracer_command() -> list[str]:
    """The `tracer` console script beside this interpreter (what a user runs), else the same entry point."""
    script = Path(sys.executable).parent / "tracer"
    return [str(script)] if script.exists() else [sys.executable, "-c", "from tracer_core.cli import main; main()"]


def env() -> dict[str, str]:
    """A user's environment: Python caches compiled modules (an installed package ships them), so this machine's
    PYTHONDONTWRITEBYTECODE, which makes every start compile ~150 modules again, is dropped; the `import` and `fit`
    runs before the timed commands write the cache."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"} | {"PYTHONPATH": str(ROOT)}


def run(args: list[str], cwd: Path) -> float:
    """Wall seconds of one `tracer ARGS` process; a failure stops the benchmark with its message."""
    started = time.perf_counter()
    done = subprocess.run([*tracer_command(), *args], cwd=cwd, env=env(), capture_output=True, text=True, timeout=1800)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"tracer {' '.join(args)} failed: {done.stderr[-2000:]}")
    return seconds


def banking_jsonl(path: Path) -> int:
    from bench.data import teacher_split

    split = teacher_split("banking77", "T1")
    with open(path, "w", encoding="utf-8") as fh:
        for text, label in zip(split.train_texts, split.train_labels):
            fh.write(json.dumps({"input": text, "teacher": label}) + "\n")
    return len(split.train_texts)


def cli_times() -> list[dict]:
    """One row per command at 10,003 Banking77 traces."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="tracer-cli-bench-") as tmp:
        folder = Path(tmp)
        n = banking_jsonl(folder / "traces.jsonl")
        db = ["--db", str(folder / "traces.db")]
        run(["import", "traces.jsonl", "--task", TASK, *db], folder)
        fit_s = run(["fit", "--task", TASK, *db], folder)
        rows.append({"command": "tracer fit (setup, for scale)", "traces": n, "wall s": f"{fit_s:.1f}", "target": "-",
                     "ok": True})
        fast = [("tasks", ["tasks"]), ("status", ["status"]), ("status --task", ["status", "--task", TASK]),
                ("export --out", ["export", "--task", TASK, "--out", "out.jsonl"])]
        for name, args in fast:
            seconds = statistics.median(run([*args, *db], folder) for _ in range(REPEATS))
            rows.append(_row(f"tracer {name} (median of {REPEATS})", n, seconds, FAST_TARGET_S))
        cold = run(["suspects", "--task", TASK, "--refit", *db], folder)
        rows.append(_row("tracer suspects --refit (cross-fits the evidence)", n, cold, SUSPECTS_TARGET_S))
        warm = run(["suspects", "--task", TASK, *db], folder)
        rows.append(_row("tracer suspects (reuses the kept evidence)", n, warm, SUSPECTS_TARGET_S))
        report = run(["report", "--task", TASK, "--out", "report.html", *db], folder)
        size = (folder / "report.html").stat().st_size / 1e6
        row = _row("tracer report (no refit; evidence kept by suspects)", n, report, REPORT_TARGET_S)
        row |= {"file MB": f"{size:.2f}", "target": f"<= {REPORT_TARGET_S:g} s, <= {REPORT_TARGET_MB:g} MB",
                "ok": row["ok"] and size <= REPORT_TARGET_MB}
        rows.append(row)
    return rows


def _row(command: str, n: int, seconds: float, target: float) -> dict:
    return {"command": command, "traces": n, "wall s": f"{seconds:.2f}", "target": f"<= {target:g} s",
            "ok": seconds <= target}


def child(what: str, db: str, cache: str) -> dict:
    """One measured step at 200,000 traces, in this process."""
    from bench.fit_scale import TASK as SCALE_TASK
    from bench.fit_scale import BagOfWordsEmbedder
    from tracer_core.learning.suspects import teacher_suspects
    from tracer_core.learning.suspects_cache import EvidenceCache
    from tracer_core.report import build_report
    from tracer_core.serving.tracer import Tracer
    from tracer_core.storage.store import TraceStore

    embed = BagOfWordsEmbedder()
    started = time.perf_counter()
    out: dict[str, Any]
    if what == "fit":
        with Tracer(SCALE_TASK, db, embedder=embed, auto_refit=False) as tracer:
            out = {"deployed": tracer.fit().deployed}
    elif what == "suspects":
        with TraceStore(db) as store:
            found = teacher_suspects(store.teacher_examples(SCALE_TASK, ""), embed, cache=EvidenceCache(Path(cache)))
        out = {"scored": found.n_traces, "sampled_from": found.sampled_from, "suspects": found.n_suspects}
    else:
        html = Path(cache) / "report.html"
        with TraceStore(db) as store:
            facts = build_report(store, SCALE_TASK, out_html=html, embed=embed, refit_fractions=(),
                                 suspects_cache=EvidenceCache(Path(cache), reuse_only=True))
        out = {"calibration": facts["calibration"]["n"], "suspects_shown": not facts["suspects"]["unavailable"],
               "file_mb": html.stat().st_size / 1e6}
    return {"seconds": time.perf_counter() - started, **out}


def measured(what: str, db: Path, cache: Path) -> dict:
    """`child(what, ...)` in a fresh process, with that process's peak RSS."""
    proc = subprocess.Popen([sys.executable, "-m", "bench.cli", "--child", what, str(db), str(cache)],
                            stdout=subprocess.PIPE, env=env(), text=True)
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{what} at {BOUND_TRACES:,} traces failed")
    return {**json.loads(out.strip().splitlines()[-1]), "peak_rss_mib": usage.ru_maxrss / 1024}


def bound_rows(n: int = BOUND_TRACES) -> list[dict]:
    """Fit, suspects' cross-fit and report at n traces: wall time and peak RSS of each."""
    from bench.fit_scale import fill_store

    with tempfile.TemporaryDirectory(prefix="tracer-cli-bound-") as tmp:
        db, cache = Path(tmp) / "traces.db", Path(tmp)
        fill_store(db, n)
        fit = measured("fit", db, cache)
        found = measured("suspects", db, cache)
        report = measured("report", db, cache)
    return [
        {"command": "fit (setup)", "traces": n, "wall s": f"{fit['seconds']:.1f}", "peak RSS MiB": f"{fit['peak_rss_mib']:.0f}",
         "what": "deployed" if fit["deployed"] else "refused"},
        {"command": "suspects (cross-fit)", "traces": n, "wall s": f"{found['seconds']:.1f}",
         "peak RSS MiB": f"{found['peak_rss_mib']:.0f}",
         "what": f"scored a random {found['scored']:,} of {found['sampled_from'] or n:,}: {found['suspects']:,} suspects"},
        {"command": "report (no refit, kept evidence)", "traces": n, "wall s": f"{report['seconds']:.1f}",
         "peak RSS MiB": f"{report['peak_rss_mib']:.0f}",
         "what": f"{report['calibration']:,} calibration traces routed; suspects shown: "
                 f"{'yes' if report['suspects_shown'] else 'no'}; HTML {report['file_mb']:.2f} MB"},
    ]


NOTE = ("Wall time of each `tracer` command in a fresh process (the console script, as a user runs it), on a new "
        "SQLite store holding the 10,003 Banking77 train traces (T1 labels) and the policy `tracer fit` deployed "
        "(real all-MiniLM-L6-v2; embeddings come from the on-disk cache, which the fit fills). `suspects --refit` "
        "cross-fits the evidence (20 logistic regressions: 2 models x 5 folds x 2 rounds on 2 worker processes, and a neighbour vote); the plain `suspects` and `report` "
        "reuse the evidence it kept. `report` fits nothing by default (`--refit` adds the prefix refits). Wall "
        "times grow with other work on the 2 shared cores (load average in the header). Compiled modules are "
        "cached, as on a user's machine (this machine sets PYTHONDONTWRITEBYTECODE, which the commands run "
        "without: compiling every module again adds about 0.1-0.2 s to each start).")
BOUND_NOTE = ("200,000 teacher traces of one task, filled as bench/fit_scale.py fills them; a hashed bag-of-words "
              "embedder (384 dimensions, no model) stands in for MiniLM, so tracer's own work is measured. Each step "
              "runs in a fresh process (peak RSS from `os.wait4`). Above 20,000 traces `suspects` cross-fits a "
              "fixed-seed random sample of 20,000 and says so; the report maps at most 2,000 calibration inputs "
              "(a sample it names).")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], sys.argv[3], sys.argv[4])))
    else:
        sys.exit("usage: python -m bench.cli --child WHAT DB CACHE (the benchmark runs from `python -m bench --only cli`)")
