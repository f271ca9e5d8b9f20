"""Recording: the traces of one task version, built from a call's answer and the decision that routed it."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from tracer_core.decision import Decision
from tracer_core.errors import InvalidTraceError
from tracer_core.observability import observe
from tracer_core.serving.audits import AuditSampler
from tracer_core.serving.refit import RefitScheduler
from tracer_core.storage.store import TraceStore
from tracer_core.storage.trace import CACHED, UNPARSED, UNPARSED_LABEL, Trace, as_list, is_label, make_trace

log = logging.getLogger("tracer")


class Recorder:
    """Writes the traces of one task version to the store and counts new teacher traces towards a refit."""

    def __init__(self, store: TraceStore, task: str, fingerprint: str, refits: RefitScheduler,
                 audits: AuditSampler) -> None:
        self.store, self.task, self.fingerprint, self.refits, self.audits = store, task, fingerprint, refits, audits

    def record(self, text: str, label: str, decision: Decision | None, fields: dict) -> None:
        """Queue one trace (non-blocking); see `Tracer.record`."""
        trace = self._trace(text, label, decision, fields)
        self.store.enqueue(trace)
        observe.recorded(self.task, self.fingerprint, [trace])
        if trace.source == "teacher":
            self.refits.count(1)
            self._answered(decision, trace.label)

    def record_answer(self, text: str, label: str | None, decision: Decision | None, cached: bool, fields: dict) -> None:
        """Record whatever answer a call got; see `Tracer.record_answer`."""
        if not is_label(label):
            label, fields["source"] = UNPARSED_LABEL, UNPARSED
        elif cached and not (decision is not None and decision.handled):
            fields["source"] = CACHED
        self.record(text, str(label), decision, fields)

    def record_many(
        self, texts: Iterable[str], labels: Iterable[str], decisions: Sequence[Decision] | None, fields: dict
    ) -> int:
        """Validate all traces first, then write them in one transaction; returns the count written."""
        texts, labels = as_list("texts", texts), as_list("labels", labels)
        if len(texts) != len(labels) or (decisions is not None and len(decisions) != len(texts)):
            raise InvalidTraceError(
                f"record_many got {len(texts)} texts, {len(labels)} labels"
                + (f" and {len(decisions)} decisions" if decisions is not None else "")
            )
        traces = [
            self._trace(text, label, decisions[i] if decisions is not None else None, dict(fields))
            for i, (text, label) in enumerate(zip(texts, labels))
        ]
        written = self.store.append_many(traces)
        observe.recorded(self.task, self.fingerprint, traces)
        self.refits.count(sum(t.source == "teacher" for t in traces))
        for trace, decision in zip(traces, decisions or ()):
            if trace.source == "teacher":
                self._answered(decision, trace.label)
        return written

    def _answered(self, decision: Decision | None, label: str) -> None:
        """Show the audit sampler the LLM's answer to a deferred call (after the trace is queued: never loses it)."""
        if decision is not None and not decision.handled:
            try:
                self.audits.answered(decision, label)
            except Exception:  # the trigger only raises the audit rate: recording goes on without it
                log.exception("tracer task %r: the relabel trigger failed on an answer", self.task)

    def _trace(self, text: str, label: str, decision: Decision | None, fields: dict) -> Trace:
        if decision is not None:
            if not isinstance(decision, Decision):
                raise InvalidTraceError(f"decision must be a tracer Decision, got {type(decision).__name__}")
            fields.setdefault("source", "surrogate" if decision.handled else "teacher")
            fields.update(route=str(decision.reason), policy_version=decision.policy_version,
                          predicted=decision.label, score=float(decision.score))
        return make_trace(self.task, text, label, fingerprint=self.fingerprint, **fields)
