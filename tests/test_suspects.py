"""Teacher suspects: planted label flips rank first, scores are cross-fitted, CLI / report / Tracer API."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tracer_core.cli.commands import main as cli
from tracer_core.learning.suspects import MIN_SCORE, SuspectsError, _neighbour_vote, cross_fitted_evidence, find_suspects
from tracer_core.report import build_report
from tracer_core.serving.tracer import Tracer
from tracer_core.storage.store import TraceStore
from tracer_core.storage.trace import make_trace

TASK = "intents"
TOPICS = {
    "card_arrival": "card arrive delivery post mail courier when shipped",
    "exchange_rate": "exchange rate currency euro dollar convert pound fee",
    "lost_card": "lost stolen missing wallet thief disappeared block freeze",
    "top_up": "top up add money fund balance deposit load wallet",
}
PER_LABEL = 30
PLANTED = {5: "exchange_rate", 40: "lost_card", 71: "top_up", 100: "card_arrival", 17: "top_up", 88: "card_arrival"}
_PROJECTION = np.random.default_rng(0).normal(size=(4096, 64)).astype(np.float32)


def ngram_embedder(texts: list[str]) -> np.ndarray:
    """Deterministic fake embedder: a fixed random projection of hashed character 3-gram counts."""
    counts = np.zeros((len(texts), 4096), dtype=np.float32)
    for row, text in enumerate(texts):
        padded = f"  {text.lower()}  "
        for i in range(len(padded) - 2):
            counts[row, zlib.crc32(padded[i : i + 3].encode()) % 4096] += 1.0
    vectors = counts @ _PROJECTION
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def synthetic_traces() -> tuple[list[str], list[str], list[str]]:
    """(texts, recorded labels with the PLANTED flips, true labels): 4 topics x 30 queries."""
    rng = np.random.default_rng(1)
    texts, truth = [], []
    for label, words in TOPICS.items():
        vocab = words.split()
        for _ in range(PER_LABEL):
            texts.append("please " + " ".join(rng.choice(vocab, size=5)))
            truth.append(label)
    recorded = [PLANTED.get(i, label) for i, label in enumerate(truth)]
    assert all(recorded[i] != truth[i] for i in PLANTED)
    return texts, recorded, truth


def test_planted_flips_rank_first_and_point_to_their_true_label() -> None:
    texts, recorded, truth = synthetic_traces()
    found = find_suspects(texts, recorded, ngram_embedder(texts), limit=None)
    top = found.suspects[: len(PLANTED)]
    assert {s.id for s in top} == set(PLANTED)
    assert found.n_suspects == len(PLANTED) == len(found.suspects)
    for s in top:
        assert s.teacher_label == PLANTED[s.id] and s.suggested_label == truth[s.id]
        assert s.score >= found.min_score and s.score == pytest.approx(s.suggested_probability - s.teacher_probability, abs=1e-3)
        assert len(s.neighbours) == 5 and s.id not in {n["id"] for n in s.neighbours}
        assert sum(n["label"] == truth[s.id] for n in s.neighbours) >= 4
    assert [s.score for s in found.suspects] == sorted((s.score for s in found.suspects), reverse=True)
    per_label = {r["label"]: r for r in found.per_label}
    assert per_label["card_arrival"]["suspects"] == 2 and per_label["top_up"]["suspects"] == 2
    assert per_label["exchange_rate"]["pointed_to"] == 1 and per_label["card_arrival"]["traces"] == PER_LABEL
    assert sum(p["suspects"] for p in found.confused_pairs) == len(PLANTED)
    assert "card_arrival vs top_up: 2 suspects" in [p["message"] for p in found.confused_pairs]
    assert "card_arrival vs exchange_rate: 1 suspect" in [p["message"] for p in found.confused_pairs]


def test_a_trace_is_never_scored_by_a_model_that_trained_on_it() -> None:
    """A label recorded once: trained on in-sample, a model would give it weight; cross-fitted, nothing does."""
    texts, recorded, _ = synthetic_traces()
    recorded[3] = "one_off_label"
    found = find_suspects(texts, recorded, ngram_embedder(texts), limit=None)
    lone = next(s for s in found.suspects if s.id == 3)
    assert lone.teacher_label == "one_off_label" and lone.suggested_label == "card_arrival"
    assert lone.teacher_probability < 1e-3 and lone.score >= 0.5


def test_cleaning_refits_without_the_suspects_and_sharpens_the_evidence_against_flips() -> None:
    """With 8 more card_arrival traces flipped to top_up the boundary moves; one cleaning round moves it back."""
    texts, recorded, truth = synthetic_traces()
    for i in [i for i in range(PER_LABEL) if i not in PLANTED][:8]:
        recorded[i] = "top_up"
    flips = np.array([r != t for r, t in zip(recorded, truth)])
    vectors = ngram_embedder(texts)
    before, _ = cross_fitted_evidence(texts, recorded, vectors, cleaning_rounds=0).scores()
    after, _ = cross_fitted_evidence(texts, recorded, vectors, cleaning_rounds=1).scores()
    assert (after[flips] >= MIN_SCORE).sum() > (before[flips] >= MIN_SCORE).sum()
    assert after[flips].mean() > before[flips].mean()
    assert (before[~flips] < MIN_SCORE).all() and (after[~flips] < MIN_SCORE).all()


def test_untrusted_neighbours_do_not_vote_unless_none_is_trusted() -> None:
    y = np.array([0, 1, 1, 0, 0])
    neighbours = np.array([[1, 2], [2, 3], [1, 3], [1, 4], [0, 3]])
    trusted = np.array([True, False, True, True, False])
    vote = _neighbour_vote(y, 2, neighbours, trusted)
    # trace 0: only trace 2 (label 1) votes; trace 3: neither neighbour is trusted, so both vote
    assert vote.tolist() == [[0.0, 1.0], [0.5, 0.5], [1.0, 0.0], [0.5, 0.5], [1.0, 0.0]]


def test_limit_only_cuts_the_list_and_bad_arguments_are_clear_errors() -> None:
    texts, recorded, _ = synthetic_traces()
    vectors = ngram_embedder(texts)
    found = find_suspects(texts, recorded, vectors, limit=2)
    assert len(found.suspects) == 2 and found.n_suspects == len(PLANTED)
    with pytest.raises(SuspectsError, match="at least 20 traces"):
        find_suspects(texts[:10], recorded[:10], vectors[:10])
    with pytest.raises(SuspectsError, match="limit must be"):
        find_suspects(texts, recorded, vectors, limit=-1)
    with pytest.raises(SuspectsError, match="2 labels"):
        find_suspects(texts, ["same"] * len(texts), vectors)


@pytest.fixture
def store_path(tmp_path: Path) -> tuple[Path, list[int]]:
    """A real SQLite store with the synthetic teacher traces; returns its path and the planted traces' ids."""
    texts, recorded, _ = synthetic_traces()
    path = tmp_path / "tracer.db"
    with TraceStore(path) as store:
        store.append_many([make_trace("another_task", "a trace of another task", "x")])
        store.append_many([make_trace(TASK, t, lab) for t, lab in zip(texts, recorded)])
        store.append_many([make_trace(TASK, t, "top_up", source="surrogate") for t in texts[:5]])
        _, _, ids = store.teacher_examples(TASK)
    return path, sorted(ids[i] for i in PLANTED)


