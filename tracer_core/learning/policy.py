"""A certified policy: surrogate + threshold + filters, stored as plain arrays and JSON.

`Policy.to_bytes()` writes an `.npz` archive of numeric arrays plus one JSON document;
`Policy.from_bytes()` reads it with `allow_pickle=False`, so loading a policy never runs code.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from tracer_core.decision import Decision, Reason
from tracer_core.errors import PolicyError
from tracer_core.learning.certificate import Certificate
from tracer_core.learning.features import Tfidf, predict_proba
from tracer_core.learning.ood import MahalanobisOOD
from tracer_core.learning.policy_check import check_policy
from tracer_core.learning.policy_seal import LEGACY_FORMAT, check_seal
from tracer_core.learning.surrogate import Surrogate, surrogate_from_arrays

FORMAT = "tracer-policy/2"  # the certificate holds the artifact's SHA-256 (see policy_seal)
FORMATS = (LEGACY_FORMAT, FORMAT)
PLAUSIBLE = 0.01  # a label the surrogate gives at least this probability is a plausible answer for the input


@dataclass
class Policy:
    """Everything `route()` needs, fixed before the calibration labels were looked at."""

    labels: list[str]
    surrogate: Surrogate
    tfidf: Tfidf | None
    ood: MahalanobisOOD
    ood_threshold: float
    threshold: float
    excluded: set[str]  # labels never handed (validation or calibration evidence)
    unseen_vectors: np.ndarray  # traces of labels too rare to train on
    unseen_labels: list[str]
    unseen_threshold: float
    certificate: Certificate
    version: int | None = None
    format: str = FORMAT

    @property
    def dimension(self) -> int:
        """The embedding dimension the policy takes."""
        return int(self.ood.whitener.shape[0])

    def predict_proba(self, texts: list[str], vectors: np.ndarray) -> np.ndarray:
        return predict_proba(self.surrogate, vectors, texts, self.tfidf)

    def decide(self, texts: list[str], vectors: np.ndarray) -> list[Decision]:
        """Route a batch: the first failing check names the reason; all checks pass -> handled."""
        proba = self.predict_proba(texts, vectors)
        predicted = proba.argmax(axis=1)
        scores = proba[np.arange(len(predicted)), predicted]
        far = self.ood.distance(vectors) > self.ood_threshold
        near_unseen = self._near_unseen(vectors)
        likely = proba >= PLAUSIBLE
        out = []
        for i, (p, s) in enumerate(zip(predicted, scores)):
            label = self.labels[p]
            if near_unseen[i]:
                reason = Reason.UNSEEN_LABEL
            elif far[i]:
                reason = Reason.OUT_OF_DISTRIBUTION
            elif label in self.excluded:
                reason = Reason.LABEL_NOT_CERTIFIED
            elif s < self.threshold:
                reason = Reason.LOW_CONFIDENCE
            else:
                reason = Reason.HANDLED
            plausible = (tuple(self.labels[j] for j in np.flatnonzero(likely[i]))
                         if reason == Reason.LOW_CONFIDENCE else ())
            out.append(Decision(label, reason == Reason.HANDLED, float(s), reason, self.version, plausible))
        return out

    def _near_unseen(self, vectors: np.ndarray) -> np.ndarray:
        if not len(self.unseen_vectors):
            return np.zeros(len(vectors), dtype=bool)
        return (vectors @ self.unseen_vectors.T).max(axis=1) >= self.unseen_threshold

    # -- storage -------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        meta = {
            "format": FORMAT,
            "labels": self.labels,
            "surrogate": self.surrogate.kind,
            "tfidf_terms": self.tfidf.terms if self.tfidf else None,
            "ood_threshold": self.ood_threshold,
            "threshold": self.threshold,
            "excluded": sorted(self.excluded),
            "unseen_labels": self.unseen_labels,
            "unseen_threshold": self.unseen_threshold,
        }
        arrays = {f"s_{k}": v for k, v in self.surrogate.arrays().items()}
        arrays |= self.ood.arrays()
        arrays["unseen_vectors"] = self.unseen_vectors
        if self.tfidf:
            arrays["tfidf_idf"] = self.tfidf.idf
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
        buf = io.BytesIO()
        # mypy also matches **arrays to savez_compressed's `allow_pickle: bool` (numpy >= 2.1 stubs); the keys are
        # array names ('s_*', 'ood_*', 'unseen_vectors', 'tfidf_idf', 'meta'), never that flag
        np.savez_compressed(buf, **cast(dict[str, Any], arrays))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes, certificate: Certificate, version: int | None = None) -> Policy:
        try:
            with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
            meta = json.loads(arrays.pop("meta").tobytes().decode("utf-8"))
        except Exception as exc:
            raise PolicyError(f"stored policy is not a readable tracer policy: {exc}") from exc
        if not isinstance(meta, dict) or meta.get("format") not in FORMATS:
            found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
            raise PolicyError(f"stored policy has format {found!r}, expected one of {', '.join(FORMATS)}")
        try:
            surrogate = surrogate_from_arrays(meta["surrogate"], {k[2:]: v for k, v in arrays.items() if k.startswith("s_")})
            tfidf = Tfidf(meta["tfidf_terms"], arrays["tfidf_idf"]) if meta["tfidf_terms"] else None
            policy = cls(
                labels=meta["labels"], surrogate=surrogate, tfidf=tfidf,
                ood=MahalanobisOOD(arrays["ood_means"], arrays["ood_whitener"]),
                ood_threshold=meta["ood_threshold"], threshold=meta["threshold"], excluded=set(meta["excluded"]),
                unseen_vectors=arrays["unseen_vectors"], unseen_labels=meta["unseen_labels"],
                unseen_threshold=meta["unseen_threshold"], certificate=certificate, version=version,
                format=meta["format"],
            )
        except Exception as exc:
            raise PolicyError(f"stored policy is incomplete: {type(exc).__name__}: {exc}") from None
        check_policy(policy)
        return policy

    @classmethod
    def from_row(cls, row: dict) -> Policy:
        """Load and validate a row of the store's `policies` table; PolicyError if it is not usable or its
        certificate does not vouch for it (see `policy_seal`)."""
        try:
            certificate = Certificate.from_dict(row["certificate"])
        except TypeError as exc:
            reason = row["certificate"].get("reason") if isinstance(row["certificate"], dict) else None
            raise PolicyError(reason or f"policy v{row['version']} has an incomplete certificate: {exc}") from None
        policy = cls.from_bytes(row["artifact"], certificate, row["version"])
        check_seal(policy, row["artifact"])
        return policy
