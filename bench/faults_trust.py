"""Fault rows of issue 22, cases 4, 6 and 7: what must never be shown or answered.

- A set of malformed (or unreachable) PostgreSQL URLs opened as a store and given to `tracer status`:
  every output a user sees is searched for pieces of the password (target: none).
- A store whose policy was fitted with another embedder (512-d hashed bag of words) routed with
  MiniLM: answers from it (target 0), and `tracer route/report/status/suspects` exit cleanly.
- Policies edited consistently (labels rotated by one; threshold 0 and no out-of-distribution limit,
  in artifact and certificate; certificate set to deployed: false, alpha 0.5): scenarios of the fault
  loop, answers from them 0.
"""

from __future__ import annotations

import time
from pathlib import Path

from bench.fit_scale import BagOfWordsEmbedder
from tests.faultkit import (
    HANDLE_EVERYTHING,
    MALFORMED_URLS,
    edit_certificate,
    handle_everything,
    opening_outputs,
    rotated_labels,
    tamper,
)

OTHER_DIMENSION = 512


def edited_policy_scenarios(db: Path) -> list[tuple[str, dict]]:
    """(name, spec) of the fault loop in bench/faults.py: the policy row edited while calls go on."""
    def handle_everything_everywhere() -> None:
        tamper(db, handle_everything)
        edit_certificate(db, **HANDLE_EVERYTHING)

    return [
        ("policy labels rotated by one (a process starting after it)",
         dict(fault=lambda: tamper(db, rotated_labels), policy_fault=True, fresh=True)),
        ("policy threshold set to 0, out-of-distribution limit lifted, in artifact and certificate "
         "(a process starting after it)", dict(fault=handle_everything_everywhere, policy_fault=True, fresh=True)),
        ("certificate edited to deployed: false, alpha 0.5 (a process starting after it)",
         dict(fault=lambda: edit_certificate(db, deployed=False, alpha=0.5), policy_fault=True, fresh=True)),
    ]


def malformed_urls() -> dict:
    """Every output of opening each URL of MALFORMED_URLS, and of `tracer status --db URL`, searched for the password."""
    from click.testing import CliRunner

    from bench.faults import _row
    from tracer_core.cli.commands import main as cli
    from tracer_core.errors import StoreError

    checked = leaks = clean = 0
    started = time.perf_counter()
    for url, pieces, _ in MALFORMED_URLS:
        error, outputs = opening_outputs(url)
        result = CliRunner().invoke(cli, ["status", "--db", url])
        outputs.append(result.output)
        one_line = result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
        clean += isinstance(error, StoreError) and error.__context__ is None and one_line
        checked += len(outputs)
        leaks += sum(any(piece in text for piece in pieces) for text in outputs)
    row = _row(f"{len(MALFORMED_URLS)} malformed or unreachable PostgreSQL URLs (spaces, '@', ':', '/', '%' in the "
               "password, unclosed bracket, bad ports, unknown option, empty host, query password)",
               len(MALFORMED_URLS), clean, 0, 0, "-", None, None,
               f"{checked} outputs checked (message, repr, traceback, chained errors, log, store key, shown name, "
               f"`tracer status --db URL`): {leaks} hold a piece of a password (target 0); completed = a one-line "
               f"StoreError, nothing chained; {time.perf_counter() - started:.1f} s")
    row["ok"] = row["ok"] and leaks == 0
    return row


def other_embedder(folder: Path, rows: list[dict], embed, calls: int) -> dict:
    """A policy fitted with a 512-d bag-of-words embedder, routed by a process that embeds with MiniLM."""
    from click.testing import CliRunner

    from bench.faults import TASK, _row
    from tracer_core import Tracer, TraceStore
    from tracer_core.cli.commands import main as cli

    db = folder / "other-embedder.db"
    with Tracer(TASK, db, alpha=0.9, embedder=BagOfWordsEmbedder(OTHER_DIMENSION), auto_refit=False) as tracer:
        tracer.record_many([r["input"] for r in rows], [r["label"] for r in rows])
        cert = tracer.fit()
    assert cert.deployed, cert.reason
    embed([rows[0]["input"]])  # the model is loaded before the calls are timed, as in the other scenarios
    handled, stall, reasons = 0, 0.0, set()
    with Tracer(TASK, db, alpha=0.9, embedder=embed, auto_refit=False) as tracer:
        for i in range(calls):
            row = rows[i % len(rows)]
            start = time.perf_counter()
            decision = tracer.route(row["input"])
            tracer.record(row["input"], row["label"], decision=decision)
            stall = max(stall, time.perf_counter() - start)
            handled += decision.handled
            reasons.add(str(decision.reason))
    with TraceStore(db) as store:
        lost = calls - (sum(store.counts(TASK).values()) - len(rows))
    runner = CliRunner()
    common = ["--task", TASK, "--db", str(db)]
    codes = {name: runner.invoke(cli, [name, *common, *extra]).exit_code for name, extra in (
        ("route", ["I lost my card"]), ("report", ["--no-refit", "--out", str(folder / "other-embedder.html")]),
        ("status", []), ("suspects", ["--limit", "3"]))}
    row = _row(f"policy fitted with another embedder ({OTHER_DIMENSION}-d bag of words), routed with MiniLM", calls,
               calls, calls, lost, "-", handled, stall,
               f"reasons {', '.join(sorted(reasons))}; exit codes " + ", ".join(f"{k} {v}" for k, v in codes.items())
               + "; longest call includes identifying the embedder once (5 probe texts)")
    row["ok"] = row["ok"] and not any(codes.values()) and reasons == {"embedder_mismatch"}
    return row
