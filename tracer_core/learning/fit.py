"""Fit a surrogate on teacher traces and certify it with the parity gate.

Which traces calibrate is fixed for the task version's life (`tracer_core.learning.split`): the newest
calibration-side traces of the calibration pool, never used to train or validate. Everything that
is chosen (which labels are trained, the out-of-distribution threshold, the threshold grid, and
whether to attempt certification at all) is chosen on train and validation only. The calibration
labels are read once, by the fixed-sequence test in `gate.py`, at the level the attempt spends
(`tracer_core.learning.spending`), so every policy the version ever deploys is covered by one delta.

`fit_policy` runs the steps in order: the split and the refusals that need no model, `_prepare`
(inputs, labels), `_filters` (out-of-distribution and unseen-label checks), `_trial` (the
surrogate's scores on validation), then `attempt_certification`, which predicts from validation,
and only when an attempt is worth it calls `_final_policy` (the surrogate retrained on train +
validation) and `_evidence` (its decisions on calibration) for the gate.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from tracer_core.errors import InvalidTraceError
from tracer_core.learning import certificate as codes
from tracer_core.learning.attempt import (
    MIN_CERTIFY_PROBABILITY,
    MIN_GAIN,
    CalibrationEvidence,
    Outcome,
    Validation,
    attempt_certification,
    fresh_needed,
)
from tracer_core.learning.certificate import Certificate
from tracer_core.learning.embedder import embed_in_steps
from tracer_core.learning.features import Tfidf, join_features, predict_proba
from tracer_core.learning.gate import min_handled_for
from tracer_core.learning.ood import MahalanobisOOD
from tracer_core.learning.policy import Policy
from tracer_core.learning.savings_estimate import SavingsEstimate, estimate_savings, minimum_estimate
from tracer_core.learning.spending import Ledger, MemoryLedger, attempt_delta
from tracer_core.learning.split import CAL_FRACTION, Split
from tracer_core.learning.surrogate import Surrogate, fit_ensemble
from tracer_core.settings import check_limit
from tracer_core.shutdown import check_exit

MIN_LABEL_TRACES = 3  # labels with fewer training-side traces are not trained on ("unseen")
OOD_QUANTILE = 0.995  # validation inputs farther than this quantile count as out-of-distribution
UNSEEN_QUANTILE = 0.50
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


# -- typed intermediate results --------------------------------------------------------------


@dataclass(frozen=True)
class Traces:
    """The fit's inputs as arrays, with the label index the surrogate is trained on."""

    texts: np.ndarray  # object array of str
    labels: np.ndarray  # object array of the teacher's labels
    vectors: np.ndarray
    y: np.ndarray  # index into label_names, -1 for labels too rare to train on
    label_names: list[str]
    counts: Counter  # labels of the train and validation traces
    rare: frozenset[str]
    split: Split
    pool: np.ndarray  # bool per row: may calibrate (a uniform sample of traffic)

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
class Evidence(CalibrationEvidence):
    """The final policy's decisions on the calibration rows, with its predicted labels, and whether the teacher's
    label is one the policy found implausible (`Decision.plausible`; rows deferred for low confidence only)."""

    pred: np.ndarray
    implausible: np.ndarray


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
    audits: Sequence[bool] | np.ndarray | None = None,
    max_train: int | None = DEFAULT_MAX_TRAIN,
    salt: str | None = None,
    ledger: Ledger | None = None,
    baseline: float = 0.0,
) -> tuple[Policy | None, Certificate]:
    """Train the surrogate, score validation, and certify it on calibration when that is worth an attempt.

    `ids` are the traces' ids (default 1..n): with `salt` (default task and fingerprint) they fix
    which traces calibrate (`tracer_core.learning.split`). `calibration_pool` marks the traces that may
    serve as calibration evidence (a uniform random sample of traffic); None: every trace. `audits` marks the
    traces recorded as audits (they calibrate at a higher fraction); None: none.
    `max_train` caps train + validation; None: no cap. `ledger` counts the version's attempts
    (default: a fresh one, so this is its first); `baseline` is the coverage of the policy in
    force (0: none), which an attempt must be predicted to beat. Writes nothing but the ledger.
    """
    started = time.time()
    n = len(texts)
    pool = _per_trace("calibration_pool", calibration_pool, n, bool, np.ones(n, dtype=bool))
    row_ids = _per_trace("ids", ids, n, np.int64, np.arange(1, n + 1))
    audit = _per_trace("audits", audits, n, bool, np.zeros(n, dtype=bool))
    max_train = check_limit("max_train", max_train)
    ledger = ledger if ledger is not None else MemoryLedger()
    split = Split.persistent(row_ids, pool, salt=f"{task}\x00{fingerprint}" if salt is None else salt, seed=seed,
                             max_train=max_train, audit=audit)
    cal_ids = [int(row_ids[i]) for i in split.cal]
    base: dict[str, Any] = dict(  # the certificate's fields every outcome shares
        task=task, fingerprint=fingerprint, alpha=alpha, delta=delta, n_traces=n, n_pool=int(pool.sum()),
        data_hash=data_hash(texts, labels), created_at=started, trace_max_id=max(ids) if ids else 0,
        max_train=max_train, calibration_id_range=[min(cal_ids), max(cal_ids)] if cal_ids else [],
    )

    def refuse(code: str, reason: str, estimate: SavingsEstimate | None = None, **extra) -> tuple[None, Certificate]:
        if estimate is not None:  # the reason says when savings may start (status, report, logs and CLI show it)
            reason, extra["savings_estimate"] = f"{reason}; {estimate.text()}", estimate.to_dict()
        cert = Certificate(deployed=False, reason_code=code, reason=reason, **base, **extra)
        cert.fit_seconds = round(time.time() - started, 3)
        return None, cert

    next_delta = attempt_delta(delta, ledger.next_attempt())
    early = _refusal_before_fit([labels[i] for i in split.training], n, split, alpha, next_delta)
    if early:
        code, reason = early
        minimum = None if code != codes.TOO_FEW_TRACES else minimum_estimate(
            n_traces=n, n_pool=split.n_pool, n_calibration=len(split.cal), alpha=alpha,
            needed=lambda a: calibration_needed(a, next_delta))
        return refuse(code, reason, minimum)
    used = split.used
    data = _prepare([texts[i] for i in used], [labels[i] for i in used], embed, split.renumbered(), pool[used])
    if len(set(data.y[data.trainable(data.split.train)])) < 2:
        return refuse(codes.SINGLE_LABEL, "fewer than two labels have enough traces to train on")
    filters = _filters(data)
    trial = _trial(data, filters, alpha, seed)
    like = Validation.like_calibration(trial.scores, trial.agrees, data.pool[data.split.val], filters.val_in_distribution)
    n_cal = len(cal_ids)
    final: list[Policy] = []

    def calibration() -> Evidence:
        final.append(_final_policy(data, filters, seed))
        return _evidence(final[0], data)

    outcome = attempt_certification(like, n_cal, row_ids[used], alpha=alpha, delta=delta, baseline=baseline,
                                    ledger=ledger, calibration=calibration)
    common: dict[str, Any] = dict(  # the fields of every outcome once a model is trained
        n_train=len(data.split.train), n_validation=len(data.split.val), n_calibration=n_cal,
        n_train_available=split.n_available, n_labels=len(data.counts), model=SURROGATE,
        candidates={SURROGATE: {"val_agreement": round(trial.agreement, 4), "val_coverage": round(trial.coverage, 4)}},
        frontier=_frontier(like, n_cal, outcome.delta_spent or outcome.delta_predicted),
        ood_threshold=filters.ood_threshold, calibration_ids=cal_ids, attempt=outcome.attempt,
        delta_spent=outcome.delta_spent, delta_spent_total=outcome.delta_spent_total,
        predicted_coverage=round(outcome.predicted_coverage, 4),
    )
    estimate = None
    if not outcome.certified and baseline <= 0:  # nothing answers yet: say when savings may start
        estimate = estimate_savings(like, n_traces=n, n_pool=split.n_pool, n_calibration=n_cal, alpha=alpha,
                                    delta=delta, next_attempt=ledger.next_attempt(),
                                    error_decay=_error_decay(data, filters, trial, seed),
                                    wait=fresh_needed(row_ids[used], ledger.latest()),
                                    validation_room=max_train / len(used) if max_train else math.inf)
    if outcome.attempt == 0:
        return refuse(codes.NOT_ATTEMPTED, _skip_reason(outcome, baseline, alpha, like, n_cal), estimate, **common)
    evidence = outcome.evidence
    assert isinstance(evidence, Evidence) and outcome.grid is not None and outcome.result is not None
    if not outcome.certified:
        code, reason = _refusal_reason(outcome.grid, evidence, alpha, outcome.delta_spent, n)
        per_label = _per_label(data, evidence, np.zeros(n_cal, bool))
        return refuse(code, reason, estimate, per_label=per_label, **common)
    if not outcome.replaces(baseline):
        return refuse(codes.NOT_BETTER, (
            f"the gate certified coverage {outcome.coverage:.3f} at alpha {alpha}, below the {baseline:.3f} of the "
            f"policy in force, which stays; attempt {outcome.attempt} (made for the gain) spent delta "
            f"{outcome.delta_spent:.2g}"), **common)
    policy = final[0]
    assert outcome.threshold is not None  # a certified outcome names its threshold
    policy.threshold = outcome.threshold
    cert = _certified(policy.threshold, data, evidence, {**base, **common, "p_value": outcome.result.p_value})
    cert.fit_seconds = round(time.time() - started, 3)
    policy.certificate = cert
    return policy, cert


