"""Is the savings estimate honest? On Banking77 T1 and CLINC150 T1 at alpha 0.95, each in 3 shuffles of its traces, a
task version is fitted at FIRST traces and refitted every STEP traces with one ledger, as background refits do (each
refused attempt makes the next test stricter, and the schedule waits for fresh evidence), until a fit deploys. Every
refused fit's estimate is set against that first deploy; every CHECK_EVERY traces, the suggested lower alpha is checked by a fit at it
when the schedule next allows an attempt (on a copy of the ledger, so the version's own life goes on unchanged)."""

from __future__ import annotations

import copy
import statistics
import sys
import time

import numpy as np

from bench.data import Split, teacher_split, train_order
from bench.fits import DELTA

ALPHA = 0.95
DATASETS = (("banking77", "T1"), ("clinc150", "T1"))
SEEDS = (0, 1, 2)
FIRST = 500
CHECK_EVERY = 400  # the suggested lower alpha is checked at every other refit
STEP = 200  # tracer's default refit_every
MAX_TRACES = 6_000
EARLY = 0.20  # the target: the estimate is not early by more than this share of the actual count ...
TARGET_SHARE = 0.80  # ... in at least this share of cases; and this share of suggested lower alphas certify
SALT = "bench savings"
NOTE = (f"Each row: a refused fit of one task version (salt {SALT!r} + seed; the data set's traces in the seed's "
        f"shuffle, all may calibrate), fitted at {FIRST} traces and then every {STEP} with one ledger (the schedule "
        f"and delta spending as in a store) until a fit deploys (at most {MAX_TRACES:,}). `estimate` = traces then + "
        "the estimate's more traces (its predicted coverage; `minimum`: no model yet, the gate's minimum only); "
        "`deployed at` = the version's first deploying refit; `ratio` = deployed at / estimate (above 1: the estimate "
        f"was early). Every {CHECK_EVERY} traces the suggested lower alpha is checked: a fit at it on a copy of the ledger, on the traces then plus those the schedule waits for. An estimate, never a "
        "promise.")
SUMMARY_NOTE = (f"Targets: the estimate is not early by more than {EARLY:.0%} (estimate >= {1 - EARLY:.0%} of the "
                f"traces at the first deploy) in >= {TARGET_SHARE:.0%} of the cases with an estimate; a suggested lower "
                f"alpha certifies in >= {TARGET_SHARE:.0%} of the checks where one is suggested.")


def shuffled_first_n(dataset: str, teacher: str, n: int, seed: int) -> Split:
    """The first n train traces of the data set in shuffle `seed` of its fixed train order."""
    full = teacher_split(dataset, teacher)
    idx = np.random.default_rng(seed).permutation(train_order(dataset))[:n]
    return Split(f"{dataset} {teacher} seed {seed} first {n}", [full.train_texts[i] for i in idx],
                 [full.train_labels[i] for i in idx], full.test_texts, full.test_labels)


def savings_tables() -> list[tuple[str, list[dict], str]]:
    """The per-estimate table and the targets' summary."""
    started = time.time()
    rows = [row for dataset, teacher in DATASETS for seed in SEEDS for row in _version(dataset, teacher, seed)]
    minutes = (time.time() - started) / 60
    title = f"When savings start: the refused fit's estimate against the first refit that deploys (alpha {ALPHA})"
    return [(title, rows, NOTE), ("When savings start: the targets", _summary(rows),
                                  f"{SUMMARY_NOTE} Wall time of the section: {minutes:.1f} min.")]


