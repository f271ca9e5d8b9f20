"""Routing quality: fit on teacher traces, route a held-out test split, compare with targets.

Each function returns rows (dicts whose keys are the table's columns, in order).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from typing import Literal

import numpy as np

from bench.data import clinc_oos_test, load
from bench.fits import FitCache, FitKey
from tracer_core.learning.gate import significantly_below

ALPHAS = (0.90, 0.95, 0.99)
ROUTING_SETS = (("banking77", "T1"), ("clinc150", "T1"), ("banking77", "T2"), ("clinc150", "T2"))
NAMES = {"banking77": "Banking77", "clinc150": "CLINC150"}

# Target per (data set, teacher, alpha): minimum test coverage or "refused", and the published
# reference implementation's result.
TARGETS: dict[tuple[str, str], dict[float, tuple[float | Literal["refused"], str]]] = {
    ("banking77", "T1"): {0.90: (0.99, "0.97"), 0.95: (0.93, "0.86"), 0.99: (0.70, "refused")},
    ("clinc150", "T1"): {0.90: (0.99, "0.998"), 0.95: (0.98, "0.998, agreement 0.939 < 0.95"),
                         0.99: (0.85, "0.84, agreement 0.987 < 0.99")},
    ("banking77", "T2"): {0.90: (0.50, "0.34"), 0.95: ("refused", "-"), 0.99: ("refused", "-")},
    ("clinc150", "T2"): {0.90: (0.65, "0.56"), 0.95: ("refused", "-"), 0.99: ("refused", "-")},
}
CURVE = ((1000, 0.80, "0.77, agreement below alpha"), (3000, 0.92, "0.87"))
CURVE_ALPHA = 0.90
OOS_ALPHA, OOS_MAX, OOS_REF = 0.95, 0.05, "0.65"
VALIDITY_ALPHA = 0.95
VALIDITY_TRACES = (None, 1000)  # all 10,003 Banking77 traces, and the first 1,000
MAX_SIG_BELOW_PER_50 = 2  # deployed runs allowed significantly below alpha on test, per 50 runs

SHORT = {"low_confidence": "low_conf", "out_of_distribution": "ood", "label_not_certified": "label_excl",
         "unseen_label": "unseen", "no_policy": "no_policy", "error": "error"}


def teacher_key(dataset: str, teacher: str, n: int | None = None) -> tuple:
    return ("teacher", dataset, teacher, n)


def validity_runs(default: int = 50) -> int:
    return int(os.environ.get("TRACER_BENCH_VALIDITY_RUNS", default))


@dataclass
class Evaluation:
    n: int
    handled: int
    agree: int
    reasons: Counter
    scores: np.ndarray | None = None  # surrogate confidence on every input
    agrees: np.ndarray | None = None  # surrogate label == teacher label, every input

    def ceiling(self, alpha: float) -> float | None:
        """Best test coverage at alpha if the most confident inputs were handled, no filters, no
        certification slack: what the surrogate's ranking allows on this test split."""
        if self.scores is None or self.agrees is None:
            return None
        from tracer_core.learning.fit import coverage_at

        return coverage_at(self.scores, self.agrees, alpha)

    @property
    def coverage(self) -> float:
        return self.handled / self.n if self.n else 0.0

    @property
    def agreement(self) -> float | None:
        return self.agree / self.handled if self.handled else None

    def significantly_below(self, alpha: float) -> bool:
        """Exact one-sided binomial: P(Binom(handled, alpha) <= agree) < 0.05."""
        return significantly_below(self.agree, self.handled, alpha)

    def deferrals(self) -> str:
        parts = [f"{SHORT.get(r, r)} {c}" for r, c in self.reasons.most_common() if r != "handled"]
        return ", ".join(parts) if parts else "-"


def embed(texts: list[str]) -> np.ndarray:
    from tracer_core.learning.embedder import get_default_embedder

    return get_default_embedder()(texts)


def evaluate(policy, texts: list[str], labels: list[str] | None = None) -> Evaluation:
    """Route `texts` with `policy.decide`; agreement is against `labels` (the teacher's)."""
    if policy is None:
        return Evaluation(len(texts), 0, 0, Counter({"no_policy": len(texts)}))
    decisions = policy.decide(list(texts), embed(list(texts)))
    handled = np.array([d.handled for d in decisions])
    scores = np.array([d.score for d in decisions])
    agree, agrees = 0, None
    if labels is not None:
        agrees = np.array([d.label == t for d, t in zip(decisions, labels)])
        agree = int(agrees[handled].sum())
    return Evaluation(len(texts), int(handled.sum()), agree, Counter(d.reason for d in decisions), scores, agrees)


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _deployed(cert) -> str:
    return "yes" if cert.deployed else f"no ({cert.reason_code})"


