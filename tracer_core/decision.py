"""A routing decision: answer with the surrogate's label, or defer to the LLM and say why."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum


class Reason(StrEnum):
    """Why a call was answered by the surrogate or sent to the LLM (stored with every trace)."""

    HANDLED = "handled"
    NO_POLICY = "no_policy"
    LOW_CONFIDENCE = "low_confidence"
    OUT_OF_DISTRIBUTION = "out_of_distribution"
    UNSEEN_LABEL = "unseen_label"
    LABEL_NOT_CERTIFIED = "label_not_certified"
    FREE_TEXT_TASK = "free_text_task"
    AUDIT = "audit"
    SUSPENDED = "suspended"
    NOT_CERTIFIED_AT_ALPHA = "not_certified_at_alpha"
    ERROR = "error"
    INVALID_POLICY = "invalid_policy"
    EMBEDDER_MISMATCH = "embedder_mismatch"
    STORE_UNAVAILABLE = "store_unavailable"
    POLICY_LOADING = "policy_loading"
    # decided by an integration before the core is asked
    CONVERSATION_HISTORY = "conversation_history"
    NON_TEXT_CONTENT = "non_text_content"
    NOT_ROUTABLE = "not_routable"
    TRACER_OFF = "tracer_off"
    NO_CODEC = "no_codec"
    MULTIPLE_CHOICES = "multiple_choices"

    @property
    def text(self) -> str:
        return REASON_TEXT[self]


REASON_TEXT: dict[Reason, str] = {
    Reason.HANDLED: "the certified surrogate answered",
    Reason.NO_POLICY: "no certified policy yet",
    Reason.LOW_CONFIDENCE: "surrogate confidence below the certified threshold",
    Reason.OUT_OF_DISTRIBUTION: "input is far from every training trace",
    Reason.UNSEEN_LABEL: "input resembles a label the surrogate has too few traces of",
    Reason.LABEL_NOT_CERTIFIED: "the predicted label's own evidence does not support alpha",
    Reason.FREE_TEXT_TASK: "outputs are mostly distinct: not a classification task",
    Reason.AUDIT: "a random audit: the LLM answers so the certificate keeps fresh evidence",
    Reason.SUSPENDED: "the task is suspended (audits contradicted the certificate, or by hand)",
    Reason.NOT_CERTIFIED_AT_ALPHA: (
        "the policy is certified at a lower alpha (or higher delta) than this caller asks; "
        "it defers until a fit at the caller's level"
    ),
    Reason.ERROR: "tracer failed internally; the LLM answers",
    Reason.INVALID_POLICY: "the stored policy failed validation and is not used",
    Reason.EMBEDDER_MISMATCH: "the policy was fitted with another embedder than this process uses",
    Reason.STORE_UNAVAILABLE: "the trace store cannot be written (degraded mode) or read; the LLM answers",
    Reason.POLICY_LOADING: "this process is still reading the task version's policy from the store; the LLM answers",
    Reason.CONVERSATION_HISTORY: "the call carries conversation history, which the certificate never saw",
    Reason.NON_TEXT_CONTENT: "the call has content the surrogate cannot see (images, audio, files)",
    Reason.NOT_ROUTABLE: "the call is not a single question to a fixed prompt (tool turns, no user message)",
    Reason.TRACER_OFF: "tracer was turned off for this call",
    Reason.NO_CODEC: "no answer format learned yet to build the surrogate's answer",
    Reason.MULTIPLE_CHOICES: "the call asks for several choices (n > 1)",
}

# Reasons under which the LLM answered whatever the input was: such teacher traces are a
# uniform sample of traffic and may serve as calibration evidence. A caller stricter than the
# deployed certificate defers every call, whatever its input, so its traces are such a sample too.
UNSELECTED = frozenset({Reason.NO_POLICY, Reason.AUDIT, Reason.SUSPENDED, Reason.NOT_CERTIFIED_AT_ALPHA})


@dataclass(frozen=True)
class Decision:
    """What the router decided for one input.

    `label` is the surrogate's prediction (set even when deferred, None without a policy);
    it is only to be used as the answer when `handled` is True. `plausible`, for a call deferred for
    low confidence, names the labels the surrogate gives a material probability (what the LLM's
    answer is compared with, `tracer_core.serving.relabel`); it is not part of `to_dict()`.
    """

    label: str | None
    handled: bool
    score: float
    reason: Reason
    policy_version: int | None
    plausible: tuple[str, ...] = field(default=(), compare=False, repr=False)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["reason"] = str(self.reason)
        del data["plausible"]
        return data


def deferred(reason: Reason, policy_version: int | None = None, label: str | None = None, score: float = 0.0) -> Decision:
    return Decision(label=label, handled=False, score=score, reason=reason, policy_version=policy_version)
