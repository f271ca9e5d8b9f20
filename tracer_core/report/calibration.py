"""Route the held-out calibration traces of a certificate through its policy."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tracer_core.learning.embedder import EmbedFn, embed_checked


@dataclass
class CalibrationRouting:
    """Calibration traces (never trained on) with the policy's decision on each."""

    ids: list[int]
    texts: list[str]
    labels: list[str]  # teacher labels
    vectors: np.ndarray
    predicted: list[str | None]  # surrogate labels
    handled: np.ndarray  # bool
    reasons: list[str]
    scores: np.ndarray
    probs: np.ndarray  # (n, len(policy_labels))
    policy_labels: list[str]
    missing_ids: int  # calibration ids no longer in the store

    @property
    def agrees(self) -> np.ndarray:
        return np.array([p == t for p, t in zip(self.predicted, self.labels)], dtype=bool)

    def __len__(self) -> int:
        return len(self.ids)


def route_calibration(
    policy, cert: dict, teacher: tuple[list[str], list[str], list[int]], embed: EmbedFn
) -> CalibrationRouting | None:
    """Decisions of `policy` on the certificate's calibration traces, or None if it has none."""
    wanted = cert.get("calibration_ids") or []
    if policy is None or not wanted:
        return None
    by_id = {trace_id: (text, label) for text, label, trace_id in zip(*teacher)}
    ids = [i for i in wanted if i in by_id]
    texts = [by_id[i][0] for i in ids]
    labels = [by_id[i][1] for i in ids]
    vectors = embed_checked(embed, texts) if texts else np.zeros((0, 1), dtype=np.float32)
    decisions = policy.decide(texts, vectors) if texts else []
    probs = policy.predict_proba(texts, vectors) if texts else np.zeros((0, len(policy.labels)))
    return CalibrationRouting(
        ids=ids,
        texts=texts,
        labels=labels,
        vectors=vectors,
        predicted=[d.label for d in decisions],
        handled=np.array([d.handled for d in decisions], dtype=bool),
        reasons=[d.reason for d in decisions],
        scores=np.array([d.score for d in decisions], dtype=float),
        probs=np.asarray(probs, dtype=float),
        policy_labels=list(policy.labels),
        missing_ids=len(wanted) - len(ids),
    )
