"""Which embedder a policy was fitted with, and whether a caller's embedder is the same one.

A policy's surrogate only means something on the embeddings it was trained on, so the certificate
records the embedder's identity: its kind and name (to tell people which one it is), its dimension
and a checksum of its embeddings of a few fixed probe strings (which decides). The checksum is
taken over a handful of numbers, each probe's projection on fixed ±1 directions, rounded to two
decimals, so float noise (BLAS thread counts, CPU kernels: ~1e-7) does not change it while
another model, or the same one with other weights or settings, does.
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import TYPE_CHECKING

import numpy as np

from tracer_core.learning.embedder import DEFAULT_MODEL, Embedder, EmbedFn, embed_checked

if TYPE_CHECKING:
    from tracer_core.learning.policy import Policy

PROBES = (
    "I lost my card and need a new one",
    "What is the capital of France?",
    "tracer probe: ünïcödé, digits 0123456789, punctuation ?!;",
    "Is it going to rain tomorrow in the mountains",
    "how do I reset my password",
)
DIRECTIONS = 3
DECIMALS = 2
SENTENCE_TRANSFORMERS = "sentence-transformers"
CALLABLE = "callable"


def identify(embed: EmbedFn) -> dict:
    """The identity of `embed`: {kind, name, dimension, checksum} (embeds the probe strings once)."""
    vectors = embed_checked(embed, list(PROBES)).astype(np.float64)
    dimension = int(vectors.shape[1])
    summary = np.round(vectors @ _directions(dimension), DECIMALS) + 0.0  # + 0.0: no "-0.00"
    checksum = hashlib.sha256(json.dumps([f"{v:.{DECIMALS}f}" for v in summary.ravel()]).encode()).hexdigest()[:16]
    if isinstance(embed, Embedder):
        kind, name = SENTENCE_TRANSFORMERS, embed.model_id
    else:
        kind, name = CALLABLE, _qualified_name(embed)
    return {"kind": kind, "name": name, "dimension": dimension, "checksum": checksum}


@functools.lru_cache(maxsize=8)
def _directions(dimension: int) -> np.ndarray:
    """DIRECTIONS fixed ±1/sqrt(d) columns, the same on every machine and numpy version (from SHA-256)."""
    n_bits = DIRECTIONS * dimension
    digests = (hashlib.sha256(f"tracer-embedder-probe:{k}".encode()).digest() for k in range(n_bits // 256 + 1))
    signs = np.unpackbits(np.frombuffer(b"".join(digests), dtype=np.uint8))[:n_bits].reshape(DIRECTIONS, dimension)
    return (signs.T.astype(np.float64) * 2.0 - 1.0) / np.sqrt(dimension)


def _qualified_name(embed: EmbedFn) -> str:
    """`module.function`, or `module.Class(...)` for a callable object (an instance of that class)."""
    if hasattr(embed, "__qualname__"):
        return f"{getattr(embed, '__module__', '?')}.{embed.__qualname__}"
    return f"{type(embed).__module__}.{type(embed).__qualname__}(...)"


def mismatch(policy: Policy, actual: dict) -> str | None:
    """Why `policy` cannot answer with the embedder whose identity is `actual`, in words that say which
    embedder it needs and how to give it; None when it can. A policy of an earlier release recorded no
    embedder: only its dimension is checked."""
    needed, version = policy.certificate.embedder, policy.version
    if needed is None:
        if policy.dimension == actual["dimension"]:
            return None
        return (f"policy v{version} takes {policy.dimension}-d embeddings and this process embeds with "
                f"{describe(actual)}; it was fitted by an earlier release, which did not record its embedder: "
                "give it the embedder it was fitted with, or refit")
    if needed.get("dimension") == actual["dimension"] and needed.get("checksum") == actual["checksum"]:
        return None
    return (f"policy v{version} was fitted with {describe(needed)}, but this process embeds with "
            f"{describe(actual)}: {how_to_give(needed)}")


def describe(identity: dict) -> str:
    """'the sentence-transformers model all-MiniLM-L6-v2 (384-d, checksum 1a2b3c4d)' or 'the embedding function f (...)'."""
    what = "sentence-transformers model" if identity.get("kind") == SENTENCE_TRANSFORMERS else "embedding function"
    return f"the {what} {identity.get('name')} ({identity.get('dimension')}-d, checksum {str(identity.get('checksum'))[:8]})"


def how_to_give(needed: dict) -> str:
    """How a caller gives a policy the embedder it needs."""
    name = needed.get("name")
    if needed.get("kind") == SENTENCE_TRANSFORMERS:
        if name == DEFAULT_MODEL:
            return "use the default embedder (Tracer without embedder=, TRACER_EMBEDDING_MODEL unset)"
        return (f"pass Tracer(..., embedder=Embedder({name!r})), or set TRACER_EMBEDDING_MODEL={name} "
                "(the CLI and the integrations read it)")
    return (f"pass Tracer(..., embedder={name}) from Python (the CLI embeds only with a sentence-transformers "
            "model, TRACER_EMBEDDING_MODEL)")


def needed_text(needed: dict | None, policy_dimension: int) -> tuple[str, str | None]:
    """What `tracer status` and the report show: (the embedder a policy needs, how to give it unless it is the default)."""
    if needed is None:
        return (f"not recorded (an earlier release's policy): any {policy_dimension}-d embedder, unverified",
                "refit to record the embedder in the certificate")
    default = needed.get("kind") == SENTENCE_TRANSFORMERS and needed.get("name") == DEFAULT_MODEL
    return describe(needed), None if default else how_to_give(needed)
