"""Fit a surrogate on teacher traces and certify it with the parity gate.

The traces are split at random into train (55%), validation (15%) and calibration (30%).
Everything that is chosen (the candidate model, the out-of-distribution threshold, the labels
excluded for poor validation evidence and the threshold grid) is chosen on train and
validation only. The calibration traces are used once, by the fixed-sequence test in
`gate.py`, so the certificate holds with probability at least 1 - delta.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import binom

from tracer_core import certificate as codes
from tracer_core.certificate import Certificate
from tracer_core.features import Tfidf, join_features, predict_proba
from tracer_core.gate import (
    agreement_lower_bound,
    fixed_sequence_test,
    min_handled_for,
    significantly_below,
)
from tracer_core.ood import MahalanobisOOD
from tracer_core.policy import Policy
from tracer_core.shutdown import check_exit, embed_in_steps
from tracer_core.surrogate import Surrogate, fit_logistic, fit_mlp

CAL_FRACTION = 0.30
POOL_CAL_SHARE = 0.8  # share of a minority pool of unselected traces that calibrates
VAL_FRACTION = 0.15
MIN_LABEL_TRACES = 3  # labels with fewer traces are not trained on ("unseen")
OOD_QUANTILE = 0.995  # validation inputs farther than this quantile count as out-of-distribution
UNSEEN_QUANTILE = 0.50
GRID_STEP = 0.0025
MIN_PREDICTION_INPUTS = 200  # validation inputs behind a predicted p-value that may start the grid
FREE_TEXT_RATIO = 0.5
NO_SEPARATION_AGREEMENT = 0.5  # below this overall agreement, more traces of the same kind will not help
FRONTIER_ALPHAS = [round(0.80 + 0.01 * i, 2) for i in range(20)]


@dataclass(frozen=True)
class Candidate:
    """A surrogate recipe: which features, which scikit-learn estimator."""

    name: str
    use_tfidf: bool
    fit: Callable[..., Surrogate]


CANDIDATES = (
    Candidate("logistic", False, fit_logistic),
    Candidate("logistic+tfidf", True, fit_logistic),
    Candidate("mlp", False, fit_mlp),
)


def traces_needed(alpha: float, delta: float) -> int:
    """Rough number of traces before a certificate at alpha is plausible (twice the zero-error minimum)."""
    return math.ceil(2 * min_handled_for(alpha, delta) / CAL_FRACTION)


def data_hash(texts: list[str], labels: list[str]) -> str:
    h = hashlib.sha256()
    for text, label in zip(texts, labels):
        h.update(text.encode("utf-8") + b"\x00" + label.encode("utf-8") + b"\x01")
    return h.hexdigest()[:32]


def coverage_at(scores: np.ndarray, agrees: np.ndarray, alpha: float) -> float:
    """Largest share of inputs, most confident first, whose agreement is still >= alpha."""
    if not len(scores):
        return 0.0
    order = np.argsort(-scores, kind="stable")
    running = np.cumsum(agrees[order]) / np.arange(1, len(order) + 1)
    ok = np.nonzero(running >= alpha)[0]
    return float((ok.max() + 1) / len(order)) if len(ok) else 0.0


def threshold_grid(
    val_scores: np.ndarray, val_agrees: np.ndarray, n_calibration: int, alpha: float, delta: float
) -> np.ndarray:
    """Descending thresholds at validation-coverage steps, ending at 0 (handle all).

    The sequence starts at the first step where validation predicts the calibration test will
    pass comfortably: with the validation agreement at that step (measured on at least 200
    validation inputs or a quarter of them) and the expected number of handled calibration
    inputs, the predicted p-value is <= delta / 10 (else at the smallest predicted
    p-value). Steps too small to ever pass are skipped instead of stopping the sequence at once.
    Only validation data decide this.
    """
    if not len(val_scores):
        return np.array([0.0])
    order = np.argsort(-val_scores, kind="stable")
    running = np.cumsum(val_agrees[order]) / np.arange(1, len(order) + 1)
    shares = np.append(np.arange(GRID_STEP, 1.0, GRID_STEP), 1.0)
    taken = np.maximum(np.ceil(shares * len(order)).astype(int), 1)
    expected_n = np.maximum(np.round(shares * n_calibration).astype(int), 1)
    expected_errors = np.floor((1.0 - running[taken - 1]) * expected_n)
    predicted_p = binom.cdf(expected_errors, expected_n, 1.0 - alpha)
    # steps with few validation inputs predict noisily: never start on one
    predicted_p[taken < min(MIN_PREDICTION_INPUTS, len(order) // 4)] = 1.0
    passing = np.nonzero(predicted_p <= delta / 10)[0]
    start = int(passing[0]) if len(passing) else int(np.argmin(predicted_p))
    grid = np.quantile(val_scores, np.clip(1.0 - shares[start:], 0.0, 1.0))
    return np.unique(np.append(grid, 0.0))[::-1]


class _Split:
    """Random train / validation / calibration indices, reproducible from the seed.

    Calibration traces come only from `pool` (the unselected traces, a uniform sample of
    traffic); when the pool is a minority, up to POOL_CAL_SHARE of it is calibration and
    everything else trains and validates.
    """

    def __init__(self, n: int, seed: int, pool: np.ndarray | None = None):
        perm = np.random.default_rng(seed).permutation(n)
        n_cal, n_val = round(CAL_FRACTION * n), round(VAL_FRACTION * n)
        if pool is not None and not pool.all():
            in_pool, out_pool = perm[pool[perm]], perm[~pool[perm]]
            n_cal = min(n_cal, round(POOL_CAL_SHARE * len(in_pool)))
            rest = np.random.default_rng(seed + 1).permutation(np.concatenate([in_pool[n_cal:], out_pool]))
            perm = np.concatenate([in_pool[:n_cal], rest])
        self.cal = np.sort(perm[:n_cal])
        self.val = np.sort(perm[n_cal : n_cal + n_val])
        self.train = np.sort(perm[n_cal + n_val :])


def fit_policy(
    texts: list[str],
    labels: list[str],
    *,
    alpha: float,
    delta: float,
    embed: Callable[[list[str]], np.ndarray],
    ids: list[int] | None = None,
    seed: int = 0,
    task: str = "",
    fingerprint: str = "",
    calibration_pool: Sequence[bool] | np.ndarray | None = None,
) -> tuple[Policy | None, Certificate]:
    """Train candidates, pick one on validation, certify it on calibration; no store writes."""
    started = time.time()
    n = len(texts)
    pool = None if calibration_pool is None else np.asarray(calibration_pool, dtype=bool)
    if pool is not None and len(pool) != n:
        raise ValueError(f"calibration_pool has {len(pool)} entries for {n} traces")
    base = dict(
        task=task, fingerprint=fingerprint, alpha=alpha, delta=delta, n_traces=n,
        n_pool=n if pool is None else int(pool.sum()),
        data_hash=data_hash(texts, labels), created_at=started, trace_max_id=max(ids) if ids else 0,
    )

    def refuse(code: str, reason: str, **extra) -> tuple[None, Certificate]:
        cert = Certificate(deployed=False, reason_code=code, reason=reason, **base, **extra)
        cert.fit_seconds = round(time.time() - started, 3)
        return None, cert

    counts = Counter(labels)
    needed = traces_needed(alpha, delta)
    if n >= 20 and len(counts) > FREE_TEXT_RATIO * n:
        return refuse(codes.FREE_TEXT, f"{len(counts)} distinct outputs in {n} traces: free generation, not classification")
    if n < needed:
        return refuse(codes.TOO_FEW_TRACES, f"{n} traces; at alpha {alpha} at least ~{needed} are needed")
    if len(counts) < 2:
        return refuse(codes.SINGLE_LABEL, f"all {n} traces carry one label; nothing to learn yet")

    vectors = embed_in_steps(embed, list(texts))  # checks for interpreter exit between chunks
    split = _Split(n, seed, pool)
    text_arr = np.array(texts, dtype=object)
    label_arr = np.array(labels, dtype=object)
    rare = {label for label, c in counts.items() if c < MIN_LABEL_TRACES}
    train = np.array([i for i in split.train if label_arr[i] not in rare], dtype=int)
    fit_rows = np.array([i for i in np.concatenate([split.train, split.val]) if label_arr[i] not in rare], dtype=int)
    label_names = sorted(set(label_arr[fit_rows]))
    if len(set(label_arr[train])) < 2:
        return refuse(codes.SINGLE_LABEL, "fewer than two labels have enough traces to train on")
    index = {label: i for i, label in enumerate(label_names)}
    y = np.array([index.get(label, -1) for label in labels])
    sizes = dict(n_train=len(split.train), n_validation=len(split.val), n_calibration=len(split.cal), n_labels=len(counts))

    # 1. Out-of-distribution and unseen-label filters, calibrated on validation.
    trained_train = train[y[train] >= 0]
    ood_probe = MahalanobisOOD.fit(vectors[trained_train], y[trained_train])
    val_known = split.val[y[split.val] >= 0]
    val_distance = ood_probe.distance(vectors[split.val])
    ood_threshold = float(np.quantile(val_distance[y[split.val] >= 0], OOD_QUANTILE)) if len(val_known) else math.inf
    unseen_rows = np.array([i for i in np.concatenate([split.train, split.val]) if label_arr[i] in rare], dtype=int)
    unseen_threshold = _unseen_threshold(vectors, y, train, val_known) if len(unseen_rows) else 1.0

    # 2. Candidates trained on train, compared on validation by coverage at alpha.
    results = {}
    for cand in CANDIDATES:
        check_exit()
        tfidf = Tfidf.fit(list(text_arr[train])) if cand.use_tfidf else None
        model = cand.fit(join_features(vectors[train], list(text_arr[train]), tfidf), y[train], len(label_names), seed=seed)
        proba = predict_proba(model, vectors[split.val], list(text_arr[split.val]), tfidf)
        pred = proba.argmax(axis=1)
        agrees = pred == y[split.val]
        results[cand.name] = (cand, proba.max(axis=1), pred, agrees)
    candidates = {
        name: {"val_agreement": round(float(r[3].mean()), 4), "val_coverage": round(coverage_at(r[1], r[3], alpha), 4)}
        for name, r in results.items()
    }
    best = max(results, key=lambda k: (candidates[k]["val_coverage"], candidates[k]["val_agreement"]))
    cand, val_scores, val_pred, val_agrees = results[best]

    # 3. Validation evidence: labels whose own agreement contradicts alpha are never handed.
    val_ok = val_distance <= ood_threshold
    val_threshold = _threshold_for(val_scores[val_ok], val_agrees[val_ok], alpha)
    excluded_val = _contradicted_labels(val_pred, val_agrees, val_ok & (val_scores >= val_threshold), alpha, label_names)
    val_eligible = val_ok & ~np.isin(val_pred, [index[label] for label in excluded_val])

    # 4. Final surrogate on train + validation; the grid is fixed from validation scores.
    check_exit()
    tfidf = Tfidf.fit(list(text_arr[fit_rows])) if cand.use_tfidf else None
    model = cand.fit(join_features(vectors[fit_rows], list(text_arr[fit_rows]), tfidf), y[fit_rows], len(label_names), seed=seed)
    ood = MahalanobisOOD.fit(vectors[fit_rows], y[fit_rows])
    policy = Policy(
        labels=label_names, surrogate=model, tfidf=tfidf, ood=ood, ood_threshold=ood_threshold, threshold=1.0,
        excluded=set(excluded_val), unseen_vectors=vectors[unseen_rows].astype(np.float32),
        unseen_labels=[label_arr[i] for i in unseen_rows], unseen_threshold=unseen_threshold, certificate=None,
    )

    # 5. The parity gate on calibration.
    cal = split.cal
    decisions = policy.decide(list(text_arr[cal]), vectors[cal])
    cal_pred = np.array([index[d.label] for d in decisions])
    cal_scores = np.array([d.score for d in decisions])
    cal_agrees = cal_pred == y[cal]
    cal_eligible = np.array([d.reason in ("handled", "low_confidence") for d in decisions])
    frontier = [
        _frontier_point(a, delta, val_scores[val_eligible], val_agrees[val_eligible], cal_scores, cal_agrees, cal_eligible)
        for a in FRONTIER_ALPHAS
    ]
    grid = threshold_grid(val_scores[val_eligible], val_agrees[val_eligible], len(cal), alpha, delta)
    result = fixed_sequence_test(grid, cal_scores, cal_agrees, cal_eligible, alpha, delta)
    common = dict(
        **sizes, model=best, candidates=candidates, frontier=frontier, ood_threshold=ood_threshold,
        calibration_ids=[int(ids[i]) for i in cal] if ids else [],
    )
    if result.certified_index is None:
        code, reason = _refusal_reason(grid, cal_scores, cal_agrees, cal_eligible, alpha, delta, n)
        per_label = _per_label(label_arr, cal, cal_pred, cal_agrees, np.zeros(len(cal), bool), label_names, counts, rare, excluded_val, set(), fit_rows)
        return refuse(code, reason, per_label=per_label, **common)

    threshold = float(grid[result.certified_index])
    handled = cal_eligible & (cal_scores >= threshold)
    excluded_cal = _contradicted_labels(cal_pred, cal_agrees, handled, alpha, label_names)
    handled &= ~np.isin(cal_pred, [index[label] for label in excluded_cal])
    agree = int(cal_agrees[handled].sum())
    n_handled = int(handled.sum())
    policy.threshold = threshold
    policy.excluded |= excluded_cal
    cert = Certificate(
        deployed=True, reason_code=codes.DEPLOYED, threshold=threshold, p_value=result.p_value,
        coverage=round(n_handled / len(cal), 4),
        agreement=round(agree / n_handled, 4) if n_handled else None,
        agreement_lower_bound=round(agreement_lower_bound(agree, n_handled, delta), 4),
        per_label=_per_label(label_arr, cal, cal_pred, cal_agrees, handled, label_names, counts, rare, excluded_val, excluded_cal, fit_rows),
        reason="", **base, **common,
    )
    cert.reason = f"certified: {cert.summary()}"
    cert.fit_seconds = round(time.time() - started, 3)
    policy.certificate = cert
    return policy, cert


def _threshold_for(scores: np.ndarray, agrees: np.ndarray, alpha: float) -> float:
    """Score threshold at which the most confident inputs reach alpha agreement (1.0 if none)."""
    share = coverage_at(scores, agrees, alpha)
    if share == 0.0:
        return 1.0
    return float(np.sort(scores)[::-1][int(round(share * len(scores))) - 1])


def _contradicted_labels(pred, agrees, handled, alpha: float, label_names: list[str]) -> set[str]:
    """Predicted labels whose handled inputs agree significantly below alpha.

    Exact one-sided binomial test per label at level 0.05 / (number of labels tested), so that
    across many labels a label is excluded on real evidence, not by the chance of many tests.
    """
    tested = np.unique(pred[handled])
    level = 0.05 / max(len(tested), 1)
    out = set()
    for label_index in tested:
        mask = handled & (pred == label_index)
        if significantly_below(int(agrees[mask].sum()), int(mask.sum()), alpha, level):
            out.add(label_names[label_index])
    return out


def _unseen_threshold(vectors, y, train, val_known) -> float:
    """Similarity at which an input counts as 'near' a trace: the median similarity of validation inputs to their own label's nearest trace."""
    sims = vectors[val_known] @ vectors[train].T
    same = y[val_known][:, None] == y[train][None, :]
    nearest_same = np.where(same, sims, -1.0).max(axis=1)
    return float(np.quantile(nearest_same, UNSEEN_QUANTILE))


