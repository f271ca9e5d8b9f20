"""Is the savings estimate honest? On Banking77 T1 and CLINC150 T1 at alpha 0.95, each in 3 shuffles of its traces: a
fit at 500 / 1,000 / 2,000 traces (a fresh task version) that is refused estimates when a fit would deploy; the same
version then refits every STEP traces (one ledger, as background refits do: each refused attempt makes the next test
stricter and the schedule waits for fresh evidence) until one deploys. The estimate's lower alpha is checked by a fit
at that alpha when the schedule next allows an attempt, with the ledger as it was after the start's fit."""

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
STARTS = (500, 1_000, 2_000)
SEEDS = (0, 1, 2)
STEP = 200  # tracer's default refit_every
MAX_TRACES = 6_000
EARLY = 0.20  # the target: the estimate is not early by more than this share of the actual count ...
TARGET_SHARE = 0.80  # ... in at least this share of cases; and this share of suggested lower alphas certify
SALT = "bench savings"
NOTE = (f"Each row: one task version (salt {SALT!r} + seed; the data set's traces in the seed's shuffle, all may "
        f"calibrate), a fit at `start` traces with a fresh ledger, then refits every {STEP} traces with the same ledger "
        f"(the schedule and delta spending as in a store) until one deploys (at most {MAX_TRACES:,}). `estimate` = "
        "start + the estimate's more traces (its predicted coverage); `deployed at` = the first refit that deployed; "
        "`ratio` = deployed at / estimate (above 1: the estimate was early). The lower-alpha check fits at the "
        "suggested alpha with the ledger as it was after the start's fit, on the start's traces plus those the "
        "schedule waits for. Rows whose start deployed have no estimate. An estimate, never a promise.")
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
    """The per-case table and the targets' summary."""
    started = time.time()
    rows = [_case(dataset, teacher, seed, start) for dataset, teacher in DATASETS for seed in SEEDS for start in STARTS]
    minutes = (time.time() - started) / 60
    title = f"When savings start: the refused fit's estimate against the first refit that deploys (alpha {ALPHA})"
    return [(title, rows, NOTE), ("When savings start: the targets", _summary(rows),
                                  f"{SUMMARY_NOTE} Wall time of the section: {minutes:.1f} min.")]


def _case(dataset: str, teacher: str, seed: int, start: int) -> dict:
    from tracer_core.learning.embedder import get_default_embedder
    from tracer_core.learning.fit import fit_policy
    from tracer_core.learning.spending import MemoryLedger

    embed = get_default_embedder()

    def fit(n: int, alpha: float, ledger: MemoryLedger):
        data = shuffled_first_n(dataset, teacher, n, seed)
        return fit_policy(data.train_texts, data.train_labels, alpha=alpha, delta=DELTA, embed=embed,
                          salt=f"{SALT} {seed}", ledger=ledger)[1]

    ledger = MemoryLedger()
    cert = fit(start, ALPHA, ledger)
    row: dict = {"data": f"{dataset} {teacher}", "seed": seed, "start": start, "outcome at start": cert.reason_code}
    print(f"savings: {row}", file=sys.stderr, flush=True)
    if cert.deployed:
        return {**row, "estimate": "-", "deployed at": f"{start:,} ({cert.coverage:.0%} cov.)", "fits": 1}
    est = cert.savings_estimate or {}
    more = est.get("more_traces")
    estimate = start + more if more else None
    row["estimate"] = (f"{estimate:,} (~{est['coverage']:.0%} cov.)" if estimate and est.get("coverage") else
                       f">= {estimate:,} (minimum)" if estimate else "not in reach")
    after = copy.deepcopy(ledger)
    n, fits, deployed_at, coverage = start, 1, None, None
    while n < MAX_TRACES:
        n += STEP
        fits += 1
        later = fit(n, ALPHA, ledger)
        if later.deployed:
            deployed_at, coverage = n, later.coverage
            break
    row["deployed at"] = f"{deployed_at:,} ({coverage:.0%} cov.)" if deployed_at else f"not by {MAX_TRACES:,}"
    row["fits"] = fits
    if estimate and est.get("basis") == "validation":
        actual = deployed_at or MAX_TRACES
        row["ratio"] = round(actual / estimate, 2)
        row["early > 20%"] = estimate < (1 - EARLY) * actual
    lower = est.get("lower_alpha")
    if lower is not None:
        check = fit(start + est.get("wait", 0), lower, after)  # when the schedule allows the next attempt
        row["lower alpha suggested"] = f"{lower:g} (~{est['lower_alpha_coverage']:.0%})" if est.get(
            "lower_alpha_coverage") else f"{lower:g} (minimum)"
        row["fit at it"] = f"deployed, {check.coverage:.0%}" if check.deployed else check.reason_code
        row["certified"] = check.deployed
    else:
        row["lower alpha suggested"], row["fit at it"] = "none", "-"
    return row


def _summary(rows: list[dict]) -> list[dict]:
    estimated = [r for r in rows if "ratio" in r]
    checked = [r for r in rows if "certified" in r]
    on_time = sum(not r["early > 20%"] for r in estimated)
    certified = sum(r["certified"] for r in checked)
    ratios = [r["ratio"] for r in estimated]
    return [
        {"target": f"estimate not early by > {EARLY:.0%}", "cases": len(estimated), "met in": on_time,
         "share": f"{on_time / len(estimated):.0%}" if estimated else "-",
         "met": bool(estimated) and on_time >= TARGET_SHARE * len(estimated),
         "detail": (f"deployed at / estimate: median {statistics.median(ratios):.2f}, range {min(ratios):.2f}-"
                    f"{max(ratios):.2f}") if ratios else "-"},
        {"target": "a suggested lower alpha certifies", "cases": len(checked), "met in": certified,
         "share": f"{certified / len(checked):.0%}" if checked else "-",
         "met": not checked or certified >= TARGET_SHARE * len(checked),
         "detail": "none suggested" if not checked else f"{len(checked)} suggested in {len(rows)} cases"},
    ]