def meets(result, ev: Evaluation, target: float, alpha: float) -> bool:
    """A coverage target is met: the fit deployed, test coverage reaches `target`, agreement not sig. below alpha."""
    return result.cert.deployed and ev.coverage >= target and not ev.significantly_below(alpha)


def _quality_row(result, ev: Evaluation, alpha: float) -> dict:
    cert = result.cert
    return {
        "alpha": f"{alpha:.2f}",
        "deployed": _deployed(cert),
        "cert. coverage": _fmt(cert.coverage if cert.deployed else None),
        "test coverage": _fmt(ev.coverage),
        "test agreement (handled)": f"{_fmt(ev.agreement, 4)} ({ev.handled})",
        "sig. below alpha": "YES" if ev.significantly_below(alpha) else "no",
        "ceiling": _fmt(ev.ceiling(alpha)),
        "model": cert.model or "-",
        "fit s": f"{result.seconds:.1f}" + ("*" if result.pooled else ""),
        "test deferrals": ev.deferrals(),
    }


def fit_keys(sections: list[str], runs: int) -> list[FitKey]:
    """Every fit the chosen benchmarks need, so that they can all be queued at once."""
    keys = []
    if "routing" in sections:
        keys += [FitKey(teacher_key(d, t), a) for d, t in ROUTING_SETS for a in ALPHAS]
    if "curve" in sections:
        keys += [FitKey(teacher_key("banking77", "T1", n), CURVE_ALPHA) for n, _, _ in CURVE]
        keys.append(FitKey(teacher_key("banking77", "T1"), CURVE_ALPHA))
    if "oos" in sections:
        keys.append(FitKey(teacher_key("clinc150", "T1"), OOS_ALPHA))
    if "nli" in sections:
        keys += [FitKey(("sick", s), a) for s in (False, True) for a in ALPHAS]
    if "validity" in sections:
        keys += [FitKey(teacher_key("banking77", "T1", n), VALIDITY_ALPHA, s) for n in VALIDITY_TRACES for s in range(runs)]
    if "lifetime" in sections:  # the calibration-window table reads this policy's decisions
        keys.append(FitKey(teacher_key("banking77", "T1"), 0.95))
    if "coverage" in sections:
        from bench.coverage import fit_keys as coverage_keys  # bench.coverage imports this module

        keys += coverage_keys()
    return list(dict.fromkeys(keys))


def routing(cache: FitCache, dataset: str, teacher: str) -> list[dict]:
    """One data set with one teacher at alphas 0.90 / 0.95 / 0.99."""
    split = load(teacher_key(dataset, teacher))
    keys = [FitKey(teacher_key(dataset, teacher), a) for a in ALPHAS]
    results = {r.key.alpha: r for r in cache.many(keys)}
    rows = []
    for alpha in ALPHAS:
        result = results[alpha]
        ev = evaluate(result.policy, split.test_texts, split.test_labels)
        target, reference = TARGETS[(dataset, teacher)][alpha]
        row = _quality_row(result, ev, alpha)
        if target == "refused":
            row["target"] = "refused"
            ok = not result.cert.deployed
        else:
            row["target"] = f"coverage >= {target:.2f}, not sig. below"
            ok = meets(result, ev, target, alpha)
        row["reference"] = reference
        row["ok"] = "met" if ok else "NOT met"
        rows.append(row)
    return rows


def learning_curve(cache: FitCache) -> list[dict]:
    """Banking77 T1 at alpha 0.90 with the first 1,000 / 3,000 traces (and all, for reference)."""
    split = load(teacher_key("banking77", "T1"))
    rows = []
    for n, target, reference in (*CURVE, (len(split.train_texts), None, "0.97")):
        key = FitKey(teacher_key("banking77", "T1", n if target is not None else None), CURVE_ALPHA)
        result = cache.get(key)
        ev = evaluate(result.policy, split.test_texts, split.test_labels)
        row = {"traces": n, **_quality_row(result, ev, CURVE_ALPHA)}
        if target is None:
            row.update(target="-", reference=reference, ok="-")
        else:
            ok = meets(result, ev, target, CURVE_ALPHA)
            row.update(target=f"coverage >= {target:.2f}", reference=reference, ok="met" if ok else "NOT met")
        rows.append(row)
    return rows


