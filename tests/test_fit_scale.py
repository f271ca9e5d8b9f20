"""The training cap `max_train`: a uniform sample trains, every other pool trace calibrates, the certificate says so."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from tracer_core.cli import main as cli
from tracer_core.errors import EmbedderError
from tracer_core.fit import DEFAULT_MAX_TRAIN, Split, fit_policy
from tracer_core.report.html import summary_html
from tracer_core.report.summary import summary_facts
from tracer_core.settings import SettingsError
from tracer_core.shutdown import EMBED_STEP, embed_in_steps
from tracer_core.store import TraceStore
from tracer_core.trace import make_trace
from tracer_core.tracer import Tracer
from tracer_litellm.settings import TracerSettings

CAP = 600


@pytest.fixture(scope="module")
def many(banking_subset):
    """2,400 traces: the 800 Banking77 rows three times, each with a distinct suffix."""
    texts = [f"{t} (ref {i})" for i, (t, _) in enumerate(banking_subset * 3)]
    labels = [label for _, label in banking_subset * 3]
    return texts, labels, list(range(1, len(texts) + 1))


def test_the_cap_samples_training_and_the_rest_of_the_pool_calibrates():
    pool = np.arange(5000) % 4 != 0
    split = Split.draw(5000, seed=3, pool=pool, max_train=CAP)
    train, val, cal = set(split.train), set(split.val), set(split.cal)
    assert len(train) + len(val) == CAP and len(val) == round(CAP * 0.15 / 0.70)
    assert not (train & val) and not (cal & (train | val))
    assert cal == set(np.nonzero(pool)[0]) - train - val  # no pool trace is left out of the gate
    assert split.n_available == 5000 - round(0.3 * 5000)


def test_without_the_cap_biting_the_split_is_unchanged():
    pool = np.ones(1000, dtype=bool)
    capped, free = Split.draw(1000, seed=0, pool=pool, max_train=700), Split.draw(1000, seed=0, pool=pool)
    for a, b in ((capped.train, free.train), (capped.val, free.val), (capped.cal, free.cal)):
        assert np.array_equal(a, b)


def test_calibration_rows_are_a_uniform_sample_of_the_pool():
    """Whether a pool row calibrates may not depend on where it is: over 400 seeds every row calibrates
    about as often (a label-dependent sample would make some rows calibrate far more often)."""
    n, seeds = 600, 400
    pool = np.ones(n, dtype=bool)
    counts = np.zeros(n)
    for seed in range(seeds):
        counts[Split.draw(n, seed=seed, pool=pool, max_train=100).cal] += 1
    share = (n - 100) / n
    spread = 4 * np.sqrt(share * (1 - share) / seeds)
    assert np.all(np.abs(counts / seeds - share) < spread), (counts.min(), counts.max())


def test_a_capped_fit_reports_what_it_used(many, fake_embedder):
    texts, labels, ids = many
    policy, cert = fit_policy(texts, labels, alpha=0.9, delta=0.05, embed=fake_embedder, ids=ids, max_train=CAP)
    assert cert.deployed, cert.reason
    assert cert.n_train + cert.n_validation == CAP and cert.max_train == CAP
    assert cert.n_train_available == len(texts) - round(0.3 * len(texts))
    assert cert.n_calibration == len(texts) - CAP == len(set(cert.calibration_ids))
    assert sum(row["n_train"] for row in cert.per_label.values()) == CAP
    assert "trained on 600 of 1,680 available traces (max_train 600); calibrated on 1,800" in cert.evidence()


def test_an_uncapped_fit_says_it_trained_on_everything_available(many, fake_embedder):
    texts, labels, ids = many
    _, cert = fit_policy(texts[:800], labels[:800], alpha=0.9, delta=0.05, embed=fake_embedder, ids=ids[:800],
                         max_train=None)
    assert cert.max_train is None and cert.n_train + cert.n_validation == cert.n_train_available == 560
    assert cert.evidence() == "trained on 560 of 560 available traces; calibrated on 240 (of 800 that may calibrate)"


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
    assert (stored["n_train"] + stored["n_validation"], stored["n_calibration"], stored["max_train"]) == (CAP, 1800, CAP)
    assert stored["n_train_available"] == cert.n_train_available == 1680
    shown = CliRunner().invoke(cli, ["status", "--db", str(db_path), "--task", "scale"])
    assert shown.exit_code == 0, shown.output
    assert "600 of 1,680 available traces (max_train 600)" in shown.output
    assert "1,800 (of 2,400 that may calibrate)" in shown.output
    with TraceStore(db_path) as store:
        html = summary_html(summary_facts(store, "scale"))
    assert ">600 of 1,680 available traces (max_train 600)</td>" in html


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
