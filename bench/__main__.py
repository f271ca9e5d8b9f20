"""`python -m bench [--only store,pgstore,proxies,speed,hits,routing,curve,coverage,oos,nli,validity,lifetime,faults,monitor,replay,suspects,fitscale,savings,gatestart,cli] [--validity-runs N] [--quick]`.

Prints each table as soon as it is ready and writes every table to bench/results.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SECTIONS = ("store", "pgstore", "proxies", "speed", "hits", "routing", "curve", "coverage", "oos", "nli", "validity", "lifetime", "faults", "monitor",
            "replay", "suspects", "fitscale", "savings", "gatestart", "cli")
RESULTS = Path(__file__).resolve().parent / "results.md"


def markdown(rows: list[dict]) -> str:
    if not rows:
        return "(no rows)"
    cols = list(rows[0])
    for row in rows[1:]:
        cols += [c for c in row if c not in cols]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        cells = []
        for c in cols:
            v = row.get(c, "")
            if isinstance(v, bool):
                v = "yes" if v else "NO"
            elif isinstance(v, int) and not isinstance(v, bool):
                v = f"{v:,}"
            cells.append(str(v).replace("|", "/"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def revision() -> str:
    """The git commit the benchmark ran against, and whether tracer_core/ had local changes."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "tracer_core"], cwd=root, capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit or 'unknown'}" + (" (tracer_core has uncommitted changes)" if dirty else "")


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (f"nproc {os.cpu_count()}, CPU {cpu}, Python {platform.python_version()} ({platform.system()} "
            f"{platform.release()}), load average at start {load}")


class Report:
    def __init__(self, header: list[str]):
        self.header = header
        self.sections: list[str] = []

    def add(self, title: str, rows: list[dict], note: str = "") -> None:
        stamp = f"_measured {datetime.date.today().isoformat()} at commit {revision()}_"
        text = f"## {title}\n\n{stamp}\n\n{markdown(rows)}\n" + (f"\n{note}\n" if note else "")
        self.sections.append(text)
        print("\n" + text, flush=True)

    def write(self, footer: str = "") -> None:
        """Rewrite results.md: this run's sections replace those of the same title in place; others are kept."""
        fresh = {_title(s): s for s in self.sections}
        previous = previous_sections()
        seen = {_title(s) for s in previous}
        body = "\n".join([fresh.get(_title(s), s) for s in previous] + [s for s in self.sections if _title(s) not in seen])
        RESULTS.write_text("\n".join(self.header) + "\n\n" + body + (f"\n{footer}\n" if footer else ""),
                           encoding="utf-8")


def _title(section: str) -> str:
    return section.split("\n", 1)[0]


def previous_sections() -> list[str]:
    """The `## ` sections of the existing results.md (its header and footer line dropped)."""
    if not RESULTS.exists():
        return []
    text = RESULTS.read_text(encoding="utf-8")
    parts = re.split(r"(?m)^(?=## )", text)[1:]
    return [re.sub(r"\n(Total wall time [^\n]*\n?)$", "\n", part).rstrip("\n") + "\n" for part in parts]


