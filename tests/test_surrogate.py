"""Surrogates and features against scikit-learn: the numpy-only forms must predict what sklearn predicts.

No model is loaded: features are synthetic Gaussian blobs or the Banking77 subset's texts.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier

from tracer_core.errors import PolicyError
from tracer_core.learning.certificate import Certificate
from tracer_core.learning.features import TFIDF_PARAMS, Tfidf, join_features
from tracer_core.learning.ood import MahalanobisOOD
from tracer_core.learning.policy import Policy
from tracer_core.learning.surrogate import EnsembleSurrogate, LinearSurrogate, MLPSurrogate, fit_ensemble, fit_logistic, fit_mlp


def blobs(n_labels: int, per_label: int = 40, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping Gaussian clusters, one per label, rows L2-normalised like sentence embeddings."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_labels, dim))
    y = np.repeat(np.arange(n_labels), per_label)
    x = centres[y] + rng.normal(scale=1.0, size=(len(y), dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), y


@pytest.mark.parametrize("present", [(0, 1), (1, 3)])
def test_two_label_logistic_matches_sklearn(present):
    """Binary sklearn keeps one weight row; the two-row softmax form must give the same probabilities,
    also when the two labels are not the first two of the task's label list."""
    x, y01 = blobs(2)
    y = np.asarray(present)[y01]
    surrogate = fit_logistic(x, y, n_labels=4)
    reference = LogisticRegression(C=20.0, max_iter=200, random_state=0).fit(x, y)
    proba = surrogate.predict_proba(x)
    assert proba.shape == (len(x), 4)
    np.testing.assert_allclose(proba[:, list(present)], reference.predict_proba(x), atol=1e-5)
    absent = [k for k in range(4) if k not in present]
    assert proba[:, absent].max() < 1e-6  # labels with no training row are never predicted


@pytest.mark.parametrize("present", [(0, 1), (2, 0)])
def test_two_label_mlp_matches_sklearn(present):
    """A binary MLP has one logistic output z; softmax over [0, z] must equal sklearn's probabilities."""
    x, y01 = blobs(2)
    y = np.asarray(present)[y01]
    surrogate = fit_mlp(x, y, n_labels=3, hidden=32)
    reference = MLPClassifier(hidden_layer_sizes=(32,), alpha=1e-3, max_iter=30, batch_size=min(128, len(y)),
                              learning_rate_init=2e-3, random_state=0)
    with pytest.warns(Warning):  # the fixed epoch budget does not converge; sklearn says so here
        reference.fit(x, y)
    proba = surrogate.predict_proba(x)
    order = np.argsort(reference.classes_)
    np.testing.assert_allclose(proba[:, sorted(present)], reference.predict_proba(x)[:, order], atol=1e-5)
    assert np.allclose(proba.sum(axis=1), 1.0)


def test_multi_label_logistic_and_mlp_match_sklearn():
    x, y = blobs(5)
    logistic = LogisticRegression(C=20.0, max_iter=200, random_state=0).fit(x, y)
    np.testing.assert_allclose(fit_logistic(x, y, n_labels=5).predict_proba(x), logistic.predict_proba(x), atol=1e-5)
    mlp = MLPClassifier(hidden_layer_sizes=(32,), alpha=1e-3, max_iter=30, batch_size=min(128, len(y)),
                        learning_rate_init=2e-3, random_state=0)
    with pytest.warns(Warning):
        mlp.fit(x, y)
    np.testing.assert_allclose(fit_mlp(x, y, n_labels=5, hidden=32).predict_proba(x), mlp.predict_proba(x), atol=1e-5)


def _policy(surrogate, labels: list[str], x: np.ndarray, y: np.ndarray, tfidf: Tfidf | None = None) -> Policy:
    cert = Certificate(task="t", fingerprint="", deployed=True, alpha=0.9, delta=0.05, reason="test", reason_code="deployed",
                       n_traces=len(y), model=surrogate.kind)
    ood = MahalanobisOOD.fit(x, y)
    return Policy(  # the farthest 10% of x are out of distribution
        labels=labels, surrogate=surrogate, tfidf=tfidf, ood=ood, ood_threshold=float(np.quantile(ood.distance(x), 0.9)),
        threshold=0.3, excluded={labels[-1]}, unseen_vectors=x[:2], unseen_labels=["rare", "rare"], unseen_threshold=0.999,
        certificate=cert, version=3,
    )