def _per_trace(name: str, values, n: int, dtype, default: np.ndarray) -> np.ndarray:
    """`values` as an array with one entry per trace (`default` when None); a clear error otherwise."""
    if values is None:
        return default
    arr = np.asarray(values, dtype=dtype)
    if arr.shape != (n,):
        raise InvalidTraceError(f"{name} has {arr.size} entries for {n} traces; it needs one per trace")
    return arr


def _refusal_before_fit(
    training_labels: list[str], n: int, split: Split, alpha: float, delta: float
) -> tuple[str, str] | None:
    """Refusals that need no model, decided on training-side labels and counts only: free text, too little
    calibration evidence for the next attempt's level `delta`, a single label."""
    m, counts = len(training_labels), Counter(training_labels)
    if m >= 20 and len(counts) > FREE_TEXT_RATIO * m:
        return codes.FREE_TEXT, f"{len(counts)} distinct outputs in {m} traces: free generation, not classification"
    shortfall = calibration_shortfall(split, n, alpha, delta)
    if shortfall:
        return codes.TOO_FEW_TRACES, shortfall
    if len(counts) < 2:
        return codes.SINGLE_LABEL, f"all {m} training traces carry one label; nothing to learn yet"
    return None


def calibration_shortfall(split: Split, n: int, alpha: float, delta: float) -> str | None:
    """Why the calibration window of `split` (of `n` traces) is too small for a test at `delta`, or None."""
    n_cal, needed = len(split.cal), calibration_needed(alpha, delta)
    if n_cal >= needed:
        return None
    if split.n_pool == n:
        return f"{n} traces; at alpha {alpha} at least ~{traces_needed(alpha, delta)} are needed"
    return (f"{split.n_pool} of {n} traces may serve as calibration evidence and {n_cal} of them calibrate; at alpha "
            f"{alpha} at least ~{needed} calibrating traces (~{traces_needed(alpha, delta)} that may serve) are needed")


