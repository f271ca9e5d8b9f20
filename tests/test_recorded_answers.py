"""Every answer is recorded (issue 21, point 6): an answer from the caller's cache and one that does not parse are
kept apart from the evidence a fit uses, and every audit among them reaches the monitor, on both backends."""

from __future__ import annotations

import pytest

from tests import clustered
from tracer_core import Reason, Tracer, TraceStore
from tracer_core.decision import Decision
from tracer_core.storage.trace import MAX_LABEL_CHARS, UNPARSED_LABEL

TASK = "answers"


def audit(label: str) -> Decision:
    """An audit of a call the policy v1 would have answered with `label`."""
    return Decision(label=label, handled=False, score=0.99, reason=Reason.AUDIT, policy_version=1)


def test_unlabelled_and_cached_answers_are_recorded_apart(tmp_path) -> None:
    with Tracer(TASK, tmp_path / "t.db", embedder=clustered.embed, auto_refit=False, audit_rate=0.0) as tracer:
        deferred = Decision("lab2", False, 0.4, Reason.LOW_CONFIDENCE, 1)
        handled = Decision("lab2", True, 0.99, Reason.HANDLED, 1)
        tracer.record_answer("lab2 a", "lab2", decision=deferred)
        tracer.record_answer("lab2 b", None, decision=deferred)
        tracer.record_answer("lab2 c", "   ", decision=deferred)
        tracer.record_answer("lab2 d", "x" * (MAX_LABEL_CHARS + 1), decision=deferred)
        tracer.record_answer("lab2 e", "lab2", decision=deferred, cached=True)
        tracer.record_answer("lab2 f", "lab2", decision=handled, cached=True)  # tracer's own answer: a surrogate trace
        tracer.flush()
        stored = [(t.input, t.source, t.label, t.route) for t in tracer.store.iter_traces(TASK)]
        assert tracer.refits._pending == 1  # only the teacher answer brings the next refit closer
    assert stored == [
        ("lab2 a", "teacher", "lab2", "low_confidence"),
        ("lab2 b", "unparsed", UNPARSED_LABEL, "low_confidence"),
        ("lab2 c", "unparsed", UNPARSED_LABEL, "low_confidence"),
        ("lab2 d", "unparsed", UNPARSED_LABEL, "low_confidence"),
        ("lab2 e", "cached", "lab2", "low_confidence"),
        ("lab2 f", "surrogate", "lab2", "handled"),
    ]


def test_every_audit_reaches_the_monitor_and_none_of_the_odd_ones_trains(store_db) -> None:
    """A cached audit counts as recorded, an unparsed one as a disagreement; fits see only teacher answers."""
    with TraceStore(store_db) as store, Tracer(TASK, store, alpha=0.9, embedder=clustered.embed, auto_refit=False,
                                               audit_rate=0.0) as tracer:
        texts = clustered.texts(600)
        tracer.record_many(texts, [clustered.label_of(t) for t in texts])
        assert tracer.fit().deployed
        tracer.record_answer("lab1 audit", "lab1", decision=audit("lab1"))
        tracer.record_answer("lab1 cached", "lab1", decision=audit("lab1"), cached=True)
        tracer.record_answer("lab1 cached wrong", "lab3", decision=audit("lab1"), cached=True)
        tracer.record_answer("lab1 silent", None, decision=audit("lab1"))
        tracer.record_answer("lab1 silent, not covered", None, decision=audit(None))  # the policy would have deferred
        tracer.flush()
        first = store.max_id(TASK, source=None) - 4
        outcomes = store.audit_outcomes(TASK, "", policy_version=1)
        assert [agreed for _, agreed in outcomes] == [True, True, False, False]
        assert [i for i, _ in outcomes] == [first, first + 1, first + 2, first + 3]
        assert tracer.status()["monitor"]["audits"] == 4
        evidence = store.teacher_evidence(TASK, "")
        assert evidence.texts == [*texts, "lab1 audit"] and evidence.unselected[-1]
        assert evidence.audit == [False] * len(texts) + [True]  # audits calibrate at their own fraction
        assert store.teacher_examples(TASK, "")[0][-1] == "lab1 audit"  # suspects and the report: teacher answers only
        refit = tracer.fit()
        assert refit.n_traces == 601


@pytest.mark.parametrize("kind", ["cached", "unparsed"])
def test_status_counts_them_as_deferred_calls(tmp_path, kind) -> None:
    from tracer_core.report.summary import live_counts

    with Tracer(TASK, tmp_path / "t.db", embedder=clustered.embed, auto_refit=False, audit_rate=0.0) as tracer:
        tracer.record_answer("lab1 x", "lab1" if kind == "cached" else None, decision=audit("lab1"), cached=True)
        tracer.flush()
        counts = live_counts(tracer.store, TASK, 0.0)
    assert counts["deferred_by_reason"] == {"audit": 1} and counts[kind] == 1 and counts["calls"] == 1