def main(argv: list[str] | None = None) -> int:
    from bench import routing as rb
    from bench.fits import FitCache

    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--validity-runs", type=int, default=None,
                        help="re-splits for the validity benchmark (default $TRACER_BENCH_VALIDITY_RUNS or 50)")
    parser.add_argument("--quick", action="store_true", help="10 validity runs")
    parser.add_argument("--workers", type=int, default=None, help="fit processes (default $TRACER_BENCH_WORKERS or 2)")
    parser.add_argument("--replay-runs", type=int, default=20,
                        help="shuffles of the stable replay (teacher change: half as many; CLINC150 stable: a quarter; CLINC150 out-of-scope: 1)")
    args = parser.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(only) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    runs = args.validity_runs if args.validity_runs is not None else (10 if args.quick else rb.validity_runs())

    started = time.time()
    report = Report([
        "# tracer benchmarks",
        "",
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- machine: {machine()}",
        f"- code: commit {revision()}",
        f"- command: `python -m bench {' '.join(sys.argv[1:] if argv is None else argv)}`".rstrip() + "",
        f"- benchmarks: {', '.join(only)}; validity runs: {runs}; delta 0.05",
        "- fits read embeddings from the on-disk cache; fit times marked * ran in a pool of 2 single-BLAS-thread "
        "worker processes beside another fit (other work on the machine also adds noise).",
    ])
    cache = FitCache(args.workers)
    try:
        if "store" in only:
            from bench.store_bench import run as store_run

            report.add("Store", store_run())
            report.write()
        if "pgstore" in only:
            from bench.pgstore_bench import NOTE
            from bench.pgstore_bench import run as pgstore_run

            report.add("Store on PostgreSQL beside SQLite", pgstore_run(), NOTE)
            report.write()
        if "proxies" in only:
            from bench.proxies_bench import NOTE as PROXIES_NOTE
            from bench.proxies_bench import run as proxies_run

            report.add("Two LiteLLM proxies on one PostgreSQL store", proxies_run(), PROXIES_NOTE)
            report.write()
        if "speed" in only:  # before the pool starts, so the fit and the latencies run alone
            from bench.speed import speed

            report.add("Speed", speed(cache), "Fit timed alone in the main process; decide() = "
                       "`policy.decide([text], vec[None])` (surrogate + OOD + unseen-label checks); "
                       "Tracer.route() includes embedding and the store's policy check.")
            report.write()
        if "hits" in only:  # before the pool starts: the refits share the process with nothing else
            from bench.hits import NOTE as HITS_NOTE
            from bench.hits import hits

            report.add("Hits while tracer learns: surrogate answers idle and during a background refit", hits(),
                       HITS_NOTE)
            report.write()
        if "faults" in only:  # before the pool starts: stalls are measured without fits beside them
            from bench.faults import CALLS, faults

            report.add("Faults: what the caller sees when the store, the file, the policy or the process fails",
                       faults(),
                       f"Each scenario: {CALLS} calls of route() + record() with a certified Banking77 policy; "
                       "the fault after a third of them (restored after two thirds where a repair exists); "
                       "lost = traces recorded after the fault that are not in the store after a restart "
                       "(which replays the spill file); longest stall = the slowest route() + record() call; "
                       "answers from a broken policy count handled decisions more than policy_check_s (0.2 s) "
                       "after the policy broke (a policy row edited in place is seen by processes that load it; "
                       "a running process keeps answering from the valid copy it loaded and certified). "
                       "Longest caller-path wait = tracer's own work on the caller's thread minus the embedding "
                       "and any garbage-collection pause (bench/caller_clock.py; target 50 ms); the rows after the "
                       "SIGKILL one are issue 22's (bench/caller_faults.py), each making 20 calls while the fault "
                       "lasts. Exits: from the script's last call to the end of its exit hooks (target 2 s) and "
                       "of the process (which adds Python's teardown of its modules).")
            report.write()
        if "fitscale" in only:  # before the pool starts: one fit process at a time, nothing beside it
            from bench.fit_scale import NOTE, VALIDITY_CAP, VALIDITY_NOTE, capped_validity, fit_scale

            report.add("Fit cost as traces grow: one task, 10,000 / 50,000 / 200,000 teacher traces",
                       fit_scale(), NOTE)
            report.write()
            report.add(f"Validity under the training cap: Banking77 T1, alpha 0.95, max_train {VALIDITY_CAP:,}, "
                       "10 re-splits", capped_validity(), VALIDITY_NOTE)
            report.write()
        if "cli" in only:  # before the pool starts: nothing beside the commands it times
            from bench.cli import BOUND_NOTE, BOUND_TRACES, NOTE, bound_rows, cli_times

            report.add("CLI response times: 10,003 Banking77 traces", cli_times(), NOTE)
            report.write()
            report.add(f"Report and suspects at {BOUND_TRACES:,} traces: time and memory", bound_rows(), BOUND_NOTE)
            report.write()
        keys = rb.fit_keys(only, runs)
        cache.submit(keys)  # queue every fit now; the tables below wait for their own

        if "routing" in only:
            for dataset, teacher in rb.ROUTING_SETS:
                report.add(f"Routing quality: {rb.NAMES[dataset]} {teacher}", rb.routing(cache, dataset, teacher),
                           "test agreement = agreement with the teacher's test labels on handled inputs; "
                           "sig. below = exact one-sided binomial p < 0.05; deferrals count test decisions by reason.")
                report.write()
        if "curve" in only:
            report.add("Learning curve: Banking77 T1, alpha 0.90, first N traces", rb.learning_curve(cache))
            report.write()
        if "oos" in only:
            report.add("Out-of-scope: CLINC150 oos_test", rb.out_of_scope(cache))
            report.write()
        if "coverage" in only:
            from bench import coverage

            report.add(f"Coverage targets (issue 13) over {coverage.SEEDS} fit seeds", coverage.coverage_targets(cache),
                       coverage.NOTE)
            report.write()
        if "nli" in only:
            report.add("NLI: SICK (train -> test)", rb.nli(cache),
                       "shuffled = train labels permuted at random against the texts (test agreement "
                       "still against the real test labels).")
            report.write()
        if "validity" in only:
            report.add(f"Validity: Banking77 T1, alpha {rb.VALIDITY_ALPHA}, {runs} random re-splits (fit seed 0..{runs - 1})",
                       rb.validity(cache, runs),
                       "below alpha = raw test agreement on handled inputs < alpha; refused runs count as not below.")
            report.write()
        if "monitor" in only:
            from bench import monitor as mb

            report.add("Monitor: the agreement e-process, candidates on common streams", mb.candidates_table(),
                       mb.CANDIDATES_NOTE)
            report.write()
            report.add("Monitor: a good policy after a bad one, one monitor per policy version", mb.good_after_bad_table(),
                       mb.GOOD_AFTER_BAD_NOTE)
            report.write()
            report.add("Monitor: label-free signals on steady traffic (false alarms per policy version)",
                       mb.label_free_false_alarms(), mb.LABEL_FREE_NOTE)
            report.write()
            report.add("Monitor: label-free signals after a jump", mb.label_free_power(), mb.LABEL_FREE_NOTE)
            report.write()
        if "lifetime" in only:
            from bench import lifetime

            report.add("Lifetime guarantee: near-miss tasks refitted 30 times", lifetime.near_miss(cache.workers),
                       lifetime.NEAR_MISS_NOTE)
            report.write()
            report.add("Lifetime guarantee: the calibration window", lifetime.calibration_window(cache),
                       lifetime.WINDOW_NOTE)
            report.write()
        if "replay" in only:
            from bench.replay_tables import replay_tables

            for title, rows, note in replay_tables(args.replay_runs, workers=cache.workers):
                report.add(title, rows, note)
                report.write()
        if "savings" in only:
            from bench.savings import savings_tables

            for title, rows, note in savings_tables():
                report.add(title, rows, note)
            report.write()
        if "gatestart" in only:
            from bench import gatestart

            rows, summary = gatestart.tables(gatestart.captures(cache.workers))
            report.add("Where the gate's walk starts: start rules on the same fits", rows, gatestart.NOTE)
            report.add("Where the gate's walk starts: each rule against today's", summary, gatestart.SUMMARY_NOTE)
            report.write()
        if "suspects" in only:
            from bench.suspects import run as suspects_run

            report.add("Teacher suspects: Banking77 train, T2 flips", *suspects_run())
            report.write()
    finally:
        cache.close()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    report.write(f"Total wall time {time.time() - started:.0f} s; load average at the end {load} "
                 f"(on {os.cpu_count()} cores: timings above {'are inflated by other work' if os.getloadavg()[0] > (os.cpu_count() or 1) else 'ran on a quiet machine'}).")
    print(f"\nTotal wall time {time.time() - started:.0f} s; wrote {RESULTS}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
