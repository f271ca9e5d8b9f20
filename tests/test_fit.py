"""fit_policy on real Banking77 traces and the real MiniLM model: the calibration pool."""

from __future__ import annotations

import numpy as np
import pytest

from tracer_core import certificate as codes
from tracer_core.errors import InvalidTraceError
from tracer_core.fit import Split, fit_policy
from tracer_core.policy import Policy


@pytest.fixture(scope="module")
def traces(banking_subset):
    texts = [t for t, _ in banking_subset]
    labels = [label for _, label in banking_subset]
    return texts, labels, list(range(1, len(texts) + 1))


@pytest.fixture(scope="module")
def pool_fit(traces, fake_embedder):
    """A fit where only every third trace may serve as calibration evidence."""
    texts, labels, ids = traces
    pool = np.arange(len(texts)) % 3 == 0
    policy, cert = fit_policy(texts, labels, alpha=0.9, delta=0.05, embed=fake_embedder, ids=ids, calibration_pool=pool)
    return pool, policy, cert


def test_calibration_traces_come_only_from_the_pool(traces, pool_fit):
    _, _, ids = traces
    pool, _, cert = pool_fit
    pool_ids = {i for i, p in zip(ids, pool) if p}
    assert cert.deployed, cert.reason
    assert cert.n_pool == len(pool_ids) == 267
    assert cert.n_calibration == len(cert.calibration_ids) == round(0.3 * len(ids)) == 240
    assert set(cert.calibration_ids) <= pool_ids
    assert cert.n_train + cert.n_validation + cert.n_calibration == cert.n_traces


def test_a_pool_smaller_than_the_calibration_share_is_used_whole():
    pool = np.zeros(1000, dtype=bool)
    pool[::10] = True
    split = Split.draw(1000, seed=0, pool=pool)
    assert sorted(split.cal) == sorted(np.nonzero(pool)[0]) and split.n_pool == 100
    assert not set(split.cal) & (set(split.train) | set(split.val))
    assert len(split.train) + len(split.val) + len(split.cal) == 1000


def test_without_a_pool_every_trace_may_calibrate(traces, fake_embedder):
    texts, labels, ids = traces
    everyone = Split.draw(len(texts), seed=0, pool=np.ones(len(texts), dtype=bool))
    assert len(everyone.cal) == 240 and everyone.n_pool == len(texts)
    _, cert = fit_policy(texts, labels, alpha=0.9, delta=0.05, embed=fake_embedder, ids=ids)
    assert cert.n_pool == len(texts)
    assert sorted(cert.calibration_ids) == sorted(ids[i] for i in everyone.cal)


def test_too_small_a_pool_is_refused_with_its_reason(traces, fake_embedder):
    texts, labels, ids = traces
    pool = np.zeros(len(texts), dtype=bool)
    pool[:40] = True
    policy, cert = fit_policy(texts, labels, alpha=0.95, delta=0.05, embed=fake_embedder, ids=ids, calibration_pool=pool)
    assert policy is None and cert.reason_code == codes.TOO_FEW_TRACES
    assert "40 of 800 traces may serve as calibration evidence" in cert.reason and cert.n_pool == 40


def test_a_pool_of_the_wrong_length_is_a_clear_error(traces, fake_embedder):
    texts, labels, _ = traces
    with pytest.raises(InvalidTraceError, match="calibration_pool has 3 entries for 800 traces"):
        fit_policy(texts, labels, alpha=0.9, delta=0.05, embed=fake_embedder, calibration_pool=[True, False, True])


def test_the_fitted_policy_survives_storage(traces, pool_fit, fake_embedder):
    texts, _, _ = traces
    _, policy, cert = pool_fit
    vectors = fake_embedder(texts[:50])
    decisions = policy.decide(texts[:50], vectors)
    loaded = Policy.from_bytes(policy.to_bytes(), cert)
    assert [(d.label, d.handled, round(d.score, 5)) for d in loaded.decide(texts[:50], vectors)] == [
        (d.label, d.handled, round(d.score, 5)) for d in decisions
    ]
    assert not policy.excluded  # no label is withdrawn on its own evidence
