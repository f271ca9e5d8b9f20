"""Fit a surrogate on teacher traces and certify it with the parity gate.

The traces are split at random into calibration (30%, drawn only from the calibration pool),
validation (15%) and train (the rest). Everything that is chosen (the out-of-distribution
threshold and the threshold grid, from the surrogate's validation scores) is chosen on train
and validation only. The calibration traces are used once, by the fixed-sequence test in
`gate.py`, so the certificate holds with probability at least 1 - delta.

Training cost grows with the traces, calibration cost barely does: `max_train` caps train +
validation at a uniform random sample (the first `max_train` of the permutation), and every
pool trace left out of it joins the calibration evidence. Which traces calibrate still depends
only on the permutation and the pool, never on labels, so the gate's guarantee is unchanged.

`fit_policy` runs the steps in order: `_prepare` (inputs, labels, split), `_filters` (out-of-
distribution and unseen-label checks), `_trial` (the surrogate's scores on validation),
`_final_policy` (the surrogate retrained on train + validation), `_calibrate` (the gate).
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
from tracer_core.errors import InvalidTraceError
from tracer_core.features import Tfidf, join_features, predict_proba
from tracer_core.gate import (
    GateResult,
    agreement_lower_bound,
    fixed_sequence_test,
    min_handled_for,
)
from tracer_core.ood import MahalanobisOOD
from tracer_core.policy import Policy
from tracer_core.settings import check_limit
from tracer_core.shutdown import check_exit, embed_in_steps
from tracer_core.surrogate import Surrogate, fit_ensemble

CAL_FRACTION = 0.30
VAL_FRACTION = 0.15
MIN_LABEL_TRACES = 3  # labels with fewer traces are not trained on ("unseen")
OOD_QUANTILE = 0.995  # validation inputs farther than this quantile count as out-of-distribution
UNSEEN_QUANTILE = 0.50
GRID_STEP = 0.0025
MIN_PREDICTION_INPUTS = 200  # validation inputs behind a predicted p-value that may start the grid
FREE_TEXT_RATIO = 0.5
NO_SEPARATION_AGREEMENT = 0.5  # below this overall agreement, more traces of the same kind will not help
FRONTIER_ALPHAS = [round(0.80 + 0.01 * i, 2) for i in range(20)]
DEFAULT_MAX_TRAIN = 15_000  # train + validation traces of one fit: 200,000 traces fit in minutes (bench fitscale)
UNSEEN_CHUNK = 1024  # validation rows per block of the unseen-label similarity matrix
EVIDENCE_CHUNK = 20_000  # calibration rows decided at once


SURROGATE = "ensemble (logistic, logistic+tfidf, mlp)"  # the certificate's `model`


def traces_needed(alpha: float, delta: float) -> int:
    """Rough number of traces before a certificate at alpha is plausible (twice the zero-error minimum)."""
    return math.ceil(calibration_needed(alpha, delta) / CAL_FRACTION)


def calibration_needed(alpha: float, delta: float) -> int:
    """Calibration traces below which a fit is refused: twice the zero-error minimum."""
    return 2 * min_handled_for(alpha, delta)


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


# -- typed intermediate results --------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    """Row indices of each part; calibration rows come only from the calibration pool.

    `n_available` counts the traces that could train or validate (all but the calibration
    share); beyond `max_train` only a uniform sample of them does, and the pool traces among
    the rest calibrate. Rows in no part are not used by the fit at all.
    """

    train: np.ndarray
    val: np.ndarray
    cal: np.ndarray
    n_pool: int
    n_available: int

    @classmethod
    def draw(cls, n: int, seed: int, pool: np.ndarray, max_train: int | None = None) -> Split:
        perm = np.random.default_rng(seed).permutation(n)
        in_pool = perm[pool[perm]]
        cal = in_pool[: calibration_size(n, int(pool.sum()))]
        rest = perm[~np.isin(perm, cal)]
        n_available, n_val = len(rest), round(VAL_FRACTION * n)
        if max_train is not None and len(rest) > max_train:
            rest, left = rest[:max_train], rest[max_train:]
            cal = np.concatenate([cal, left[pool[left]]])
            n_val = round(max_train * VAL_FRACTION / (1.0 - CAL_FRACTION))
        return cls(np.sort(rest[n_val:]), np.sort(rest[:n_val]), np.sort(cal), int(pool.sum()), n_available)

    @property
    def used(self) -> np.ndarray:
        """Every row the fit reads, ascending."""
        return np.sort(np.concatenate([self.train, self.val, self.cal]))

    def renumbered(self) -> Split:
        """The same split over `used` only (row i of the result is row used[i] here)."""
        used = self.used
        train, val, cal = (np.searchsorted(used, part) for part in (self.train, self.val, self.cal))
        return Split(train, val, cal, self.n_pool, self.n_available)


def calibration_size(n: int, n_pool: int) -> int:
    """Calibration traces of a fit: CAL_FRACTION of all traces, at most every pool trace."""
    return min(round(CAL_FRACTION * n), n_pool)


@dataclass(frozen=True)
class Traces:
    """The fit's inputs as arrays, with the label index the surrogate is trained on."""

    texts: np.ndarray  # object array of str
    labels: np.ndarray  # object array of the teacher's labels
    vectors: np.ndarray
    y: np.ndarray  # index into label_names, -1 for labels too rare to train on
    label_names: list[str]
    counts: Counter
    rare: frozenset[str]
    split: Split

    def trainable(self, rows: np.ndarray) -> np.ndarray:
        return rows[self.y[rows] >= 0]

    @property
    def fit_rows(self) -> np.ndarray:
        """Train + validation rows of trainable labels: what the final surrogate learns from."""
        return self.trainable(np.concatenate([self.split.train, self.split.val]))

    def text_list(self, rows: np.ndarray) -> list[str]:
        return list(self.texts[rows])