def test_tracer_suspects_reads_the_task_teacher_traces_from_the_store(store_path) -> None:
    path, planted_ids = store_path
    with Tracer(TASK, db=path, embedder=ngram_embedder, auto_refit=False) as tracer:
        found = tracer.suspects(limit=10)
        texts, labels, ids = tracer.store.teacher_examples(TASK)
    assert found["n_traces"] == len(texts) == 4 * PER_LABEL  # this task's teacher traces only
    assert sorted(s["id"] for s in found["suspects"][: len(PLANTED)]) == planted_ids
    by_id = dict(zip(ids, zip(texts, labels)))
    assert all((s["input"], s["teacher_label"]) == by_id[s["id"]] for s in found["suspects"])
    assert found == find_suspects(texts, labels, ngram_embedder(texts), ids=ids, limit=10).to_dict()


def test_tracer_suspects_without_enough_traces_is_a_clear_error(tmp_path: Path) -> None:
    with Tracer(TASK, db=tmp_path / "t.db", embedder=ngram_embedder, auto_refit=False) as tracer:
        tracer.record_many(["a b", "c d"], ["x", "y"])
        with pytest.raises(SuspectsError, match="got 2 traces"):
            tracer.suspects()


@pytest.mark.slow
def test_cli_prints_suspects_as_text_and_json(store_path, embedder) -> None:
    path, _ = store_path
    marked = "please card arrive [bold red]delivery[/bold red] courier post"
    with TraceStore(path) as store:
        store.append_many([make_trace(TASK, marked, "exchange_rate")])
    runner = CliRunner()
    as_json = runner.invoke(cli, ["suspects", "--task", TASK, "--db", str(path), "--limit", "50", "--json"])
    assert as_json.exit_code == 0, as_json.output
    found = json.loads(as_json.stdout)  # stderr may carry the model loader's progress bar
    with Tracer(TASK, db=path, embedder=embedder, auto_refit=False) as tracer:
        # the CLI uses the default (MiniLM) embedder, and says where its evidence came from (the API keeps none)
        assert found | {"evidence": {}} == tracer.suspects(limit=50) and found["evidence"]["reused"] is False
    assert len(found["suspects"]) == found["n_suspects"] >= len(PLANTED)
    assert marked in [s["input"] for s in found["suspects"]]
    text = runner.invoke(cli, ["suspects", "--task", TASK, "--db", str(path), "--limit", "50"])
    assert text.exit_code == 0, text.output
    assert f"{found['n_suspects']} suspects (score >= 0.50) among {found['n_traces']} teacher traces" in text.stdout
    for s in found["suspects"]:
        assert f"trace {s['id']}  score {s['score']:.2f}  teacher: {s['teacher_label']}  evidence: {s['suggested_label']}" in text.stdout
        assert f"     input: {s['input']}" in text.stdout
    for pair in found["confused_pairs"]:
        assert f"  {pair['message']}" in text.stdout
    assert f"     input: {marked}" in text.stdout  # printed literally, not as markup


