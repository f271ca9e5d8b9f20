"""Replay benchmark of the continual loop (issue: keep the guarantee in the loop).

A stream goes through `Tracer` as an integration would: route the calls in flight
(`in_flight` at a time, with `route_many`), answer handled calls with the surrogate, send the
rest (deferrals and audits) to a teacher function, record every call with its decision, and
refit whenever `refit_every` new teacher traces have arrived (as the background refit does).
A call routed while others are in flight cannot use their answers: neither the monitor nor the
audit boost sees them until they are recorded. Per window of 1,000 queries:
live coverage, live agreement with the teacher of that moment, the certified coverage of
the policy in force, audits, suspension.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.data import teacher_split
from tracer_core import Reason, Tracer
from tracer_core.errors import NoTracesError
from tracer_core.learning.gate import significantly_below
from tracer_core.serving.tracer import DEFAULT_AUDIT_RATE

ALPHA = 0.95
DELTA = 0.05
IN_FLIGHT = 250  # calls routed before the first of them is answered and recorded (a busy proxy; the targets' runs)
SEQUENTIAL = 1  # a caller that waits for each answer: measured beside it for the teacher change
WINDOW = 1000
REFIT_EVERY = 200
CHANGE_AT = 5000
CHANGED_INTENTS = 10

Teacher = Callable[[int, str], str]


@dataclass
class PolicyLife:
    """What one policy version did while in force."""

    would: int = 0  # calls it answered or would have answered (audits)
    routed: int = 0
    agree: int = 0  # of `would`: its answer equals the teacher of the moment
    certified_coverage: float | None = None  # None: replaced before a window closed with it in force
    n_calibration: int = 0


@dataclass
class Replay:
    """What happened to one stream."""

    rows: list[dict] = field(default_factory=list)
    handled: list[bool] = field(default_factory=list)
    agreed: list[bool] = field(default_factory=list)  # handled calls only: surrogate == teacher of the moment
    suspensions: list[int] = field(default_factory=list)  # index of the first query each suspension deferred
    suspended_versions: list[int | None] = field(default_factory=list)  # the policy version each one suspended
    per_version: dict[int, PolicyLife] = field(default_factory=dict)
    label_free_signals: int = 0  # label-free signals (deferral or out-of-distribution share) over the stream
    relabels: int = 0  # relabel triggers over the stream (tracer_core.serving.relabel)

    @property
    def suspended_at(self) -> int | None:
        return self.suspensions[0] if self.suspensions else None

    def suspended_after(self, query: int) -> int | None:
        """The first suspension seen after `query` (an earlier one, e.g. a withdrawal, does not count)."""
        return next((at for at in self.suspensions if at > query), None)

    def false_suspensions(self) -> int:
        """Suspensions of a policy whose live agreement, over every call it answered or would have answered, was
        at least alpha (a suspension of a policy below alpha is the monitor doing its job)."""
        lives = [self.per_version.get(v) if v is not None else None for v in self.suspended_versions]
        return sum(life is None or life.agree >= ALPHA * life.would for life in lives)

    def coverage(self, last: int) -> float:
        tail = self.handled[-last:]
        return sum(tail) / len(tail)

    def max_coverage_gap(self, min_calls: int = 500, min_calibration: int = 0) -> float | None:
        """Largest |live - certified coverage| over policies that routed `min_calls` calls."""
        gaps = self.coverage_gaps(min_calls, min_calibration)
        return max(gaps) if gaps else None

    def coverage_gaps(self, min_calls: int = 500, min_calibration: int = 0) -> list[float]:
        """|live - certified coverage| of each policy that routed `min_calls` calls."""
        return [abs(p.would / p.routed - p.certified_coverage) for p in self.per_version.values()
                if p.routed >= min_calls and p.certified_coverage is not None and p.n_calibration >= min_calibration]

    def policies_below(self, min_answers: int = 200) -> tuple[int, int]:
        """(policies whose live agreement over their life is significantly below alpha, policies judged)."""
        judged = [p for p in self.per_version.values() if p.would >= min_answers and p.certified_coverage is not None]
        return sum(significantly_below(p.agree, p.would, ALPHA) for p in judged), len(judged)


def run(texts: list[str], teacher: Teacher, *, seed: int, embed, audit_rate: float | None = None,
        change_at: int | None = None, before: Teacher | None = None, in_flight: int = IN_FLIGHT) -> Replay:
    """Replay `texts` in order; `teacher(i, text)` is the LLM's answer to query i.

    With `before` (the teacher's answers had it not changed), a wrong surrogate answer after
    `change_at` counts as caused by the change when it is the old answer.
    """
    replay = Replay()
    with tempfile.TemporaryDirectory() as tmp:
        tracer = Tracer("replay", Path(tmp) / "replay.db", alpha=ALPHA, delta=DELTA, embedder=embed, auto_refit=False,
                        policy_check_s=0.0, seed=seed,
                        audit_rate=DEFAULT_AUDIT_RATE if audit_rate is None else audit_rate)
        tracer.audits.reseed(f"replay:{seed}")  # the same audit draws in every run of this shuffle
        pending, suspended = 0, False
        window: dict = _new_window(0)
        for start in range(0, len(texts), in_flight):
            batch = texts[start : start + in_flight]
            decisions = tracer.route_many(batch)
            for offset, (text, decision) in enumerate(zip(batch, decisions)):
                i = start + offset
                truth = teacher(i, text)
                _count(replay, window, decision, truth, i, change_at, before(i, text) if before else None)
                answer = decision.label if decision.handled and decision.label is not None else truth
                tracer.record(text, answer, decision=decision)
                pending += not decision.handled
                now_suspended = decision.reason == Reason.SUSPENDED  # a suspension counts from the first call it defers
                if now_suspended and not suspended:
                    replay.suspensions.append(i)
                    replay.suspended_versions.append(decision.policy_version)
                suspended = now_suspended
            if pending >= REFIT_EVERY:
                pending = 0
                try:
                    tracer.fit()
                except NoTracesError:
                    pass
            if (start + len(batch)) % WINDOW == 0 or start + len(batch) >= len(texts):
                replay.rows.append(_close_window(window, tracer, replay))
                window = _new_window(start + len(batch))
        replay.label_free_signals, replay.relabels = tracer.audits.signals, tracer.audits.relabels
        tracer.close()
    return replay


def _new_window(start: int) -> dict:
    return {"start": start, "n": 0, "handled": 0, "agree": 0, "audits": 0, "suspended": False, "wrong_after": 0,
            "old_answers": 0}


def _count(replay: Replay, window: dict, decision, truth: str, i: int, change_at: int | None,
           old: str | None) -> None:
    window["n"] += 1
    replay.handled.append(decision.handled)
    window["audits"] += decision.reason == Reason.AUDIT
    window["suspended"] |= decision.reason == Reason.SUSPENDED
    if decision.handled:
        agreed = decision.label == truth
        window["handled"] += 1
        window["agree"] += agreed
        replay.agreed.append(agreed)
        if change_at is not None and i >= change_at and not agreed:
            window["wrong_after"] += 1
            window["old_answers"] += old is not None and decision.label == old
    if decision.policy_version is not None and decision.reason not in (Reason.SUSPENDED, Reason.ERROR):
        life = replay.per_version.setdefault(decision.policy_version, PolicyLife())
        would = decision.handled or (decision.reason == Reason.AUDIT and decision.label is not None)
        life.would += would
        life.routed += 1
        life.agree += would and decision.label == truth


def _close_window(window: dict, tracer: Tracer, replay: Replay) -> dict:
    cert = tracer.certificate
    version = tracer.policy_version
    n, handled, agree = window["n"], window["handled"], window["agree"]
    life = replay.per_version.get(version) if version is not None else None
    if life is not None and life.certified_coverage is None and cert is not None and cert.deployed:
        life.certified_coverage, life.n_calibration = cert.coverage, cert.n_calibration
    return {
        "queries": f"{window['start'] + 1}-{window['start'] + n}",
        "live coverage": round(handled / n, 3) if n else 0.0,
        "live agreement": round(agree / handled, 4) if handled else "-",
        "sig. below alpha": significantly_below(agree, handled, ALPHA),
        "policy": f"v{version}" if version else "-",
        "certified coverage": round(cert.coverage, 3) if cert is not None and cert.deployed else "-",
        "audits": window["audits"],
        "suspended": window["suspended"],
        "wrong after change": window["wrong_after"],
        "old answers after change": window["old_answers"],
    }


# --- scenarios -----------------------------------------------------------------------------------

def shuffled_stream(dataset: str, seed: int, limit: int | None = None) -> tuple[list[str], list[str]]:
    """`dataset`'s T1 train + test, shuffled by `seed` (the first `limit` queries, if given)."""
    split = teacher_split(dataset, "T1")
    texts = split.train_texts + split.test_texts
    labels = split.train_labels + split.test_labels
    order = np.random.default_rng(seed).permutation(len(texts))[:limit]
    return [texts[i] for i in order], [labels[i] for i in order]


def banking_stream(seed: int) -> tuple[list[str], list[str]]:
    """Banking77 T1 train + test (13,083 queries), shuffled by `seed`."""
    return shuffled_stream("banking77", seed)


def changed_teacher(labels: list[str], seed: int) -> Teacher:
    """From CHANGE_AT on, CHANGED_INTENTS intents are answered with another intent."""
    rng = np.random.default_rng(1000 + seed)
    names = sorted(set(labels))
    moved = list(rng.choice(names, CHANGED_INTENTS, replace=False))
    targets = {a: names[(names.index(a) + 1 + int(rng.integers(len(names) - 1))) % len(names)] for a in moved}
    targets = {a: (b if b != a else names[(names.index(a) + 1) % len(names)]) for a, b in targets.items()}
    return lambda i, _text: targets.get(labels[i], labels[i]) if i >= CHANGE_AT else labels[i]


CLINC_QUERIES = 10_000
CLINC_STABLE_QUERIES = 12_000


def clinc_stable_stream(seed: int) -> tuple[list[str], list[str]]:
    """12,000 CLINC150 T1 in-scope queries (train + test, shuffled by `seed`): a second data set on which a change
    of the learner or the attempt rules is judged beside Banking77's stable replay."""
    return shuffled_stream("clinc150", seed, CLINC_STABLE_QUERIES)


def clinc_stream(seed: int) -> tuple[list[str], Teacher, int]:
    """10,000 CLINC150 T1 queries: in-scope for the first half, then 20% out-of-scope answered `oos`."""
    from bench.data import clinc_oos_test

    split = teacher_split("clinc150", "T1")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(split.train_texts))
    inscope = [(split.train_texts[i], split.train_labels[i]) for i in order]
    oos = list(clinc_oos_test())
    half = CLINC_QUERIES // 2
    stream = inscope[:half]
    rest, k = inscope[half:], 0
    oos_iter = iter(rng.permutation(len(oos)))
    while len(stream) < CLINC_QUERIES:
        if rng.random() < 0.2:
            try:
                stream.append((oos[int(next(oos_iter))], "oos"))
                continue
            except StopIteration:
                pass
        stream.append(rest[k])
        k += 1
    labels = [label for _, label in stream]
    return [text for text, _ in stream], (lambda i, _text: labels[i]), half


