"""The lifetime guarantee (issue 21): P(a task version ever deploys a false policy) over a life of refits.

Near-miss simulation, on the code path `Tracer.fit` runs: a task version whose surrogate agrees
with the teacher at the same rate at every threshold (0.945 or 0.94, alpha 0.95: every deployed
policy is false; 0.97: a good task, which must still deploy) is refitted every 200 teacher traces,
30 times. Each refit splits the traces with `Split.persistent`, checks `calibration_shortfall`,
predicts from validation (`Validation.like_calibration`) and calls `attempt_certification` with
a ledger of the stream's attempts, on synthetic scores: every trace keeps its confidence and its
agreement for life (as a teacher's flipped label does), so later refits re-read the same
calibration evidence. After a deploy, teacher traces are audits (5% of what the policy answers,
uniform: they may calibrate, at the audits' fraction) or deferrals (below the threshold: they train only).

Beside it, streams through the public API: `Tracer` with the deterministic clustered embedder
of the tests (8 labels the surrogate learns perfectly), the teacher's label flipped at random at
rate 0.055, so that no policy reaches 0.95 and every deploy is false: route 200 queries, record
them with their decisions, fit; 30 times, until the first deploy.

The calibration-window table sizes CAL_WINDOW: the coverage the gate certifies from W
calibration traces drawn from the Banking77 T1 policy's decisions on the test split (real
scores and agreement of inputs it never trained on), at the first attempt's delta and at the
tenth's, against how many calls a window of W spans at 5% audits.
"""

from __future__ import annotations

import math
import multiprocessing
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from scipy.stats import beta

from tracer_core.learning.attempt import CalibrationEvidence, Validation, attempt_certification
from tracer_core.learning.fit import calibration_shortfall
from tracer_core.learning.spending import Attempt, MemoryLedger, attempt_delta
from tracer_core.learning.split import AUDIT_CAL_FRACTION, CAL_WINDOW, Split

ALPHA = 0.95
DELTA = 0.05
REFIT_EVERY = 200
REFITS = 30
AUDIT_RATE = 0.05
FLIP_RATE = 0.055
SIM_STREAMS = 400
API_STREAMS = 40
AGREEMENTS = (0.945, 0.94, 0.97)
GOOD_DEPLOYS = 0.5  # the good task (0.97) deploys within the 30 refits in most streams
MAIN = {0.945: "0.247", 0.94: "0.160"}  # issue 21, measured on main at 19ccbfc (6,400 traces)
WINDOWS = (500, 1000, 2000, 3000, 4000, 6000)
WINDOW_DRAWS = 40


@dataclass
class Life:
    """What one task version's life of refits did."""

    first_deploy: int | None = None  # teacher traces at the first deploy
    attempts: int = 0
    spent: float = 0.0
    coverage: float = 0.0  # certified coverage of the policy in force at the end


