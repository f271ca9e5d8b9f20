"""A policy answers only with a certificate that vouches for it.

At a fit, `seal` writes into the certificate the SHA-256 of the artifact bytes as they are stored
(they hold the surrogate, the labels and the thresholds) and of the label list; on every load,
`check_seal` refuses a policy whose bytes or labels do not match, whose certificate says it was
not deployed, or whose certificate and artifact disagree on the threshold.

Threat model: whoever can write the store can change traces and policies; the hash catches partial
and accidental edits (an artifact rewritten apart from its certificate, a certificate swapped or
edited), not a deliberate writer, who can recompute it.

Policies of an earlier release (artifact format `tracer-policy/1`) hold no hash: they keep
answering, shown as unverified (`tracer status`, the report) until the next fit replaces them.
An artifact of the current format without a hash is refused.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

from tracer_core.errors import PolicyError

if TYPE_CHECKING:
    from tracer_core.learning.policy import Policy

LEGACY_FORMAT = "tracer-policy/1"


def artifact_digest(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def labels_digest(labels: list[str]) -> str:
    return hashlib.sha256(json.dumps(labels, ensure_ascii=False).encode("utf-8")).hexdigest()


def seal(policy: Policy) -> bytes:
    """The artifact to store; its digests are written into the policy's certificate."""
    blob = policy.to_bytes()
    policy.certificate.artifact_sha256 = artifact_digest(blob)
    policy.certificate.labels_sha256 = labels_digest(policy.labels)
    return blob


def check_seal(policy: Policy, blob: bytes) -> None:
    """Raise PolicyError unless the certificate of `policy` (loaded from `blob`) vouches for it."""
    cert = policy.certificate
    if cert.deployed is not True:
        raise PolicyError(f"its certificate says it was not deployed ({cert.reason or cert.reason_code or 'no reason'})")
    if cert.artifact_sha256:
        if artifact_digest(blob) != cert.artifact_sha256:
            raise PolicyError("its artifact does not match the SHA-256 its certificate holds (it was changed after the fit)")
        if labels_digest(policy.labels) != cert.labels_sha256:
            raise PolicyError("its labels do not match the SHA-256 its certificate holds")
    elif policy.format != LEGACY_FORMAT:
        raise PolicyError("its certificate holds no SHA-256 of its artifact")
    if cert.threshold != policy.threshold:
        raise PolicyError(f"its certificate (threshold {cert.threshold}) and artifact (threshold {policy.threshold}) disagree")


def is_verified(certificate: dict) -> bool:
    """Whether a stored certificate binds its artifact (False: an earlier release's policy, unverified)."""
    return bool(certificate.get("artifact_sha256"))
