"""The training cap `max_train`: a uniform sample of the training side trains, calibration is never sampled, the certificate says so."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from tracer_core.cli.commands import main as cli
from tracer_core.errors import EmbedderError
from tracer_core.learning.embedder import EMBED_STEP, embed_in_steps
from tracer_core.learning.fit import DEFAULT_MAX_TRAIN, fit_policy
from tracer_core.learning.split import CAL_FRACTION, Split, calibration_side
from tracer_core.report.html import summary_html
from tracer_core.report.summary import summary_facts
from tracer_core.serving.tracer import Tracer
from tracer_core.settings import SettingsError
from tracer_core.storage.store import TraceStore
from tracer_core.storage.trace import make_trace
from tracer_litellm.settings import TracerSettings

CAP = 600


@pytest.fixture(scope="module")
def many(banking_subset):
    """2,400 traces: the 800 Banking77 rows three times, each with a distinct suffix."""
    texts = [f"{t} (ref {i})" for i, (t, _) in enumerate(banking_subset * 3)]
    labels = [label for _, label in banking_subset * 3]
    return texts, labels, list(range(1, len(texts) + 1))


def test_the_cap_samples_training_and_leaves_calibration_alone():
    ids = np.arange(1, 5001)
    pool = ids % 4 != 0
    split = Split.persistent(ids, pool, salt="t", seed=3, max_train=CAP)
    free = Split.persistent(ids, pool, salt="t", seed=3)
    train, val, cal = set(split.train), set(split.val), set(split.cal)
    assert len(train) + len(val) == CAP and len(val) == round(CAP * 0.15 / 0.70)
    assert not (train & val) and not (cal & (train | val))
    assert np.array_equal(split.cal, free.cal)  # traces the cap leaves out do not calibrate: they are unused
    assert split.n_available == 5000 - len(cal) == len(free.train) + len(free.val)


def test_without_the_cap_biting_the_split_is_unchanged():
    ids, pool = np.arange(1, 1001), np.ones(1000, dtype=bool)
    capped, free = Split.persistent(ids, pool, salt="t", seed=0, max_train=900), Split.persistent(ids, pool, salt="t", seed=0)
    for a, b in ((capped.train, free.train), (capped.val, free.val), (capped.cal, free.cal)):
        assert np.array_equal(a, b)


def test_calibration_rows_are_a_uniform_sample_of_the_pool():
    """Whether a pool row calibrates may not depend on where it is: over 400 salts every row calibrates
    about CAL_FRACTION of the time (a label- or position-dependent sample would not)."""
    n, salts = 600, 400
    ids, pool = np.arange(1, n + 1), np.ones(n, dtype=bool)
    counts = np.zeros(n)
    for salt in range(salts):
        counts[Split.persistent(ids, pool, salt=str(salt), seed=0, max_train=100).cal] += 1
    spread = 4 * np.sqrt(CAL_FRACTION * (1 - CAL_FRACTION) / salts)
    assert np.all(np.abs(counts / salts - CAL_FRACTION) < spread), (counts.min(), counts.max())


def test_a_capped_fit_reports_what_it_used(many, fake_embedder):
    texts, labels, ids = many
    policy, cert = fit_policy(texts, labels, alpha=0.9, delta=0.05, embed=fake_embedder, ids=ids, max_train=CAP)
    n_cal = int(calibration_side(np.array(ids), "\x00").sum())
    assert cert.deployed, cert.reason
    assert cert.n_train + cert.n_validation == CAP and cert.max_train == CAP
    assert cert.n_train_available == len(texts) - n_cal
    assert cert.n_calibration == n_cal == len(set(cert.calibration_ids))
    assert sum(row["n_train"] for row in cert.per_label.values()) == CAP
    assert (f"trained on 600 of {len(texts) - n_cal:,} available traces (max_train 600); calibrated on {n_cal:,}"
            in cert.evidence())


def test_an_uncapped_fit_says_it_trained_on_everything_available(many, fake_embedder):
    texts, labels, ids = many
    _, cert = fit_policy(texts[:800], labels[:800], alpha=0.9, delta=0.05, embed=fake_embedder, ids=ids[:800],
                         max_train=None)
    n_cal = cert.n_calibration
    assert cert.max_train is None and cert.n_train + cert.n_validation == cert.n_train_available == 800 - n_cal
    assert cert.evidence() == (f"trained on {800 - n_cal} of {800 - n_cal} available traces; "
                               f"calibrated on {n_cal} (of 800 that may calibrate)")


@pytest.mark.parametrize("bad", [0, 99, 2.5, "1000", True])
def test_a_bad_cap_is_a_clear_settings_error(db_path, bad):
    with pytest.raises(SettingsError, match=r"max_train must be an integer in \[100, inf\), got"):
        Tracer("t", db_path, max_train=bad)


def test_the_cap_reaches_the_stored_certificate_and_status(many, db_path, fake_embedder):
    texts, labels, _ = many
    with TraceStore(db_path) as store:
        store.append_many(make_trace("scale", t, y) for t, y in zip(texts, labels))
    with Tracer("scale", db_path, alpha=0.9, embedder=fake_embedder, auto_refit=False, max_train=CAP) as tracer:
        cert = tracer.fit()
        assert tracer.status()["fit_evidence"] == cert.evidence()
    with TraceStore(db_path) as store:
        stored = store.latest_policy("scale")["certificate"]
    n_cal = cert.n_calibration
    assert (stored["n_train"] + stored["n_validation"], stored["n_calibration"], stored["max_train"]) == (CAP, n_cal, CAP)
    assert stored["n_train_available"] == cert.n_train_available == 2400 - n_cal
    shown = CliRunner().invoke(cli, ["status", "--db", str(db_path), "--task", "scale"])
    assert shown.exit_code == 0, shown.output
    assert f"600 of {2400 - n_cal:,} available traces (max_train 600)" in shown.output
    assert f"{n_cal:,} (of 2,400 that may calibrate)" in shown.output
    with TraceStore(db_path) as store:
        html = summary_html(summary_facts(store, "scale"))
    assert f">600 of {2400 - n_cal:,} available traces (max_train 600)</td>" in html


def test_the_proxy_reads_the_cap_from_its_environment():
    assert TracerSettings.from_env({"TRACER_MAX_TRAIN": "20000"}).max_train == 20_000
    assert TracerSettings.from_env({}).max_train == DEFAULT_MAX_TRAIN
    assert TracerSettings(max_train=None).max_train is None
    with pytest.raises(SettingsError, match=r"max_train must be an integer in \[100, inf\), got 50"):
        TracerSettings.from_env({"TRACER_MAX_TRAIN": "50"})


def test_an_embedder_that_changes_dimension_between_chunks_is_a_clear_error():
    calls = iter([8, 8, 16])

    def shifting(texts: list[str]) -> np.ndarray:
        return np.ones((len(texts), next(calls)), dtype=np.float32)

    with pytest.raises(EmbedderError, match="returned 16 dimensions after 8"):
        embed_in_steps(shifting, ["a text"] * (2 * EMBED_STEP + 1))