def summary_row(name: str, replays: list[Replay], change_at: int | None) -> dict:
    last3 = [r.coverage(3000) for r in replays]
    windows_below = sum(any(row["sig. below alpha"] for row in r.rows) for r in replays)
    gaps = [g for g in (r.max_coverage_gap() for r in replays) if g is not None]
    every_gap = [g for r in replays for g in r.coverage_gaps()]
    below = [r.policies_below() for r in replays]
    large = [g for g in (r.max_coverage_gap(min_calibration=1000) for r in replays) if g is not None]
    row = {
        "scenario": name,
        "replays": len(replays),
        "live coverage, last 3,000 (median)": round(float(np.median(last3)), 4),  # 4 places: the target is judged on them
        "replays with a window sig. below alpha": windows_below,
        "windows sig. below alpha (shuffle: queries, live agreement)": "; ".join(
            f"{shuffle}: {row['queries']}, {row['live agreement']}" for shuffle, r in enumerate(replays)
            for row in r.rows if row["sig. below alpha"]),
        "max |certified - live coverage| per policy (worst replay)": round(max(gaps), 3) if gaps else "-",
        "same, policies calibrated on >= 1,000 traces": round(max(large), 3) if large else "-",
        "suspended (replays)": sum(r.suspended_at is not None for r in replays),
        "falsely suspended (replays)": sum(r.false_suspensions() > 0 for r in replays),
        "suspended policies: live agreement / answers": "; ".join(
            f"v{v} {life.agree / life.would:.3f} / {life.would}" for r in replays for v in r.suspended_versions
            if v is not None and (life := r.per_version.get(v)) is not None and life.would),
        "replays with a label-free signal": sum(r.label_free_signals > 0 for r in replays),
        "replays with a relabel trigger": sum(r.relabels > 0 for r in replays),
        "coverage gap per policy: median / 95th percentile": (
            f"{np.median(every_gap):.3f} / {np.quantile(every_gap, 0.95):.3f}" if every_gap else "-"),
        "policies significantly below alpha over their life": (sum(b for b, _ in below), sum(n for _, n in below)),
    }
    if change_at is not None:
        delays = [at - change_at if (at := r.suspended_after(change_at)) is not None else math.inf for r in replays]
        wrong = [sum(w["wrong after change"] for w in r.rows) for r in replays]
        old = [sum(w["old answers after change"] for w in r.rows) for r in replays]
        row["queries from change to suspension (median)"] = float(np.median(delays))
        row["wrong surrogate answers after change (median)"] = float(np.median(wrong))
        row["old answers to changed intents after change (median)"] = float(np.median(old))
    return row
