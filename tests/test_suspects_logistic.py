"""The suspects' own logistic fit and fold TF-IDF give what `fit_logistic` and `Tfidf.fit` give (old cross-fit);
worker processes and warm starts change the speed, not the evidence."""

from __future__ import annotations

import numpy as np
import pytest

from tests.test_suspects import ngram_embedder, synthetic_traces
from tracer_core.learning import suspects
from tracer_core.learning.features import Tfidf, join_features, predict_proba
from tracer_core.learning.surrogate import LinearSurrogate, fit_logistic
from tracer_core.learning.suspects import EMBEDDING_C, TFIDF_C, _folds, cleaned, cross_fitted_evidence
from tracer_core.learning.suspects_logistic import fit_blocks
from tracer_core.learning.suspects_tfidf import fold_terms, term_counts, weighted


def _data(n_labels: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    texts, labels, _ = synthetic_traces()
    names = sorted(set(labels))[:n_labels]
    kept = [i for i, label in enumerate(labels) if label in names]
    return [texts[i] for i in kept], np.array([names.index(labels[i]) for i in kept]), ngram_embedder(texts)[kept]


@pytest.mark.parametrize(("n_labels", "settings", "within"), [
    (4, {"tol": 1e-4, "memory": 10}, 0.002),  # scikit-learn's solver settings: the same fit
    (2, {"tol": 1e-4, "memory": 10}, 0.002),
    (4, {}, 0.02),  # the suspects' looser stop and shorter memory
])
def test_out_of_fold_probabilities_match_the_scikit_learn_fit(n_labels: int, settings: dict, within: float) -> None:
    texts, y, vectors = _data(n_labels)
    old_embedding, new_embedding = np.zeros((len(y), n_labels)), np.zeros((len(y), n_labels))
    old_joined, new_joined = np.zeros((len(y), n_labels)), np.zeros((len(y), n_labels))
    counts = term_counts(texts)
    for train, test in _folds(y, 5, 0):
        train_texts, test_texts = [texts[i] for i in train], [texts[i] for i in test]
        old_embedding[test] = fit_logistic(vectors[train], y[train], n_labels, c=EMBEDDING_C).predict_proba(vectors[test])
        model = fit_blocks(vectors[train], None, y[train], n_labels, EMBEDDING_C, **settings)
        new_embedding[test] = model.predict_proba(vectors[test])
        tfidf = Tfidf.fit(train_texts)
        model = fit_logistic(join_features(vectors[train], train_texts, tfidf), y[train], n_labels, c=TFIDF_C)
        old_joined[test] = predict_proba(model, vectors[test], test_texts, tfidf)
        columns, idf = fold_terms(counts, train)
        model = fit_blocks(vectors[train], weighted(counts, train, columns, idf), y[train], n_labels, TFIDF_C, **settings)
        new_joined[test] = model.predict_proba(vectors[test], weighted(counts, test, columns, idf))
    assert np.abs(new_embedding - old_embedding).max() < within
    assert np.abs(new_joined - old_joined).max() < within


def test_fold_tfidf_equals_tfidf_fitted_on_the_fold() -> None:
    texts, _, _ = _data(4)
    train, test = np.arange(0, len(texts), 2), np.arange(1, len(texts), 2)
    reference = Tfidf.fit([texts[i] for i in train])
    counts = term_counts(texts)
    columns, idf = fold_terms(counts, train)
    assert len(columns) == len(reference.terms) and np.allclose(idf, reference.idf)
    for rows in (train, test):
        expected = reference.transform([texts[i] for i in rows]).toarray()
        assert np.allclose(weighted(counts, rows, columns, idf).toarray(), expected, atol=1e-6)


def test_a_start_without_a_label_starts_that_label_from_zero() -> None:
    texts, y, vectors = _data(4)
    start = LinearSurrogate(np.zeros((4, vectors.shape[1]), np.float32), np.array([0, 0, 0, -1e4], np.float32))
    fresh = fit_blocks(vectors, None, y, 4, EMBEDDING_C)
    warm = fit_blocks(vectors, None, y, 4, EMBEDDING_C, start)
    assert np.abs(warm.predict_proba(vectors) - fresh.predict_proba(vectors)).max() < 0.01


def test_folds_on_worker_processes_give_the_same_evidence(monkeypatch: pytest.MonkeyPatch) -> None:
    texts, labels, _ = synthetic_traces()
    vectors = ngram_embedder(texts)
    alone = cross_fitted_evidence(texts, labels, vectors)
    monkeypatch.setattr(suspects, "PARALLEL_MIN", 0)
    workers = cross_fitted_evidence(texts, labels, vectors)
    assert np.allclose(workers.probs, alone.probs, atol=1e-6)


def test_the_cleaning_round_started_from_the_first_rounds_models_finds_the_same_optimum() -> None:
    texts, labels, _ = synthetic_traces()
    vectors = ngram_embedder(texts)
    before = cross_fitted_evidence(texts, labels, vectors, cleaning_rounds=0)
    assert before.fold_models is not None and len(before.fold_models) == suspects.FOLDS
    warm = cleaned(before, texts, vectors)
    before.fold_models = None
    cold = cleaned(before, texts, vectors)
    assert np.abs(warm.probs - cold.probs).max() < 0.02