@dataclass(frozen=True)
class Filters:
    """Threshold-free checks fixed on train and validation."""

    ood_threshold: float
    val_in_distribution: np.ndarray  # bool per validation row
    unseen_rows: np.ndarray  # traces of labels too rare to train on
    unseen_threshold: float


@dataclass(frozen=True)
class Trial:
    """The surrogate trained on train, measured on validation."""

    scores: np.ndarray  # top probability per validation row
    agrees: np.ndarray
    coverage: float  # validation coverage at alpha among in-distribution rows
    agreement: float


@dataclass(frozen=True)
class Evidence:
    """The final policy's decisions on the calibration rows."""

    pred: np.ndarray
    scores: np.ndarray
    agrees: np.ndarray
    eligible: np.ndarray  # passed the out-of-distribution and unseen-label checks


# -- the steps ------------------------------------------------------------------------------


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
    max_train: int | None = DEFAULT_MAX_TRAIN,
) -> tuple[Policy | None, Certificate]:
    """Train the surrogate, score validation, certify it on calibration; no store writes.

    `calibration_pool` marks the traces that may serve as calibration evidence (a uniform
    random sample of traffic); the others train and validate only. None: every trace.
    `max_train` caps train + validation (see the module docstring); None: no cap.
    """
    started = time.time()
    n = len(texts)
    pool = _pool_mask(calibration_pool, n)
    max_train = check_limit("max_train", max_train)
    base = dict(
        task=task, fingerprint=fingerprint, alpha=alpha, delta=delta, n_traces=n, n_pool=int(pool.sum()),
        data_hash=data_hash(texts, labels), created_at=started, trace_max_id=max(ids) if ids else 0,
        max_train=max_train,
    )

    def refuse(code: str, reason: str, **extra) -> tuple[None, Certificate]:
        cert = Certificate(deployed=False, reason_code=code, reason=reason, **base, **extra)
        cert.fit_seconds = round(time.time() - started, 3)
        return None, cert

    early = _refusal_before_fit(labels, pool, alpha, delta)
    if early:
        return refuse(*early)
    split = Split.draw(n, seed, pool, max_train)
    used = split.used
    data = _prepare([texts[i] for i in used], [labels[i] for i in used], embed, split.renumbered())
    if len(set(data.y[data.trainable(data.split.train)])) < 2:
        return refuse(codes.SINGLE_LABEL, "fewer than two labels have enough traces to train on")
    filters = _filters(data)
    trial = _trial(data, filters, alpha, seed)
    policy = _final_policy(data, filters, seed)
    evidence = _evidence(policy, data)
    val_ok = filters.val_in_distribution
    val_scores, val_agrees = trial.scores[val_ok], trial.agrees[val_ok]
    grid = threshold_grid(val_scores, val_agrees, len(data.split.cal), alpha, delta)
    result = fixed_sequence_test(grid, evidence.scores, evidence.agrees, evidence.eligible, alpha, delta)
    common = dict(
        n_train=len(data.split.train), n_validation=len(data.split.val), n_calibration=len(data.split.cal),
        n_train_available=split.n_available, n_labels=len(data.counts), model=SURROGATE,
        candidates={SURROGATE: {"val_agreement": round(trial.agreement, 4), "val_coverage": round(trial.coverage, 4)}},
        frontier=[_frontier_point(a, delta, val_scores, val_agrees, evidence) for a in FRONTIER_ALPHAS],
        ood_threshold=filters.ood_threshold,
        calibration_ids=[int(ids[i]) for i in split.cal] if ids else [],
    )
    if result.certified_index is None:
        code, reason = _refusal_reason(grid, evidence, alpha, delta, n)
        per_label = _per_label(data, evidence, np.zeros(len(data.split.cal), bool))
        return refuse(code, reason, per_label=per_label, **common)
    policy.threshold = float(grid[result.certified_index])
    cert = _certified(result, policy.threshold, data, evidence, delta, {**base, **common})
    cert.fit_seconds = round(time.time() - started, 3)
    policy.certificate = cert
    return policy, cert