def exact_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) two-sided interval for k successes in n."""
    a = (1 - level) / 2
    low = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return low, high


class UnscheduledLedger(MemoryLedger):
    """A ledger that never shows the schedule a refused attempt, so that the schedule never waits."""

    def latest(self) -> Attempt | None:
        return None


def simulated_life(agreement: float, seed: int, stress: bool = False) -> Life:
    """One task version on synthetic scores, through the fit's split, shortfall check, schedule, prediction and
    attempt. `stress`: validation agrees everywhere (it always predicts a pass) and the schedule never waits, so
    every refit attempts: a test of the spending alone."""
    rng = np.random.default_rng(seed)
    n_max = REFIT_EVERY * REFITS
    agrees = rng.random(n_max) < agreement
    scores, pool, audit = np.empty(n_max), np.ones(n_max, dtype=bool), np.zeros(n_max, dtype=bool)
    ledger, life, threshold = UnscheduledLedger() if stress else MemoryLedger(), Life(), None
    for refit in range(1, REFITS + 1):
        n = refit * REFIT_EVERY
        new = slice(n - REFIT_EVERY, n)
        scores[new], pool[new] = _arrivals(rng, REFIT_EVERY, threshold, life.coverage)
        audit[new] = pool[new] & (threshold is not None)
        ids = np.arange(1, n + 1)
        split = Split.persistent(ids, pool[:n], salt=f"life {seed}", seed=refit, audit=audit[:n])
        if calibration_shortfall(split, n, ALPHA, attempt_delta(DELTA, ledger.next_attempt())):
            continue
        cal = split.cal
        val_agrees = np.ones(len(split.val), dtype=bool) if stress else agrees[split.val]
        validation = Validation.like_calibration(scores[split.val], val_agrees, pool[split.val],
                                                 np.ones(len(split.val), dtype=bool))
        outcome = attempt_certification(
            validation, len(cal), ids, alpha=ALPHA, delta=DELTA, baseline=life.coverage, ledger=ledger,
            calibration=partial(CalibrationEvidence, scores[cal], agrees[cal], np.ones(len(cal), dtype=bool)),
        )
        life.attempts += outcome.attempt > 0
        life.spent = max(life.spent, outcome.delta_spent_total)
        if outcome.certified and outcome.threshold is not None:
            threshold = outcome.threshold
            life.coverage = float((scores[cal] >= threshold).mean())
            life.first_deploy = life.first_deploy or n
    return life


def _arrivals(rng: np.random.Generator, n: int, threshold: float | None, coverage: float) -> tuple[np.ndarray, np.ndarray]:
    """Scores and pool membership of the next n teacher traces: before any policy, uniform traffic (all in the
    pool); after, audits (uniform, in the pool) and deferrals (below the threshold, training only)."""
    if threshold is None:
        return rng.random(n), np.ones(n, dtype=bool)
    audit_share = coverage * AUDIT_RATE / (coverage * AUDIT_RATE + 1.0 - coverage)
    audit = rng.random(n) < audit_share
    return np.where(audit, rng.random(n), rng.random(n) * threshold), audit


def api_life(seed: int) -> Life:
    """One task version through `Tracer`: route, record with decisions, fit, every 200 queries, until a deploy."""
    from tests import clustered
    from tracer_core import Tracer

    rng = np.random.default_rng(10_000 + seed)
    life = Life()
    with tempfile.TemporaryDirectory() as tmp:
        tracer = Tracer("near-miss", Path(tmp) / "life.db", alpha=ALPHA, delta=DELTA, embedder=clustered.embed,
                        auto_refit=False, policy_check_s=0.0, seed=seed)
        for refit in range(1, REFITS + 1):
            texts = clustered.texts(REFIT_EVERY, f"s{seed}r{refit}")
            decisions = tracer.route_many(texts)
            for text, decision in zip(texts, decisions):
                tracer.record(text, _flipped(clustered.label_of(text), rng), decision=decision)
            cert = tracer.fit()
            life.attempts += cert.attempt > 0
            life.spent = max(life.spent, cert.delta_spent_total)
            if cert.deployed:
                life.first_deploy, life.coverage = refit * REFIT_EVERY, cert.coverage
                break
        tracer.close()
    return life


def _flipped(label: str, rng: np.random.Generator) -> str:
    """The teacher: the true label, or with probability FLIP_RATE another of the 8 labels at random."""
    if rng.random() >= FLIP_RATE:
        return label
    others = [f"lab{k}" for k in range(8) if f"lab{k}" != label]
    return others[int(rng.integers(len(others)))]


def _row(path: str, agreement: float, lives: list[Life]) -> dict:
    deployed = sum(life.first_deploy is not None for life in lives)
    rate = deployed / len(lives)
    low, high = exact_interval(deployed, len(lives))
    firsts = [life.first_deploy for life in lives if life.first_deploy is not None]
    false = agreement < ALPHA
    return {
        "path": path,
        "true agreement (every threshold)": agreement,
        "a deploy is": "false" if false else "true",
        "streams": len(lives),
        "streams that deployed": deployed,
        "P(deployed within 30 refits) [95% CI]": f"{rate:.3f} [{low:.3f}, {high:.3f}]",
        "main at 19ccbfc": MAIN.get(agreement, "-"),
        "attempts per stream (mean)": round(float(np.mean([life.attempts for life in lives])), 2),
        "delta spent per stream (max)": f"{max(life.spent for life in lives):.4f}",
        "traces at first deploy (median)": int(np.median(firsts)) if firsts else "-",
        "target": f"<= {DELTA}" if false else f">= {GOOD_DEPLOYS}",
        "ok": rate <= DELTA if false else rate >= GOOD_DEPLOYS,
    }


def near_miss(workers: int = 2, sim_streams: int = SIM_STREAMS, api_streams: int = API_STREAMS) -> list[dict]:
    """One row per case on the attempt code path (and the stress test of the spending), one for the public API;
    streams in `workers` processes."""
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        sims = {a: pool.map(simulated_life, [a] * sim_streams, range(sim_streams), chunksize=20) for a in AGREEMENTS}
        stress = pool.map(simulated_life, [AGREEMENTS[0]] * sim_streams, range(sim_streams), [True] * sim_streams,
                          chunksize=20)
        api = pool.map(api_life, range(api_streams))
        rows = [_row("attempt code path, synthetic scores", a, list(lives)) for a, lives in sims.items()]
        rows.append(_row("the same, validation always predicting a pass and no schedule (every refit attempts)",
                         AGREEMENTS[0],
                         list(stress)))
        rows.append(_row("public API (Tracer, clustered embedder, flipped teacher)", 1 - FLIP_RATE, list(api)))
    return rows


NEAR_MISS_NOTE = (
    f"alpha {ALPHA}, delta {DELTA}, a refit every {REFIT_EVERY} teacher traces, {REFITS} refits ({REFIT_EVERY * REFITS:,} "
    "traces). At a true agreement of 0.945 or 0.94 at every threshold every deploy is false: the target is "
    "P(any false policy deployed) <= delta; at 0.97 every deploy is true and the task must still deploy, in most "
    "streams (a hard good task: a margin of 0.02 at every threshold, which the gate at alpha 0.95 resolves only "
    "with a few thousand traces; the code before issue 21 deployed it sooner, at the full delta each refit). "
    "Exact 95% intervals. main at 19ccbfc = the same near-miss "
    "task refitted 30 times by the code before issue 21 (every refit re-split at random, tested at the full "
    "delta), as measured in issue 21 (6,400 traces). The stress row feeds the attempts a validation that "
    "agrees everywhere and hides refused attempts from the schedule, so every refit from ~400 traces on "
    "attempts (on mostly the same calibration traces): the spending alone keeps the rate below delta. The public-API streams' teacher agrees with the learnable "
    "true label at 0.945 (flips to one of the 7 other labels). delta spent = what a stream's attempts spent in "
    "all (at most delta)."
)


def calibration_window(cache) -> list[dict]:
    """Certified coverage from W calibration traces of real Banking77 decisions, against the calls W spans."""
    from bench.data import load
    from bench.fits import FitKey
    from bench.routing import embed, teacher_key

    result = cache.get(FitKey(teacher_key("banking77", "T1"), ALPHA))
    split = load(result.key.data)
    decisions = result.policy.decide(split.test_texts, embed(split.test_texts)) if result.policy else []
    scores = np.array([d.score for d in decisions])
    agrees = np.array([d.label == y for d, y in zip(decisions, split.test_labels)])
    eligible = np.array([d.reason in ("handled", "low_confidence") for d in decisions])
    rng = np.random.default_rng(0)
    rows = []
    for window in WINDOWS:
        row: dict = {"calibration window W": window}
        for attempt in (1, 10):
            covered = []
            for _ in range(WINDOW_DRAWS):
                ledger = MemoryLedger()
                for earlier in range(1, attempt):  # earlier attempts of the version, certified
                    ledger.settle(ledger.reserve(ALPHA, DELTA, window, earlier).attempt, True)
                val = rng.integers(len(scores), size=2000)
                cal = rng.integers(len(scores), size=window)
                outcome = attempt_certification(
                    Validation.like_calibration(scores[val], agrees[val], np.ones(2000, bool), eligible[val]),
                    window, np.arange(window), alpha=ALPHA, delta=DELTA, baseline=0.0, ledger=ledger,
                    calibration=partial(CalibrationEvidence, scores[cal], agrees[cal], eligible[cal]),
                )
                threshold = outcome.threshold
                covered.append(float((eligible[cal] & (scores[cal] >= threshold)).mean()) if threshold is not None else 0.0)
            row[f"coverage, attempt {attempt} (delta {attempt_delta(DELTA, attempt):.2g})"] = round(float(np.mean(covered)), 3)
        row["calls the window spans (5% audits, coverage 0.85)"] = f"{math.ceil(window / (AUDIT_RATE * 0.85 * AUDIT_CAL_FRACTION)):,}"
        row["chosen"] = "yes" if window == CAL_WINDOW else ""
        rows.append(row)
    return rows


WINDOW_NOTE = (
    f"Coverage the gate certifies at alpha {ALPHA} from W calibration traces resampled from the Banking77 T1 policy's "
    f"decisions on the test split (3,080 inputs never trained on; validation: 2,000 more resampled), mean of "
    f"{WINDOW_DRAWS} draws, through `attempt_certification` at the first attempt and at the tenth. A window of W "
    f"spans W / (audit rate x coverage x {AUDIT_CAL_FRACTION}) calls once a policy answers: the longer it spans, the older "
    "the traffic a certificate describes."
)
