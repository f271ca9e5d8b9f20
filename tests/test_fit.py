"""fit_policy on real Banking77 traces (fake embedder): the calibration pool and the split."""

from __future__ import annotations

import numpy as np
import pytest

from tracer_core.errors import InvalidTraceError
from tracer_core.learning import certificate as codes
from tracer_core.learning import split as split_module
from tracer_core.learning.fit import fit_policy
from tracer_core.learning.policy import Policy
from tracer_core.learning.split import Split, calibration_side


@pytest.fixture(scope="module")
def traces(banking_subset):
    texts = [t for t, _ in banking_subset]
    labels = [label for _, label in banking_subset]
    return texts, labels, list(range(1, len(texts) + 1))


@pytest.fixture(scope="module")
def pool_fit(traces, fake_embedder):
    """A fit where a third of the traces may not serve as calibration evidence."""
    texts, labels, ids = traces
    pool = np.arange(len(texts)) % 3 != 0
    policy, cert = fit_policy(texts, labels, alpha=0.85, delta=0.05, embed=fake_embedder, ids=ids, calibration_pool=pool)
    return pool, policy, cert


def test_calibration_traces_are_the_calibration_side_of_the_pool(traces, pool_fit):
    _, _, ids = traces
    pool, _, cert = pool_fit
    pool_ids = np.array([i for i, p in zip(ids, pool) if p])
    assert cert.deployed, cert.reason
    assert cert.n_pool == len(pool_ids) == 533
    side = pool_ids[calibration_side(pool_ids, "\x00")]  # the default salt: task and fingerprint, both ""
    assert sorted(cert.calibration_ids) == sorted(side.tolist()) and cert.n_calibration == len(side)
    assert 0.25 * len(pool_ids) < cert.n_calibration < 0.35 * len(pool_ids)
    assert cert.calibration_id_range == [int(side.min()), int(side.max())]
    assert cert.n_train + cert.n_validation + cert.n_calibration == cert.n_traces


def test_the_split_keeps_every_part_apart_and_trains_on_the_rest_of_the_pool():
    ids = np.arange(1, 1001)
    pool = ids % 10 == 0
    split = Split.persistent(ids, pool, salt="t", seed=0)
    assert set(split.cal) <= set(np.nonzero(pool)[0]) and split.n_pool == 100
    assert not set(split.cal) & (set(split.train) | set(split.val))
    assert len(split.train) + len(split.val) + len(split.cal) == 1000 == split.n_available + len(split.cal)
    assert len(split.val) == round(split.n_available * 0.15 / 0.70)


def test_without_a_pool_every_trace_may_calibrate(traces, fake_embedder):
    texts, labels, ids = traces
    _, cert = fit_policy(texts, labels, alpha=0.9, delta=0.05, embed=fake_embedder, ids=ids, salt="s")
    assert cert.n_pool == len(texts)
    assert sorted(cert.calibration_ids) == [i for i in ids if calibration_side(np.array([i]), "s")[0]]


def test_traces_recorded_as_audits_calibrate_at_the_audits_fraction(traces, fake_embedder, monkeypatch):
    monkeypatch.setattr(split_module, "AUDIT_CAL_FRACTION", 0.8)
    texts, labels, ids = traces
    audits = np.arange(len(texts)) >= 400
    _, cert = fit_policy(texts, labels, alpha=0.9, delta=0.05, embed=fake_embedder, ids=ids, salt="s", audits=audits)
    side = calibration_side(np.array(ids), "s", audits)
    assert sorted(cert.calibration_ids) == [i for i, cal in zip(ids, side) if cal]
    assert sum(side[400:]) > 2 * sum(side[:400])


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