def _pool_mask(calibration_pool, n: int) -> np.ndarray:
    if calibration_pool is None:
        return np.ones(n, dtype=bool)
    pool = np.asarray(calibration_pool, dtype=bool)
    if pool.shape != (n,):
        raise InvalidTraceError(f"calibration_pool has {pool.size} entries for {n} traces; it needs one per trace")
    return pool


def _refusal_before_fit(labels: list[str], pool: np.ndarray, alpha: float, delta: float) -> tuple[str, str] | None:
    """Refusals that need no model: free text, too little calibration evidence, a single label."""
    n, counts = len(labels), Counter(labels)
    if n >= 20 and len(counts) > FREE_TEXT_RATIO * n:
        return codes.FREE_TEXT, f"{len(counts)} distinct outputs in {n} traces: free generation, not classification"
    if calibration_size(n, int(pool.sum())) < calibration_needed(alpha, delta):
        if pool.all():
            return codes.TOO_FEW_TRACES, f"{n} traces; at alpha {alpha} at least ~{traces_needed(alpha, delta)} are needed"
        return codes.TOO_FEW_TRACES, (
            f"{int(pool.sum())} of {n} traces may serve as calibration evidence; at alpha {alpha} at least "
            f"~{calibration_needed(alpha, delta)} such traces (and ~{traces_needed(alpha, delta)} in all) are needed"
        )
    if len(counts) < 2:
        return codes.SINGLE_LABEL, f"all {n} traces carry one label; nothing to learn yet"
    return None


def _prepare(texts: list[str], labels: list[str], embed, split: Split) -> Traces:
    counts = Counter(labels)
    rare = frozenset(label for label, c in counts.items() if c < MIN_LABEL_TRACES)
    label_arr = np.array(labels, dtype=object)
    fit_rows = np.concatenate([split.train, split.val])
    label_names = sorted({label_arr[i] for i in fit_rows} - rare)
    index = {label: i for i, label in enumerate(label_names)}
    return Traces(
        texts=np.array(texts, dtype=object), labels=label_arr, vectors=embed_in_steps(embed, list(texts)),
        y=np.array([index.get(label, -1) for label in labels]), label_names=label_names, counts=counts,
        rare=rare, split=split,
    )


def _filters(data: Traces) -> Filters:
    """Out-of-distribution and unseen-label limits, calibrated on validation."""
    train, val = data.trainable(data.split.train), data.split.val
    probe = MahalanobisOOD.fit(data.vectors[train], data.y[train])
    distance = probe.distance(data.vectors[val])
    known = data.y[val] >= 0
    ood_threshold = float(np.quantile(distance[known], OOD_QUANTILE)) if known.any() else math.inf
    seen = np.concatenate([data.split.train, data.split.val])
    unseen_rows = seen[data.y[seen] < 0]
    unseen_threshold = _unseen_threshold(data.vectors, data.y, train, val[known]) if len(unseen_rows) else 1.0
    return Filters(ood_threshold, distance <= ood_threshold, np.sort(unseen_rows), unseen_threshold)


def _trial(data: Traces, filters: Filters, alpha: float, seed: int) -> Trial:
    """The surrogate trained on train and measured on validation (its scores fix the threshold grid)."""
    train, val = data.trainable(data.split.train), data.split.val
    ok = filters.val_in_distribution
    model, tfidf = _train(data, train, seed)
    proba = predict_proba(model, data.vectors[val], data.text_list(val), tfidf)
    agrees = proba.argmax(axis=1) == data.y[val]
    scores = proba.max(axis=1)
    return Trial(scores, agrees, coverage_at(scores[ok], agrees[ok], alpha), float(agrees.mean()))


def _train(data: Traces, rows: np.ndarray, seed: int) -> tuple[Surrogate, Tfidf]:
    check_exit()  # a background refit stops here at interpreter exit
    texts = data.text_list(rows)
    tfidf = Tfidf.fit(texts)
    vectors = data.vectors[rows]
    model = fit_ensemble(vectors, join_features(vectors, texts, tfidf), data.y[rows], len(data.label_names), seed=seed)
    return model, tfidf


def _final_policy(data: Traces, filters: Filters, seed: int) -> Policy:
    """The surrogate retrained on train + validation."""
    rows = data.fit_rows
    model, tfidf = _train(data, rows, seed)
    return Policy(
        labels=data.label_names, surrogate=model, tfidf=tfidf, ood=MahalanobisOOD.fit(data.vectors[rows], data.y[rows]),
        ood_threshold=filters.ood_threshold, threshold=1.0, excluded=set(),
        unseen_vectors=data.vectors[filters.unseen_rows].astype(np.float32),
        unseen_labels=[data.labels[i] for i in filters.unseen_rows], unseen_threshold=filters.unseen_threshold,
        certificate=None,
    )


