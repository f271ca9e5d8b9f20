"""Teacher suspects on Banking77 train: find the T2 label flips, then look at T1 (no flips).

T2 flips 8% of the train labels at random to the most confusable other class; the flipped
indices ship beside the teacher files. Precision of the top 100 / 400 suspects and recall of
the 800 flips among the top 800, for the plain baseline, for `tracer_core.learning.suspects` before and
after its cleaning round, and for a confident-learning class-pair prior (measured, not kept).
"""

from __future__ import annotations

import time

import numpy as np
from sklearn.model_selection import StratifiedKFold

from bench.data import data_dir, teacher_split
from tracer_core.learning.embedder import get_default_embedder
from tracer_core.learning.surrogate import fit_logistic
from tracer_core.learning.suspects import MIN_SCORE, Evidence, cleaned, cross_fitted_evidence

TOP_SHOWN = 10


def flipped(dataset: str = "banking77") -> np.ndarray:
    return np.load(data_dir() / "teachers" / f"{dataset}_train_T2_flipped_idx.npy")


def oof_logistic_margin(vectors: np.ndarray, labels: list[str], fit_labels: list[str], seed: int = 0) -> np.ndarray:
    """Plain out-of-fold logistic regression on the embedding (5 folds), trained on `fit_labels`:
    max probability minus the probability of `labels`."""
    names = sorted(set(labels) | set(fit_labels))
    index = {label: i for i, label in enumerate(names)}
    y = np.array([index[label] for label in labels])
    y_fit = np.array([index[label] for label in fit_labels])
    probs = np.zeros((len(y), len(names)))
    for train, test in StratifiedKFold(5, shuffle=True, random_state=seed).split(vectors, y_fit):
        probs[test] = fit_logistic(vectors[train], y_fit[train], len(names), seed=seed).predict_proba(vectors[test])
    return probs.max(axis=1) - probs[np.arange(len(y)), y]


def confident_joint(evidence: Evidence) -> np.ndarray:
    """Confident learning's count matrix C[teacher label, evidence label]: a trace counts for the most probable
    label whose probability reaches that label's threshold (the mean probability its own traces give it)."""
    probs, y = evidence.probs, evidence.y
    thresholds = np.array([probs[y == j, j].mean() for j in range(probs.shape[1])])
    above = np.where(probs >= thresholds, probs, -np.inf)
    counted = np.isfinite(above).any(axis=1)
    joint = np.zeros((probs.shape[1],) * 2)
    np.add.at(joint, (y[counted], above[counted].argmax(axis=1)), 1.0)
    return joint


def pair_prior_scores(evidence: Evidence) -> tuple[np.ndarray, np.ndarray]:
    """Two uses of the confident joint: (score x the pair's off-diagonal rate among the teacher label's traces,
    posterior that the teacher label is wrong under the noise transitions the calibrated joint estimates)."""
    score, suggested = evidence.scores()
    y, probs = evidence.y, evidence.probs
    joint = confident_joint(evidence)
    traces = np.bincount(y, minlength=len(joint)).astype(float)
    off = joint.copy()
    np.fill_diagonal(off, 0.0)
    weighted = score * off[y, suggested] / traces[y]
    calibrated = joint / np.maximum(joint.sum(axis=1, keepdims=True), 1.0) * traces[:, None]
    transitions = calibrated / np.maximum(calibrated.sum(axis=0, keepdims=True), 1e-12)  # P(teacher a | true b)
    likelihood = probs * transitions[y]  # p(true c | x) P(teacher label | true c)
    rows = np.arange(len(y))
    posterior = 1.0 - likelihood[rows, y] / np.maximum(likelihood.sum(axis=1), 1e-12)
    return weighted, posterior


def scored_against(evidence: Evidence, names: list[str], labels: list[str]) -> np.ndarray:
    """Scores of other recorded labels under this evidence (its models trained on different labels)."""
    if names != evidence.labels:
        raise ValueError("the two label sets differ")
    index = {label: i for i, label in enumerate(names)}
    return Evidence(names, np.array([index[x] for x in labels]), evidence.probs, evidence.neighbours,
                    evidence.similarities).scores()[0]