def out_of_scope(cache: FitCache) -> list[dict]:
    """CLINC150's 1,000 oos_test inputs routed by the CLINC150 T1 policy certified at alpha 0.95."""
    result = cache.get(FitKey(teacher_key("clinc150", "T1"), OOS_ALPHA))
    texts = clinc_oos_test()
    ev = evaluate(result.policy, texts)
    diag = _oos_diagnostics(result.policy, texts, load(teacher_key("clinc150", "T1")).test_texts)
    return [{
        "policy": f"CLINC150 T1, alpha {OOS_ALPHA}",
        "deployed": _deployed(result.cert),
        "oos inputs": ev.n,
        "handled": ev.handled,
        "share handled": _fmt(ev.coverage),
        "deferrals": ev.deferrals(),
        **diag,
        "target": f"<= {OOS_MAX:.2f}",
        "reference": OOS_REF,
        "ok": "met" if result.cert.deployed and ev.coverage <= OOS_MAX else "NOT met",
    }]


def _auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties half."""
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([pos, neg]))
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def _oos_diagnostics(policy, oos: list[str], in_domain: list[str]) -> dict:
    """How well the policy's OOD distance and surrogate confidence separate oos from in-domain test inputs."""
    if policy is None:
        return {}
    vo, vi = embed(oos), embed(in_domain)
    do, di = policy.ood.distance(vo), policy.ood.distance(vi)
    so = policy.predict_proba(oos, vo).max(axis=1)
    si = policy.predict_proba(in_domain, vi).max(axis=1)
    return {
        "AUROC OOD distance": f"{_auroc(do, di):.3f}",
        "AUROC 1-confidence": f"{_auroc(-so, -si):.3f}",
        "in-domain test kept at OOD cut admitting 5% oos": _fmt(float((di <= np.quantile(do, 0.05)).mean())),
        "oos median dist / ood_threshold": f"{np.median(do):.2f} / {policy.ood_threshold:.2f}",
    }


def nli(cache: FitCache) -> list[dict]:
    """SICK: whatever deploys is not significantly below alpha; shuffled labels: refused everywhere."""
    rows = []
    for shuffled in (False, True):
        split = load(("sick", shuffled))
        results = {r.key.alpha: r for r in cache.many(FitKey(("sick", shuffled), a) for a in ALPHAS)}
        for alpha in ALPHAS:
            result = results[alpha]
            ev = evaluate(result.policy, split.test_texts, split.test_labels)
            row = {"labels": "shuffled" if shuffled else "real", **_quality_row(result, ev, alpha)}
            if shuffled:
                ok = not result.cert.deployed
                row["target"] = "refused"
            else:
                ok = not ev.significantly_below(alpha)
                row["target"] = "not sig. below alpha"
            row["ok"] = "met" if ok else "NOT met"
            rows.append(row)
    return rows


def validity(cache: FitCache, runs: int) -> list[dict]:
    """Re-split Banking77 T1 `runs` times (fit seed s) at alpha 0.95, with all traces and with the
    first 1,000; count deployed runs below alpha on test, and significantly below."""
    return [_validity_row(cache, runs, n) for n in VALIDITY_TRACES]


def _mean(xs: list[float]) -> str:
    return _fmt(float(np.mean(xs)) if xs else None)


def _validity_row(cache: FitCache, runs: int, n: int | None) -> dict:
    split = load(teacher_key("banking77", "T1"))
    keys = [FitKey(teacher_key("banking77", "T1", n), VALIDITY_ALPHA, s) for s in range(runs)]
    evals = [(r, evaluate(r.policy, split.test_texts, split.test_labels)) for r in cache.many(keys)]
    deployed = [(r, ev) for r, ev in evals if r.cert.deployed]
    below = sum(1 for _, ev in deployed if ev.agreement is not None and ev.agreement < VALIDITY_ALPHA)
    sig = sum(1 for _, ev in deployed if ev.significantly_below(VALIDITY_ALPHA))
    agreements = [ev.agreement for _, ev in deployed if ev.agreement is not None]
    allowed = max(1, round(MAX_SIG_BELOW_PER_50 * runs / 50))
    return {
        "traces": n or len(split.train_texts),
        "runs": runs,
        "deployed": len(deployed),
        "runs below alpha on test": below,
        "share below alpha": _fmt(below / runs if runs else 0.0),
        "runs sig. below": sig,
        "mean test coverage": _mean([ev.coverage for _, ev in deployed]),
        "min test agreement": _fmt(min(agreements) if agreements else None, 4),
        "mean test agreement": _fmt(float(np.mean(agreements)), 4) if agreements else "-",
        "mean cert. coverage": _mean([r.cert.coverage for r, _ in deployed]),
        "target": f"<= {allowed} of {runs} sig. below",
        "ok": "met" if sig <= allowed else "NOT met",
    }