def _version(dataset: str, teacher: str, seed: int) -> list[dict]:
    """One task version's life until a fit deploys: a row per refused fit."""
    from tracer_core.learning.embedder import get_default_embedder
    from tracer_core.learning.fit import fit_policy
    from tracer_core.learning.spending import MemoryLedger

    embed = get_default_embedder()

    def fit(n: int, alpha: float, ledger: MemoryLedger):
        data = shuffled_first_n(dataset, teacher, n, seed)
        return fit_policy(data.train_texts, data.train_labels, alpha=alpha, delta=DELTA, embed=embed,
                          salt=f"{SALT} {seed}", ledger=ledger)[1]

    ledger, rows, estimates = MemoryLedger(), [], []
    deployed_at, coverage = None, None
    for n in range(FIRST, MAX_TRACES + 1, STEP):
        cert = fit(n, ALPHA, ledger)
        if cert.deployed:
            deployed_at, coverage = n, cert.coverage
            break
        est = cert.savings_estimate or {}
        more = est.get("more_traces")
        estimates.append(n + more if more and est.get("basis") == "validation" else None)
        row = {"data": f"{dataset} {teacher}", "seed": seed, "traces": n, "outcome": cert.reason_code,
               "attempts so far": ledger.next_attempt() - 1, "estimate": _estimate_text(n, est)}
        if (n - FIRST) % CHECK_EVERY == 0:
            check = None if est.get("lower_alpha") is None else fit(n + est.get("wait", 0), est["lower_alpha"],
                                                                     copy.deepcopy(ledger))
            row.update(_lower_alpha_cells(est, check))
        print(f"savings: {row}", file=sys.stderr, flush=True)
        rows.append(row)
    actual = deployed_at or MAX_TRACES
    for row, estimate in zip(rows, estimates):
        row["deployed at"] = f"{deployed_at:,} ({coverage:.0%} cov.)" if deployed_at else f"not by {MAX_TRACES:,}"
        if estimate:
            row["ratio"] = round(actual / estimate, 2)
            row["early > 20%"] = estimate < (1 - EARLY) * actual
    return rows or [{"data": f"{dataset} {teacher}", "seed": seed, "traces": FIRST, "outcome": "deployed",
                     "deployed at": f"{FIRST:,} ({coverage:.0%} cov.)"}]


def _estimate_text(n: int, est: dict) -> str:
    more = est.get("more_traces")
    if not more:
        return "not in reach"
    if est.get("basis") != "validation":
        return f">= {n + more:,} (minimum)"
    return f"{n + more:,} (~{est['coverage']:.0%} cov.)"


def _lower_alpha_cells(est: dict, check) -> dict:
    """The lower-alpha check's cells (`check`: the certificate of a fit at the suggested alpha, None: none suggested)."""
    if check is None:
        return {"lower alpha suggested": "none", "fit at it": "-"}
    lower, predicted = est["lower_alpha"], est.get("lower_alpha_coverage")
    return {"lower alpha suggested": f"{lower:g} (~{predicted:.0%})" if predicted else f"{lower:g} (minimum)",
            "fit at it": f"deployed, {check.coverage:.0%}" if check.deployed else check.reason_code,
            "certified": check.deployed}


def _summary(rows: list[dict]) -> list[dict]:
    estimated = [r for r in rows if "ratio" in r]
    checked = [r for r in rows if "certified" in r]
    on_time = sum(not r["early > 20%"] for r in estimated)
    certified = sum(r["certified"] for r in checked)
    ratios = [r["ratio"] for r in estimated]
    return [
        {"target": f"estimate not early by > {EARLY:.0%}", "estimates": len(estimated), "met in": on_time,
         "share": f"{on_time / len(estimated):.0%}" if estimated else "-",
         "met": bool(estimated) and on_time >= TARGET_SHARE * len(estimated),
         "detail": (f"deployed at / estimate: median {statistics.median(ratios):.2f}, range {min(ratios):.2f}-"
                    f"{max(ratios):.2f}") if ratios else "-"},
        {"target": "a suggested lower alpha certifies", "estimates": len(checked), "met in": certified,
         "share": f"{certified / len(checked):.0%}" if checked else "-",
         "met": not checked or certified >= TARGET_SHARE * len(checked),
         "detail": f"{len(checked)} suggested in {sum('fit at it' in r for r in rows)} checks"},
    ]
