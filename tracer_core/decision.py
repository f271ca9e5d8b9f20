"""A routing decision: answer with the surrogate's label, or defer to the LLM and say why."""

from __future__ import annotations

from dataclasses import asdict, dataclass

HANDLED = "handled"
NO_POLICY = "no_policy"
LOW_CONFIDENCE = "low_confidence"
OUT_OF_DISTRIBUTION = "out_of_distribution"
UNSEEN_LABEL = "unseen_label"
LABEL_NOT_CERTIFIED = "label_not_certified"
FREE_TEXT_TASK = "free_text_task"
ERROR = "error"
INVALID_POLICY = "invalid_policy"
STORE_UNAVAILABLE = "store_unavailable"

DEFER_REASONS = (
    NO_POLICY, LOW_CONFIDENCE, OUT_OF_DISTRIBUTION, UNSEEN_LABEL, LABEL_NOT_CERTIFIED, FREE_TEXT_TASK, ERROR,
    INVALID_POLICY, STORE_UNAVAILABLE,
)

REASON_TEXT = {
    HANDLED: "the certified surrogate answered",
    NO_POLICY: "no certified policy yet",
    LOW_CONFIDENCE: "surrogate confidence below the certified threshold",
    OUT_OF_DISTRIBUTION: "input is far from every training trace",
    UNSEEN_LABEL: "input resembles a label the surrogate has too few traces of",
    LABEL_NOT_CERTIFIED: "the predicted label's own evidence does not support alpha",
    FREE_TEXT_TASK: "outputs are mostly distinct: not a classification task",
    ERROR: "tracer failed internally; the LLM answers",
    INVALID_POLICY: "the stored policy failed validation and is not used",
    STORE_UNAVAILABLE: "the trace store cannot be written (degraded mode); the LLM answers",
}


@dataclass(frozen=True)
class Decision:
    """What the router decided for one input.

    `label` is the surrogate's prediction (set even when deferred, None without a policy);
    it is only to be used as the answer when `handled` is True.
    """

    label: str | None
    handled: bool
    score: float
    reason: str
    policy_version: int | None

    def to_dict(self) -> dict:
        return asdict(self)


def deferred(reason: str, policy_version: int | None = None, label: str | None = None, score: float = 0.0) -> Decision:
    return Decision(label=label, handled=False, score=score, reason=reason, policy_version=policy_version)