def test_cli_errors_name_the_problem(tmp_path: Path, store_path) -> None:
    runner = CliRunner()
    missing = runner.invoke(cli, ["suspects", "--task", TASK, "--db", str(tmp_path / "none.db")])
    assert missing.exit_code == 1 and "does not exist" in missing.output
    path, _ = store_path
    unknown = runner.invoke(cli, ["suspects", "--task", "missing", "--db", str(path)])
    assert unknown.exit_code == 1 and "task 'missing' has no traces" in unknown.output


def test_report_has_a_suspects_section(store_path) -> None:
    path, planted_ids = store_path
    out = path.parent
    with TraceStore(path) as store:
        facts = build_report(store, TASK, out_html=out / "r.html", out_json=out / "r.json", embed=ngram_embedder,
                             refit_fractions=())
    section = facts["suspects"]
    assert section["unavailable"] is None and section["n_suspects"] == len(PLANTED)
    assert sorted(s["id"] for s in section["suspects"]) == planted_ids
    assert json.loads((out / "r.json").read_text())["suspects"] == section
    page = (out / "r.html").read_text()
    assert '<section id="suspects">' in page and 'id="suspects-table"' in page
    for pair in section["confused_pairs"]:
        first, second = pair["labels"]
        assert f"<li><code>{first}</code> vs <code>{second}</code>: {pair['suspects']} suspect" in page
    for s in section["suspects"]:
        assert f">{s['input']}<" in page


def test_report_section_explains_when_there_are_too_few_traces(tmp_path: Path) -> None:
    with TraceStore(tmp_path / "t.db") as store:
        store.append_many([make_trace(TASK, f"query {i}", "a" if i % 2 else "b") for i in range(6)])
        facts = build_report(store, TASK, embed=ngram_embedder, refit_fractions=())
    assert facts["suspects"]["unavailable"].startswith("suspects need at least 20 traces")


def test_a_fold_left_with_one_label_still_scores() -> None:
    texts, _, _ = synthetic_traces()
    texts = texts[:21]
    labels = ["card_arrival"] * 20 + ["lost_card"]
    found = find_suspects(texts, labels, ngram_embedder(texts), limit=None)
    assert [s.id for s in found.suspects] == [20] and found.suspects[0].suggested_label == "card_arrival"
