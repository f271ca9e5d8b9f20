"""Teacher suspects: traces whose recorded teacher label the other traces contradict.

Every score is cross-fitted: the traces are split into folds, and a trace's label
probabilities come only from models trained on the other folds (logistic regression on the
embedding, and on the embedding joined by word TF-IDF) and from the labels of its nearest
other traces (a k-nearest-neighbour vote that never counts the trace itself). The three
probability vectors are averaged; the score of a trace is the averaged probability of the
best other label minus that of the teacher's label. A positive score means the evidence
points away from the teacher's label; near 1 it says "every model puts this input in another
label".

The evidence is then cleaned once: the traces scoring >= MIN_SCORE are left out of the
training folds and of the neighbour vote, the models are refit and every trace is scored
again (suspects included, still by models that never trained on it). A flipped label pulls
the boundary towards itself; trained without the worst offenders the models contradict the
remaining flips more sharply.

From PARALLEL_MIN traces the 2 x FOLDS fits of a round run on WORKERS processes, and the cleaning round's
fits start from the first round's models of the same fold (fitted without that fold: a start, not evidence).

Above MAX_SCORED teacher traces a fixed-seed random sample of MAX_SCORED is scored (the result says so),
which bounds the time and memory at any store size. With an `EvidenceCache` the evidence is kept on disk
and reused while the scored traces and the embedder are unchanged (see `suspects_cache`).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from tracer_core.errors import TracerError
from tracer_core.learning.embedder import EmbedFn, embed_checked
from tracer_core.learning.embedder_identity import identify
from tracer_core.learning.surrogate import LinearSurrogate
from tracer_core.learning.suspects_cache import EvidenceCache, evidence_key, load, save
from tracer_core.learning.suspects_logistic import fit_blocks
from tracer_core.learning.suspects_tfidf import fold_terms, term_counts, weighted

if TYPE_CHECKING:
    from scipy.sparse import csr_matrix

FOLDS = 5
NEIGHBOURS = 20  # traces in the k-nearest-neighbour vote
SHOWN_NEIGHBOURS = 5  # nearest traces listed with each suspect
EMBEDDING_C = 5.0  # logistic regression on the embedding alone
TFIDF_C = 20.0  # logistic regression on embedding + TF-IDF (the fit's own setting)
MIN_SCORE = 0.5  # a trace is counted as a suspect at or above this score
CLEANING_ROUNDS = 1  # refits without the current suspects (a second one gained nothing on Banking77 T2)
MIN_TRACES = 20
TOP_PAIRS = 10
_BLOCK = 1024  # rows per block of the similarity matrix
WORKERS = 2  # processes the folds are fitted on (at most one per core)
PARALLEL_MIN = 2_000  # traces from which the folds run on WORKERS processes (below, starting them costs more)
MAX_SCORED = 20_000  # teacher traces scored at most (a random sample of them beyond: time and memory stay bounded)


class SuspectsError(TracerError):
    """Suspects cannot be computed for these traces."""


@dataclass
class Suspect:
    """One trace whose teacher label the cross-fitted evidence contradicts."""

    id: int
    input: str
    teacher_label: str
    suggested_label: str
    score: float
    teacher_probability: float
    suggested_probability: float
    neighbours: list[dict]  # nearest other traces: id, input, label, similarity


@dataclass
class Suspects:
    """The ranked suspects (at most `limit`), counts per label and the most confused label pairs."""

    n_traces: int
    min_score: float
    n_suspects: int  # traces scoring >= min_score (all of them, not only those listed)
    suspects: list[Suspect]
    per_label: list[dict]  # label, traces, suspects (teacher said it), pointed_to (evidence says it)
    confused_pairs: list[dict]  # labels [a, b], suspects, message
    method: dict = field(default_factory=dict)
    sampled_from: int | None = None  # teacher traces in all when only a random sample of n_traces was scored
    evidence: dict = field(default_factory=dict)  # with an EvidenceCache: reused (bool), computed_at (epoch seconds)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Evidence:
    """Cross-fitted label probabilities for every trace and its nearest other traces."""

    labels: list[str]  # label names, the columns of `probs`
    y: np.ndarray  # teacher label index per trace
    probs: np.ndarray  # (n, n_labels) averaged out-of-fold probabilities
    neighbours: np.ndarray  # (n, NEIGHBOURS) indices of the nearest other traces
    similarities: np.ndarray  # (n, NEIGHBOURS) their cosine similarities
    fold_models: list[FoldModels] | None = field(default=None, repr=False)  # in memory only, never kept on disk

    def scores(self) -> tuple[np.ndarray, np.ndarray]:
        """(score, suggested label index) per trace: best other label's probability minus the teacher's."""
        rows = np.arange(len(self.y))
        others = self.probs.copy()
        others[rows, self.y] = -np.inf
        suggested = others.argmax(axis=1)
        return self.probs[rows, suggested] - self.probs[rows, self.y], suggested


def cross_fitted_evidence(
    texts: Sequence[str], labels: Sequence[str], vectors: np.ndarray, *, folds: int = FOLDS, seed: int = 0,
    cleaning_rounds: int = CLEANING_ROUNDS,
) -> Evidence:
    """Out-of-fold logistic regressions (embedding; embedding + TF-IDF) and a leave-one-out kNN vote, averaged,
    then `cleaning_rounds` refits that leave the current suspects out of training (see `cleaned`)."""
    n = len(texts)
    if n != len(labels) or n != len(vectors):
        raise SuspectsError(f"got {n} texts, {len(labels)} labels and {len(vectors)} vectors")
    names = sorted(set(labels))
    if n < MIN_TRACES or len(names) < 2:
        raise SuspectsError(f"suspects need at least {MIN_TRACES} traces and 2 labels; got {n} traces, {len(names)} labels")
    index = {label: i for i, label in enumerate(names)}
    y = np.array([index[label] for label in labels])
    texts = list(texts)
    vectors = np.asarray(vectors, dtype=np.float32)
    with ThreadPoolExecutor(1) as pool:  # the neighbours are found while the first round's models fit
        nearest = pool.submit(nearest_others, vectors, min(NEIGHBOURS, n - 1))
        evidence = _fold_evidence(texts, vectors, names, y, nearest.result, np.ones(n, dtype=bool), folds, seed)
    for _ in range(cleaning_rounds):
        evidence = cleaned(evidence, texts, vectors, folds=folds, seed=seed)
    return evidence


def cleaned(evidence: Evidence, texts: list[str], vectors: np.ndarray, *, folds: int = FOLDS, seed: int = 0) -> Evidence:
    """The evidence recomputed with the traces it scores >= MIN_SCORE left out of training and of the vote.

    Every trace, suspect or not, is still scored only by models trained on other folds. Which of those
    other traces are left out was decided by the previous round, whose models for their folds did train on
    this trace: its own label reaches its score only through that choice, never through a fitted weight.
    Each fold's models start from the previous round's models of the same fold (fitted without its traces).
    """
    trusted = evidence.scores()[0] < MIN_SCORE
    return _fold_evidence(texts, vectors, evidence.labels, evidence.y, lambda: (evidence.neighbours, evidence.similarities),
                          trusted, folds, seed, evidence.fold_models)


@dataclass
class FoldModels:
    """One fold's fitted models: the start of the same fold's models in the next cleaning round."""

    embedding: LinearSurrogate
    joined: LinearSurrogate  # embedding + TF-IDF
    columns: np.ndarray  # the joined model's TF-IDF terms (columns of `term_counts`), ascending


def _fold_evidence(
    texts: list[str], vectors: np.ndarray, names: list[str], y: np.ndarray,
    nearest: Callable[[], tuple[np.ndarray, np.ndarray]], trusted: np.ndarray, folds: int, seed: int,
    starts: list[FoldModels] | None = None,
) -> Evidence:
    """Averaged out-of-fold probabilities, training and voting on the `trusted` traces only where that
    leaves at least two labels to learn (tiny sets fall back to every trace of the other folds). `nearest`
    gives (neighbours, similarities) once the models are fitted."""
    n_labels = len(names)
    split = list(_folds(y, folds, seed))
    if starts is not None and len(starts) != len(split):
        starts = None
    jobs = []
    for i, (train, test) in enumerate(split):
        kept = train[trusted[train]]
        jobs.append((kept if len(np.unique(y[kept])) >= 2 else train, test, starts[i] if starts else None))
    fitted = _fit_folds(term_counts(texts), vectors, y, n_labels, jobs)
    embedding_lr = np.zeros((len(y), n_labels))
    tfidf_lr = np.zeros((len(y), n_labels))
    for (_, test, _), (embedding, joined, _) in zip(jobs, fitted):
        embedding_lr[test], tfidf_lr[test] = embedding, joined
    neighbours, similarities = nearest()
    vote = _neighbour_vote(y, n_labels, neighbours, trusted)
    models = [m for _, _, m in fitted]
    return Evidence(names, y, (embedding_lr + tfidf_lr + vote) / 3.0, neighbours, similarities,
                    None if any(m is None for m in models) else models)


def _fit_folds(counts: csr_matrix, vectors: np.ndarray, y: np.ndarray, n_labels: int, jobs: list) -> list:
    """Per job (train, test, start): the embedding and joined models' probabilities of `test`, and the models.

    The 2 x folds fits run longest (joined) first, on WORKERS processes from PARALLEL_MIN traces (the CLI
    waits for them in the foreground).
    """
    fits = [(joined, i) for joined in (True, False) for i in range(len(jobs))]
    args = [(counts, vectors, y, n_labels, joined, *jobs[i]) for joined, i in fits]
    workers = min(WORKERS, os.cpu_count() or 1)
    if len(y) < PARALLEL_MIN or workers < 2:
        results = [_fit_model(*arg) for arg in args]
    else:
        from joblib import Parallel, delayed

        results = Parallel(n_jobs=workers)(delayed(_fit_model)(*arg) for arg in args)
    done = dict(zip(fits, results))
    folds = []
    for i in range(len(jobs)):
        (embedding_probs, embedding, _), (joined_probs, joined, columns) = done[False, i], done[True, i]
        models = FoldModels(embedding, joined, columns) if embedding and joined and columns is not None else None
        folds.append((embedding_probs, joined_probs, models))
    return folds


def _fit_model(
    counts: csr_matrix, vectors: np.ndarray, y: np.ndarray, n_labels: int, joined: bool, train: np.ndarray,
    test: np.ndarray, start: FoldModels | None,
) -> tuple[np.ndarray, LinearSurrogate | None, np.ndarray | None]:
    """Probabilities of `test` from the embedding (or, if `joined`, embedding + TF-IDF) model trained on `train`;
    the model, and its TF-IDF columns."""
    if len(np.unique(y[train])) < 2:  # a model trained on one label can only say that label
        probs = np.zeros((len(test), n_labels))
        probs[:, y[train][0]] = 1.0
        return probs, None, None
    if not joined:
        model = fit_blocks(vectors[train], None, y[train], n_labels, EMBEDDING_C, start.embedding if start else None)
        return model.predict_proba(vectors[test]), model, None
    columns, idf = fold_terms(counts, train)
    if not len(columns):  # no term occurs twice (tiny sets): the joined model is the embedding alone
        model = fit_blocks(vectors[train], None, y[train], n_labels, TFIDF_C)
        return model.predict_proba(vectors[test]), None, None
    model = fit_blocks(vectors[train], weighted(counts, train, columns, idf), y[train], n_labels, TFIDF_C,
                       _moved(start, columns, vectors.shape[1]) if start else None)
    return model.predict_proba(vectors[test], weighted(counts, test, columns, idf)), model, columns


def _moved(start: FoldModels, columns: np.ndarray, dimension: int) -> LinearSurrogate:
    """The previous joined model's weights on these TF-IDF `columns` (0 for a term it did not have)."""
    weights = np.zeros((len(start.joined.bias), dimension + len(columns)), dtype=np.float32)
    weights[:, :dimension] = start.joined.weights[:, :dimension]
    at = np.minimum(np.searchsorted(start.columns, columns), len(start.columns) - 1)
    found = start.columns[at] == columns
    weights[:, dimension + np.flatnonzero(found)] = start.joined.weights[:, dimension + at[found]]
    return LinearSurrogate(weights, start.joined.bias.copy())