class Timer:
    """Wall and CPU seconds (all threads of this process) since start: the CPU time does not grow with load."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def __str__(self) -> str:
        return f"{time.perf_counter() - self.wall:.0f} / {time.process_time() - self.cpu:.0f}"


def ranking_row(name: str, score: np.ndarray, flips: np.ndarray, seconds: Timer | str, target: str = "-") -> dict:
    is_flip = np.zeros(len(score), dtype=bool)
    is_flip[flips] = True
    order = np.argsort(-score, kind="stable")
    return {
        "method": name,
        "precision @100": f"{is_flip[order[:100]].mean():.3f}",
        "precision @400": f"{is_flip[order[:400]].mean():.3f}",
        f"recall @{len(flips)}": f"{is_flip[order[:len(flips)]].sum() / len(flips):.3f}",
        "score at rank 800": f"{score[order[len(flips) - 1]]:.3f}",
        "s wall / CPU (embeddings cached)": str(seconds),
        "target": target,
    }


def run() -> tuple[list[dict], str]:
    embed = get_default_embedder()
    t2, t1 = teacher_split("banking77", "T2"), teacher_split("banking77", "T1")
    vectors = embed(t2.train_texts)
    flips = flipped()

    timer = Timer()
    baseline = oof_logistic_margin(vectors, t2.train_labels, t2.train_labels)
    rows = [ranking_row("baseline: out-of-fold logistic regression (embedding)", baseline, flips, timer,
                        "issue: 1.00 / 0.975 / 0.815")]
    timer = Timer()
    before = cross_fitted_evidence(t2.train_texts, t2.train_labels, vectors, cleaning_rounds=0)
    before_time = str(timer)
    rows.append(ranking_row("before: 2 out-of-fold LRs + kNN vote (no cleaning)", before.scores()[0], flips,
                            before_time))
    weighted, posterior = pair_prior_scores(before)
    rows.append(ranking_row("dropped: before x confident-joint pair rate", weighted, flips, before_time))
    rows.append(ranking_row("dropped: posterior under confident-joint noise transitions", posterior, flips, before_time))
    after = cleaned(before, t2.train_texts, vectors)
    score_t2 = after.scores()[0]
    rows.append(ranking_row("tracer suspects: before + 1 cleaning round (kept)", score_t2, flips, timer,
                            "1.00 / >= 0.98 / >= 0.88"))
    timer = Timer()
    oracle = oof_logistic_margin(vectors, t2.train_labels, t1.train_labels)
    rows.append(ranking_row("not a method: the baseline trained on the gold (T1) labels", oracle, flips, timer))
    timer = Timer()
    gold = cross_fitted_evidence(t1.train_texts, t1.train_labels, vectors, cleaning_rounds=0)
    rows.append(ranking_row("not a method: 'before' trained on the gold (T1) labels",
                            scored_against(gold, before.labels, t2.train_labels), flips, timer))

    level = float(np.sort(score_t2)[::-1][len(flips) - 1])
    evidence = cleaned(gold, t1.train_texts, vectors)
    score_t1, suggested = evidence.scores()
    order = np.argsort(-score_t1, kind="stable")
    top = "\n".join(
        f"{rank}. score {score_t1[i]:.2f}, teacher `{t1.train_labels[i]}`, evidence `{evidence.labels[suggested[i]]}`: "
        f"\"{t1.train_texts[i]}\""
        for rank, i in enumerate(order[:TOP_SHOWN], 1)
    )
    is_flip = np.zeros(len(score_t2), dtype=bool)
    is_flip[flips] = True
    top800 = np.argsort(-score_t2, kind="stable")[: len(flips)]
    false_alarms = top800[~is_flip[top800]]
    also_t1 = int((score_t1[false_alarms] >= level).sum())
    note = (
        "Banking77 train (10,003 traces); T2 = 800 labels flipped to the most confusable other class. "
        "Score = cross-fitted probability of the best other label minus that of the teacher label; every "
        "model that scores a trace was trained without it (5 folds; the kNN vote never counts the trace itself). "
        "Cleaning round: the traces scoring >= 0.5 before cleaning are left out of the training folds and of the "
        "kNN vote, the models are refit and every trace is scored again. The 'dropped' rows weight the "
        "before-cleaning evidence by confident learning's class-pair counts (per-label thresholds = mean "
        "self-probability); they lose because the 800 flips spread over 328 (teacher, true) label pairs, so a pair "
        "with many suspects is mostly a naturally confusable pair. The last two rows are upper references, not "
        "methods: trained on the true labels they show how far a perfectly cleaned training set gets with this "
        "embedding; the baseline figures stated in the issue (1.00 / 0.975 / 0.815) match the first of them, not "
        "the baseline trained on the T2 labels. CPU seconds count every thread of the process and do not grow "
        "with other load on the machine; they leave out the 2 worker processes that fit the suspects' folds (from "
        "2,000 traces), so for those rows only the wall time compares.\n\n"
        f"Why recall @800 stops short: {len(false_alarms)} of the top 800 are not flips, and {also_t1} of those "
        f"score at or above the same level on T1, where no label is flipped: they are Banking77's own ambiguous "
        f"labels, which any method that finds flips finds too.\n\n"
        f"T1 (teacher = gold, no flips; same method with its cleaning round): {int((score_t1 >= level).sum()):,} "
        f"traces score at or above the level of rank 800 on T2 ({level:.3f}); {int((score_t1 >= MIN_SCORE).sum()):,} "
        f"at or above the default suspect level {MIN_SCORE}. Top {TOP_SHOWN} T1 suspects (Banking77's own "
        f"annotation issues):\n\n{top}"
    )
    print(note, flush=True)
    return rows, note