def test_mlp_policy_round_trip_decides_the_same():
    x, y = blobs(4)
    labels = ["a", "b", "c", "d"]
    policy = _policy(fit_mlp(x, y, n_labels=4, hidden=32), labels, x, y)
    texts = [f"text {i}" for i in range(len(x))]
    reloaded = Policy.from_bytes(policy.to_bytes(), policy.certificate, version=3)
    assert isinstance(reloaded.surrogate, MLPSurrogate) and len(reloaded.surrogate.weights) == 2
    np.testing.assert_array_equal(reloaded.predict_proba(texts, x), policy.predict_proba(texts, x))
    before, after = policy.decide(texts, x), reloaded.decide(texts, x)
    assert [(d.label, d.handled, d.reason, d.policy_version) for d in after] == [
        (d.label, d.handled, d.reason, d.policy_version) for d in before
    ]
    # the fixture policy exercises more than one branch of decide()
    assert {d.reason for d in before} >= {"handled", "label_not_certified", "unseen_label", "out_of_distribution"}


def test_tfidf_policy_round_trip_decides_the_same(banking_subset):
    texts = [t for t, _ in banking_subset[:200]]
    names = sorted({lab for _, lab in banking_subset[:200]})
    y = np.asarray([names.index(lab) for _, lab in banking_subset[:200]])
    x, _ = blobs(1, per_label=len(texts))
    tfidf = Tfidf.fit(texts)
    surrogate = fit_logistic(join_features(x, texts, tfidf), y, n_labels=len(names))
    policy = _policy(surrogate, names, x, y, tfidf)
    reloaded = Policy.from_bytes(policy.to_bytes(), policy.certificate, version=3)
    assert isinstance(reloaded.surrogate, LinearSurrogate) and reloaded.tfidf is not None
    assert reloaded.tfidf.terms == tfidf.terms
    np.testing.assert_allclose(reloaded.predict_proba(texts, x), policy.predict_proba(texts, x), atol=1e-6)


def _ensemble_policy(banking_subset) -> tuple[Policy, list[str], np.ndarray]:
    texts = [t for t, _ in banking_subset[:200]]
    names = sorted({lab for _, lab in banking_subset[:200]})
    y = np.asarray([names.index(lab) for _, lab in banking_subset[:200]])
    x, _ = blobs(1, per_label=len(texts))
    tfidf = Tfidf.fit(texts)
    surrogate = fit_ensemble(x, join_features(x, texts, tfidf), y, n_labels=len(names))
    return _policy(surrogate, names, x, y, tfidf), texts, x


def test_ensemble_averages_its_members_and_round_trips(banking_subset):
    policy, texts, x = _ensemble_policy(banking_subset)
    ensemble = policy.surrogate
    assert isinstance(ensemble, EnsembleSurrogate)
    assert [m.kind for m in ensemble.members] == ["logistic", "logistic", "mlp"] and ensemble.sparse == [False, True, False]
    extra = policy.tfidf.transform(texts)
    members = [m.predict_proba(x, extra if s else None) for m, s in zip(ensemble.members, ensemble.sparse)]
    np.testing.assert_allclose(policy.predict_proba(texts, x), np.mean(members, axis=0), atol=1e-6)
    assert not np.allclose(members[0], members[1], atol=1e-3)  # the TF-IDF member does read its columns
    reloaded = Policy.from_bytes(policy.to_bytes(), policy.certificate, version=3)
    assert isinstance(reloaded.surrogate, EnsembleSurrogate) and reloaded.surrogate.sparse == [False, True, False]
    np.testing.assert_allclose(reloaded.predict_proba(texts, x), policy.predict_proba(texts, x), atol=1e-6)
    assert [d.reason for d in reloaded.decide(texts, x)] == [d.reason for d in policy.decide(texts, x)]


@pytest.mark.parametrize("damage, problem", [
    (lambda e: setattr(e, "sparse", [False, True, True]), "MLP surrogate with TF-IDF"),
    (lambda e: setattr(e, "sparse", [False, True]), "flag count"),
    (lambda e: setattr(e.members[1], "weights", e.members[1].weights[:, :10]), "shape"),
    (lambda e: e.members[2].biases[0].fill(np.nan), "NaN"),
])
def test_a_damaged_ensemble_policy_is_refused_on_load(banking_subset, damage, problem):
    policy, _, _ = _ensemble_policy(banking_subset)
    damage(policy.surrogate)
    with pytest.raises(PolicyError, match=problem):
        Policy.from_bytes(policy.to_bytes(), policy.certificate, version=3)


def test_tfidf_transform_equals_scikit_learn(banking_subset):
    train = [t for t, _ in banking_subset]
    # unseen words, repeated words, case, punctuation, and a text with no known term at all
    queries = train[:50] + ["CARD card card arrived?!", "zzz qqq", "", "my card my card my card has not arrived"]
    reference = TfidfVectorizer(min_df=2, **TFIDF_PARAMS).fit(train)
    ours = Tfidf.fit(train, min_df=2)
    assert ours.terms == reference.get_feature_names_out().tolist()
    expected = reference.transform(queries).toarray()
    got = ours.transform(queries).toarray()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert not got[-3].any() and not got[-2].any()  # no known term: an all-zero row, not NaN