def _prepare(texts: list[str], labels: list[str], embed, split: Split, pool: np.ndarray) -> Traces:
    """Inputs, embeddings and label indices. Which labels are trained (and which are too rare) is decided on
    train and validation labels only, so the calibration labels never shape the model."""
    label_arr = np.array(labels, dtype=object)
    counts = Counter(label_arr[split.training])
    rare = frozenset(label for label, c in counts.items() if c < MIN_LABEL_TRACES)
    label_names = sorted(set(counts) - rare)
    index = {label: i for i, label in enumerate(label_names)}
    return Traces(
        texts=np.array(texts, dtype=object), labels=label_arr, vectors=embed_in_steps(embed, list(texts)),
        y=np.array([index.get(label, -1) for label in labels]), label_names=label_names, counts=counts,
        rare=rare, split=split, pool=pool,
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


def _error_decay(data: Traces, filters: Filters, trial: Trial, seed: int) -> float:
    """The exponent b of validation errors ~ training traces^-b, from the trial surrogate and one trained on half its
    traces (train and validation only; for the savings estimate). 0 when the half errs no more."""
    val, ok = data.split.val, filters.val_in_distribution
    model, tfidf = _train(data, data.trainable(data.split.train)[::2], seed)
    proba = predict_proba(model, data.vectors[val], data.text_list(val), tfidf)
    half = float(np.mean(proba[ok].argmax(axis=1) != data.y[val][ok])) if ok.any() else 0.0
    full = float(np.mean(~trial.agrees[ok])) if ok.any() else 0.0
    return math.log2(half / full) if half > full > 0 else 0.0


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
        certificate=cast(Certificate, None),  # fit_policy sets it once the gate has certified the policy
    )


def _evidence(policy: Policy, data: Traces) -> Evidence:
    """The policy's decisions on every calibration row, in blocks of EVIDENCE_CHUNK (bounded memory).
    Called only once an attempt is reserved: the first read of calibration labels."""
    cal = data.split.cal
    decisions = []
    for start in range(0, len(cal), EVIDENCE_CHUNK):
        rows = cal[start : start + EVIDENCE_CHUNK]
        decisions += policy.decide(data.text_list(rows), data.vectors[rows])
    index = {label: i for i, label in enumerate(data.label_names)}
    pred = np.array([index[cast(str, d.label)] for d in decisions], dtype=np.int64)  # decide() labels every input
    return Evidence(
        pred=pred, scores=np.array([d.score for d in decisions]), agrees=pred == data.y[cal],
        eligible=np.array([d.reason in ("handled", "low_confidence") for d in decisions], dtype=bool),
        implausible=np.array([data.label_names[y] not in d.plausible for d, y in zip(decisions, data.y[cal])], dtype=bool),
    )


