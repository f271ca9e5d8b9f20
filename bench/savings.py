"""Is the savings estimate honest? Banking77 T1 at alpha 0.95: a refused fit at 500 / 1,000 / 2,000 traces estimates
when a fit would deploy; the same task version then refits every STEP traces (one ledger, as background refits do)
until one deploys. The estimate's lower alpha is checked by a fit at that alpha on the same traces and ledger state."""

from __future__ import annotations

import copy

from bench.data import first_n
from bench.fits import DELTA

ALPHA = 0.95
STARTS = (500, 1_000, 2_000)
STEP = 250
MAX_TRACES = 6_000
SALT = "bench savings"
NOTE = (f"Each row: one task version (salt {SALT!r}, all traces may calibrate), a fit at `start` traces with a fresh "
        f"ledger, then refits every {STEP} traces with the same ledger (the schedule and delta spending as in a store) "
        f"until one deploys (at most {MAX_TRACES:,}). `estimate` = start + the estimate's more traces; `deployed at` = "
        "the first refit that deployed. The lower-alpha check fits at the suggested alpha with the ledger as it was "
        "after the start's fit (the version's next attempt), on the start's traces plus those the schedule waits for. An estimate, never a promise: it "
        "assumes the surrogate's errors keep falling as measured at the start.")


def savings_honesty() -> list[dict]:
    from tracer_core.learning.embedder import get_default_embedder
    from tracer_core.learning.fit import fit_policy
    from tracer_core.learning.spending import MemoryLedger

    embed = get_default_embedder()

    def fit(n: int, alpha: float, ledger: MemoryLedger):
        data = first_n("banking77", "T1", n)
        return fit_policy(data.train_texts, data.train_labels, alpha=alpha, delta=DELTA, embed=embed, salt=SALT,
                          ledger=ledger)[1]

    rows = []
    for start in STARTS:
        ledger = MemoryLedger()
        cert = fit(start, ALPHA, ledger)
        row: dict = {"start": start, "outcome at start": cert.reason_code}
        if cert.deployed:
            rows.append({**row, "estimate": "-", "deployed at": start, "fits": 1})
            continue
        est = cert.savings_estimate or {}
        more = est.get("more_traces")
        row["estimate"] = f"{start + more:,} (~{est['coverage']:.0%} cov.)" if more and est.get("coverage") else (
            f">= {start + more:,} (minimum)" if more else "not in reach")
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
        lower = est.get("lower_alpha")
        if lower is not None:
            check = fit(start + est.get("wait", 0), lower, after)  # when the schedule allows the next attempt
            row["lower alpha suggested"] = f"{lower:g} (~{est['lower_alpha_coverage']:.0%})" if est.get(
                "lower_alpha_coverage") else f"{lower:g} (minimum)"
            row["fit at it"] = f"deployed, {check.coverage:.0%}" if check.deployed else check.reason_code
        else:
            row["lower alpha suggested"], row["fit at it"] = "none", "-"
        rows.append(row)
    return rows