def _frontier_point(alpha, delta, val_scores, val_agrees, cal_scores, cal_agrees, cal_eligible) -> dict:
    grid = threshold_grid(val_scores, val_agrees, len(cal_scores), alpha, delta)
    result = fixed_sequence_test(grid, cal_scores, cal_agrees, cal_eligible, alpha, delta)
    certified = result.certified_index is not None
    return {
        "alpha": alpha,
        "coverage": round(result.handled / len(cal_scores), 4) if certified else 0.0,
        "certified": certified,
        "lower_bound": round(agreement_lower_bound(result.agree, result.handled, delta), 4) if certified else None,
    }


def _refusal_reason(grid, scores, agrees, eligible, alpha, delta, n) -> tuple[str, str]:
    overall = float(agrees.mean()) if len(agrees) else 0.0
    top = eligible & (scores >= grid[0]) if len(grid) else eligible
    top_n = int(top.sum())
    top_agree = float(agrees[top].mean()) if top_n else 0.0
    if overall < NO_SEPARATION_AGREEMENT and top_agree < alpha:
        return codes.NO_SEPARATION, (
            f"surrogate agreement {overall:.2f} on calibration (its most confident {top_n} inputs: {top_agree:.2f} "
            f"< alpha {alpha}): the embedding does not separate these labels"
        )
    return codes.NOT_CERTIFIED, (
        f"surrogate agreement {overall:.2f} on calibration; its most confident {top_n} inputs agree at "
        f"{top_agree:.3f}, not enough evidence for alpha {alpha} at delta {delta} with {n} traces; "
        "more traces are needed"
    )


def _per_label(label_arr, cal, cal_pred, cal_agrees, handled, label_names, counts, rare, excluded_val, excluded_cal, fit_rows) -> dict:
    """Calibration evidence per teacher label (agreement measured on inputs the surrogate hands that label)."""
    teacher = label_arr[cal]
    predicted = np.array([label_names[p] for p in cal_pred], dtype=object)
    trained = Counter(label_arr[fit_rows])
    out = {}
    for label in sorted(counts):
        mine = teacher == label
        handed = handled & (predicted == label)
        wrong = Counter(predicted[mine & (predicted != label)])
        status = (
            "too_rare" if label in rare else "excluded_validation" if label in excluded_val
            else "excluded_calibration" if label in excluded_cal else "certified"
        )
        out[label] = {
            "n_train": int(trained.get(label, 0)),
            "n_calibration": int(mine.sum()),
            "handled": int((handled & mine).sum()),
            "agreement": round(float(cal_agrees[handed].mean()), 4) if handed.any() else None,
            "agreement_all": round(float((predicted[mine] == label).mean()), 4) if mine.any() else None,
            "status": status,
            "confused_with": [[k, int(v)] for k, v in wrong.most_common(3)],
        }
    return out