def _evidence(policy: Policy, data: Traces) -> Evidence:
    """The policy's decisions on every calibration row, in blocks of EVIDENCE_CHUNK (bounded memory)."""
    cal = data.split.cal
    decisions = []
    for start in range(0, len(cal), EVIDENCE_CHUNK):
        rows = cal[start : start + EVIDENCE_CHUNK]
        decisions += policy.decide(data.text_list(rows), data.vectors[rows])
    index = {label: i for i, label in enumerate(data.label_names)}
    pred = np.array([index[d.label] for d in decisions], dtype=np.int64)
    return Evidence(
        pred=pred, scores=np.array([d.score for d in decisions]), agrees=pred == data.y[cal],
        eligible=np.array([d.reason in ("handled", "low_confidence") for d in decisions], dtype=bool),
    )


def _certified(result: GateResult, threshold: float, data: Traces, evidence: Evidence, delta: float, fields: dict) -> Certificate:
    handled = evidence.eligible & (evidence.scores >= threshold)
    n_handled, agree = int(handled.sum()), int(evidence.agrees[handled].sum())
    cert = Certificate(
        deployed=True, reason_code=codes.DEPLOYED, threshold=threshold, p_value=result.p_value,
        coverage=round(n_handled / len(data.split.cal), 4),
        agreement=round(agree / n_handled, 4) if n_handled else None,
        agreement_lower_bound=round(agreement_lower_bound(agree, n_handled, delta), 4),
        per_label=_per_label(data, evidence, handled), reason="", **fields,
    )
    cert.reason = f"certified: {cert.summary()}"
    return cert


def _unseen_threshold(vectors, y, train, val_known) -> float:
    """Similarity at which an input counts as 'near' a trace: the median similarity of validation inputs to their own label's nearest trace.

    Computed in blocks of UNSEEN_CHUNK validation rows, so memory stays bounded as traces grow.
    """
    train_t, train_y = np.ascontiguousarray(vectors[train].T), y[train]
    nearest_same = np.empty(len(val_known), dtype=np.float32)
    for start in range(0, len(val_known), UNSEEN_CHUNK):
        rows = val_known[start : start + UNSEEN_CHUNK]
        sims = vectors[rows] @ train_t
        sims[y[rows][:, None] != train_y[None, :]] = -1.0
        nearest_same[start : start + len(rows)] = sims.max(axis=1)
    return float(np.quantile(nearest_same, UNSEEN_QUANTILE))


def _frontier_point(alpha: float, delta: float, val_scores, val_agrees, evidence: Evidence) -> dict:
    n_cal = len(evidence.scores)
    grid = threshold_grid(val_scores, val_agrees, n_cal, alpha, delta)
    result = fixed_sequence_test(grid, evidence.scores, evidence.agrees, evidence.eligible, alpha, delta)
    certified = result.certified_index is not None
    return {
        "alpha": alpha,
        "coverage": round(result.handled / n_cal, 4) if certified else 0.0,
        "certified": certified,
        "lower_bound": round(agreement_lower_bound(result.agree, result.handled, delta), 4) if certified else None,
    }


def _refusal_reason(grid: np.ndarray, evidence: Evidence, alpha: float, delta: float, n: int) -> tuple[str, str]:
    agrees = evidence.agrees
    overall = float(agrees.mean()) if len(agrees) else 0.0
    top = evidence.eligible & (evidence.scores >= grid[0]) if len(grid) else evidence.eligible
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


def _per_label(data: Traces, evidence: Evidence, handled: np.ndarray) -> dict:
    """Calibration evidence per teacher label (agreement measured on inputs the surrogate hands that label)."""
    teacher = data.labels[data.split.cal]
    predicted = np.array([data.label_names[p] for p in evidence.pred], dtype=object)
    trained = Counter(data.labels[data.fit_rows])
    out = {}
    for label in sorted(data.counts):
        mine = teacher == label
        handed = handled & (predicted == label)
        wrong = Counter(predicted[mine & (predicted != label)])
        out[label] = {
            "n_train": int(trained.get(label, 0)),
            "n_calibration": int(mine.sum()),
            "handled": int((handled & mine).sum()),
            "agreement": round(float(evidence.agrees[handed].mean()), 4) if handed.any() else None,
            "agreement_all": round(float((predicted[mine] == label).mean()), 4) if mine.any() else None,
            "status": "too_rare" if label in data.rare else "certified",
            "confused_with": [[k, int(v)] for k, v in wrong.most_common(3)],
        }
    return out