def _frontier(like: Validation, n_calibration: int, delta: float) -> list[dict]:
    """Coverage at 20 alphas, estimated from validation only (no calibration label is read): what a gate at
    level `delta` is predicted to certify. Estimates, not certificates: each point says so."""
    covs = np.array([like.coverage(n_calibration, a, delta) for a in FRONTIER_ALPHAS])
    covs = np.maximum.accumulate(covs[::-1])[::-1]  # what passes at a stricter alpha passes at a looser one
    return [{"alpha": a, "coverage": round(float(c), 4), "estimate": True, "certified": False, "lower_bound": None}
            for a, c in zip(FRONTIER_ALPHAS, covs)]


def _skip_reason(outcome: Outcome, baseline: float, alpha: float, like: Validation, n_cal: int) -> str:
    """Why no attempt was made, from the schedule or validation only."""
    spent = "the gate did not run and no delta was spent"
    if outcome.fresh_needed:
        return (f"the version's last attempt certified nothing on much the same traces; the next waits for "
                f"{outcome.fresh_needed:,} more recorded after it; {spent}")
    level = f"at delta {outcome.delta_predicted:.2g}, the level of the next attempt"
    if baseline > 0 and outcome.predicted_coverage >= baseline + MIN_GAIN:
        chance = like.certify_probability(n_cal, alpha, outcome.delta_predicted)
        return (f"validation predicts coverage {outcome.predicted_coverage:.3f} at alpha {alpha} ({level}), but gives "
                f"the gate a {chance:.0%} chance to certify anything, under the {MIN_CERTIFY_PROBABILITY:.0%} an "
                f"attempt for the gain needs; the policy in force stays; {spent}")
    if baseline > 0:
        return (f"validation predicts coverage {outcome.predicted_coverage:.3f} at alpha {alpha} ({level}), not "
                f"{MIN_GAIN} above the {baseline:.3f} of the policy in force, which stays; {spent}")
    overall = float(like.agrees.mean()) if len(like.agrees) else 0.0
    why = ("the embedding does not separate these labels" if overall < NO_SEPARATION_AGREEMENT
           else "more traces are needed")
    return (f"validation predicts no coverage certifiable at alpha {alpha} with {n_cal:,} calibration traces ({level}; "
            f"surrogate agreement {overall:.2f} on validation): {why}; {spent}")


def _certified(threshold: float, data: Traces, evidence: Evidence, fields: dict) -> Certificate:
    """The certificate of a passed gate. What is certified is alpha at the threshold (no lower bound at a
    threshold the data chose is claimed: `agreement_lower_bound` stays None)."""
    handled = evidence.eligible & (evidence.scores >= threshold)
    unsure = evidence.eligible & ~handled  # deferred for low confidence at the certified threshold
    n_handled, agree = int(handled.sum()), int(evidence.agrees[handled].sum())
    cert = Certificate(
        deployed=True, reason_code=codes.DEPLOYED, threshold=threshold,
        coverage=round(n_handled / len(data.split.cal), 4),
        agreement=round(agree / n_handled, 4) if n_handled else None,
        deferred_implausible=[int(evidence.implausible[unsure].sum()), int(unsure.sum())],
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


def _refusal_reason(grid: np.ndarray, evidence: Evidence, alpha: float, delta: float, n: int) -> tuple[str, str]:
    """Why an attempted gate certified nothing (read after the attempt spent its delta)."""
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
        f"{top_agree:.3f}, not enough evidence for alpha {alpha} at delta {delta:.2g} with {n} traces; "
        "more traces are needed"
    )


def _per_label(data: Traces, evidence: Evidence, handled: np.ndarray) -> dict:
    """Calibration evidence per teacher label (agreement measured on inputs the surrogate hands that label)."""
    teacher = data.labels[data.split.cal]
    predicted = np.array([data.label_names[p] for p in evidence.pred], dtype=object)
    trained = Counter(data.labels[data.fit_rows])
    out = {}
    for label in sorted(set(data.counts) | set(teacher)):
        mine = teacher == label
        handed = handled & (predicted == label)
        wrong = Counter(predicted[mine & (predicted != label)])
        out[label] = {
            "n_train": int(trained.get(label, 0)),
            "n_calibration": int(mine.sum()),
            "handled": int((handled & mine).sum()),
            "agreement": round(float(evidence.agrees[handed].mean()), 4) if handed.any() else None,
            "agreement_all": round(float((predicted[mine] == label).mean()), 4) if mine.any() else None,
            "status": "certified" if label in data.label_names else "too_rare",
            "confused_with": [[k, int(v)] for k, v in wrong.most_common(3)],
        }
    return out