def _neighbour_vote(y: np.ndarray, n_labels: int, neighbours: np.ndarray, trusted: np.ndarray) -> np.ndarray:
    """Share of each label among a trace's trusted nearest others (all of them when none is trusted)."""
    weights = trusted[neighbours].astype(float)
    weights[weights.sum(axis=1) == 0] = 1.0
    weights /= weights.sum(axis=1, keepdims=True)
    vote = np.zeros((len(y), n_labels))
    np.add.at(vote, (np.repeat(np.arange(len(y)), neighbours.shape[1]), y[neighbours].ravel()), weights.ravel())
    return vote


def _folds(y: np.ndarray, folds: int, seed: int):
    """Stratified folds when every label has a trace per fold, else plain shuffled folds."""
    from sklearn.model_selection import KFold, StratifiedKFold

    folds = min(folds, len(y))
    if np.bincount(y).min() >= folds:
        return StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y)
    return KFold(folds, shuffle=True, random_state=seed).split(y)


def nearest_others(vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k most cosine-similar other rows of each row (vectors L2-normalised), most similar first."""
    n = len(vectors)
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    neighbours = np.zeros((n, k), dtype=np.int64)
    similarities = np.zeros((n, k), dtype=np.float32)
    for start in range(0, n, _BLOCK):
        block = unit[start : start + _BLOCK] @ unit.T
        rows = np.arange(len(block))
        block[rows, start + rows] = -np.inf  # never a trace's own neighbour
        top = np.argpartition(-block, k - 1, axis=1)[:, :k]
        sims = np.take_along_axis(block, top, axis=1)
        order = np.argsort(-sims, axis=1, kind="stable")
        neighbours[start : start + len(block)] = np.take_along_axis(top, order, axis=1)
        similarities[start : start + len(block)] = np.take_along_axis(sims, order, axis=1)
    return neighbours, similarities


def find_suspects(
    texts: Sequence[str],
    labels: Sequence[str],
    vectors: np.ndarray,
    *,
    ids: Sequence[int] | None = None,
    limit: int | None = 20,
    min_score: float = MIN_SCORE,
    folds: int = FOLDS,
    seed: int = 0,
) -> Suspects:
    """Traces ranked by how strongly the cross-fitted evidence contradicts their teacher label."""
    _check_options(limit, min_score)
    evidence = cross_fitted_evidence(texts, labels, vectors, folds=folds, seed=seed)
    return ranked_suspects(evidence, texts, labels, ids, limit=limit, min_score=min_score, folds=folds)


def _check_options(limit: int | None, min_score: float) -> None:
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise SuspectsError(f"limit must be a non-negative integer or None, got {limit!r}")
    if not isinstance(min_score, (int, float)) or not 0.0 < min_score <= 1.0:
        raise SuspectsError(f"min_score must be a number in (0, 1], got {min_score!r}")


def ranked_suspects(
    evidence: Evidence, texts: Sequence[str], labels: Sequence[str], ids: Sequence[int] | None, *,
    limit: int | None, min_score: float, folds: int = FOLDS,
) -> Suspects:
    """The suspects `evidence` (of these traces, in this order) points to, ranked by score."""
    ids = list(ids) if ids is not None else list(range(len(texts)))
    score, suggested = evidence.scores()
    ranked = [int(i) for i in np.argsort(-score, kind="stable") if score[i] >= min_score]
    names = evidence.labels
    listed = [
        Suspect(
            id=int(ids[i]), input=texts[i], teacher_label=labels[i], suggested_label=names[suggested[i]],
            score=round(float(score[i]), 4),
            teacher_probability=round(float(evidence.probs[i, evidence.y[i]]), 4),
            suggested_probability=round(float(evidence.probs[i, suggested[i]]), 4),
            neighbours=[
                {"id": int(ids[j]), "input": texts[j], "label": labels[j], "similarity": round(float(s), 4)}
                for j, s in zip(evidence.neighbours[i, :SHOWN_NEIGHBOURS], evidence.similarities[i, :SHOWN_NEIGHBOURS])
            ],
        )
        for i in ranked[:limit]
    ]
    pairs = [(labels[i], names[suggested[i]]) for i in ranked]
    return Suspects(
        n_traces=len(texts), min_score=min_score, n_suspects=len(ranked), suspects=listed,
        per_label=_per_label(labels, pairs), confused_pairs=_confused_pairs(pairs),
        method={"folds": folds, "neighbours": evidence.neighbours.shape[1],
                "models": ["logistic regression (embedding)", "logistic regression (embedding + word TF-IDF)",
                           f"{evidence.neighbours.shape[1]}-nearest-neighbour label vote"],
                "cleaning_rounds": CLEANING_ROUNDS},
    )


def teacher_suspects(
    teacher: tuple[list[str], list[str], list[int]], embed: EmbedFn, *, limit: int | None = 20,
    min_score: float = MIN_SCORE, seed: int = 0, cache: EvidenceCache | None = None,
) -> Suspects:
    """`find_suspects` on a task's teacher traces as `TraceStore.teacher_examples` returns them (a random
    sample of MAX_SCORED beyond that many), with the evidence kept in and reused from `cache` if given."""
    _check_options(limit, min_score)
    texts, labels, ids = teacher
    total = len(texts)
    if total > MAX_SCORED:
        kept = np.sort(np.random.default_rng(seed).choice(total, MAX_SCORED, replace=False))
        texts, labels, ids = [texts[i] for i in kept], [labels[i] for i in kept], [ids[i] for i in kept]
    evidence, info = _evidence(texts, labels, ids, embed, seed, cache)
    found = ranked_suspects(evidence, texts, labels, ids, limit=limit, min_score=min_score)
    found.sampled_from = total if total > MAX_SCORED else None
    found.evidence = info
    return found


def _evidence(
    texts: list[str], labels: list[str], ids: list[int], embed: EmbedFn, seed: int, cache: EvidenceCache | None,
) -> tuple[Evidence, dict]:
    """Cross-fitted evidence of these traces, read from `cache` when it holds them, else computed (and kept)."""
    key = None
    if cache is not None:
        settings = {"folds": FOLDS, "neighbours": NEIGHBOURS, "embedding_c": EMBEDDING_C, "tfidf_c": TFIDF_C,
                    "min_score": MIN_SCORE, "cleaning_rounds": CLEANING_ROUNDS, "seed": seed}
        key = evidence_key(identify(embed), texts, labels, ids, settings)
        stored = None if cache.refit else load(cache.folder, key)
        if stored is not None:
            return Evidence(**_from_arrays(stored.arrays)), {"reused": True, "computed_at": stored.computed_at}
        if cache.reuse_only:
            raise SuspectsError(f"no cross-fitted evidence is stored for these {len(texts):,} teacher traces yet "
                                "(`tracer suspects` computes and keeps it)")
    vectors = embed_checked(embed, texts) if texts else np.zeros((0, 0), dtype=np.float32)
    evidence = cross_fitted_evidence(texts, labels, vectors, seed=seed)
    if cache is None or key is None:
        return evidence, {}
    save(cache.folder, key, {"labels": np.array(evidence.labels), "y": evidence.y, "probs": evidence.probs,
                             "neighbours": evidence.neighbours, "similarities": evidence.similarities})
    return evidence, {"reused": False, "computed_at": time.time()}


def _from_arrays(arrays: dict[str, np.ndarray]) -> dict:
    return arrays | {"labels": [str(label) for label in arrays["labels"]]}


def _per_label(labels: Sequence[str], pairs: list[tuple[str, str]]) -> list[dict]:
    """Per label: traces, suspects the teacher gave it, suspects whose evidence points to it."""
    traces = Counter(labels)
    given = Counter(t for t, _ in pairs)
    pointed = Counter(s for _, s in pairs)
    rows = [
        {"label": label, "traces": traces[label], "suspects": given[label], "pointed_to": pointed[label],
         "suspect_share": round(given[label] / traces[label], 4)}
        for label in traces
    ]
    return sorted(rows, key=lambda r: (-r["suspects"], -r["pointed_to"], r["label"]))


def _confused_pairs(pairs: list[tuple[str, str]], top: int = TOP_PAIRS) -> list[dict]:
    """The label pairs most suspects fall between (either direction), as messages a person can act on."""
    counts = Counter(tuple(sorted(pair)) for pair in pairs)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return [{"labels": list(pair), "suspects": n, "message": f"{pair[0]} vs {pair[1]}: {n} suspect{'s' if n != 1 else ''}"}
            for pair, n in ranked]
