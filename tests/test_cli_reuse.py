"""`tracer report` and `tracer suspects` reuse instead of refitting unless asked (issue 23): the report fits
nothing by default, the suspects' cross-fitted evidence is kept and reused while the traces do not change,
`--refit` fits again; beyond MAX_SCORED traces suspects score a sample and say so; plots are inline SVG."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import tracer_core.learning.fit as fit_module
import tracer_core.learning.suspects as suspects_module
from tests.test_report import TASK, record_and_fit
from tests.test_suspects import ngram_embedder, synthetic_traces
from tracer_core.cli.commands import main as cli
from tracer_core.cli.suspects import render_text
from tracer_core.learning.suspects import SuspectsError, teacher_suspects
from tracer_core.learning.suspects_cache import EvidenceCache
from tracer_core.report import plots


class Calls:
    """Counts the calls of a wrapped function (and still calls it)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, module, name: str):
        self.n = 0
        real = getattr(module, name)

        def counted(*args, **kwargs):
            self.n += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, counted)


@pytest.fixture
def fitted(tmp_path, banking_subset, fake_embedder, monkeypatch) -> Path:
    """A store with one deployed policy; the CLI embeds with the same fake embedder; a fresh evidence cache."""
    monkeypatch.setenv("TRACER_CACHE_DIR", str(tmp_path / "cache"))
    for module in ("tracer_core.report.build", "tracer_core.cli.suspects"):
        monkeypatch.setattr(f"{module}.get_default_embedder", lambda: fake_embedder)
    path = tmp_path / "tracer.db"
    record_and_fit(path, banking_subset, fake_embedder)
    return path


def invoke(*args: str):
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result


def test_report_and_suspects_refit_only_when_asked(fitted, tmp_path, monkeypatch) -> None:
    fits = Calls(monkeypatch, fit_module, "fit_policy")
    cross_fits = Calls(monkeypatch, suspects_module, "cross_fitted_evidence")
    common = ["--task", TASK, "--db", str(fitted)]
    out = str(tmp_path / "r.html")

    first = invoke("report", *common, "--out", out)
    assert (fits.n, cross_fits.n) == (0, 0)
    assert "policy: v1 (deployed)" in first.output and "no refits; --refit adds prefix refits" in first.output
    assert "suspects: not shown: no cross-fitted evidence is stored" in first.output
    facts = json.loads((tmp_path / "r.json").read_text())
    assert facts["evolution"]["prefixes"] == [] and facts["suspects"]["unavailable"]

    computed = invoke("suspects", *common, "--json")
    assert cross_fits.n == 1 and "cross-fitted now" in computed.output
    reused = invoke("suspects", *common, "--json")
    assert cross_fits.n == 1 and "reused (--refit cross-fits again)" in reused.output
    assert json.loads(reused.stdout)["suspects"] == json.loads(computed.stdout)["suspects"]

    second = invoke("report", *common, "--out", out)
    assert (fits.n, cross_fits.n) == (0, 1) and "(reused)" in second.output
    assert json.loads((tmp_path / "r.json").read_text())["suspects"]["unavailable"] is None

    invoke("suspects", *common, "--refit")
    assert cross_fits.n == 2
    refit = invoke("report", *common, "--out", out, "--refit")
    assert fits.n > 0 and "refits on prefixes of the traces" in refit.output
    assert json.loads((tmp_path / "r.json").read_text())["evolution"]["prefixes"]


def test_kept_evidence_is_used_only_for_the_same_traces(tmp_path, monkeypatch) -> None:
    cross_fits = Calls(monkeypatch, suspects_module, "cross_fitted_evidence")
    texts, labels, _ = synthetic_traces()
    teacher = (texts, labels, list(range(1, len(texts) + 1)))
    cache = EvidenceCache(tmp_path / "suspects")
    with pytest.raises(SuspectsError, match="no cross-fitted evidence is stored for these 120 teacher traces"):
        teacher_suspects(teacher, ngram_embedder, cache=EvidenceCache(cache.folder, reuse_only=True))
    fresh = teacher_suspects(teacher, ngram_embedder, cache=cache)
    again = teacher_suspects(teacher, ngram_embedder, cache=cache)
    assert cross_fits.n == 1 and again.evidence["reused"] and not fresh.evidence["reused"]
    assert again.suspects == fresh.suspects and again.per_label == fresh.per_label
    changed = (texts, [labels[0], *labels[1:-1], "lost_card"], teacher[2])  # one label differs
    teacher_suspects(changed, ngram_embedder, cache=cache)
    assert cross_fits.n == 2


def test_suspects_score_a_named_sample_beyond_max_scored(monkeypatch) -> None:
    monkeypatch.setattr(suspects_module, "MAX_SCORED", 100)
    texts, labels, _ = synthetic_traces()
    found = teacher_suspects((texts, labels, list(range(len(texts)))), ngram_embedder)
    assert (found.n_traces, found.sampled_from) == (100, 120)
    assert sum(row["traces"] for row in found.per_label) == 100
    assert "scored a random sample of 100 of the 120 teacher traces" in render_text(TASK, found.to_dict())


def test_region_map_draws_a_named_sample(monkeypatch) -> None:
    monkeypatch.setattr(plots, "MAX_MAP_POINTS", 5)
    points = [{"x": float(i), "y": float(i % 3), "handled": i % 2 == 0, "label": "a", "predicted": "a",
               "reason": "handled", "input": f"<query {i}>"} for i in range(12)]
    svg = plots.region_plot({"method": "pca", "points": points})
    assert svg.count("<circle") == 5 and "a random 5 of 12 shown" in svg
    assert "&lt;query" in svg and "<query" not in svg  # inputs are escaped, never markup
    assert "<script" not in svg
