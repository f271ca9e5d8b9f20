"""Cross-fitted suspect evidence kept on disk, so `tracer suspects` and the report reuse it instead of refitting.

An entry is keyed by everything the evidence depends on: the embedder's identity, the scored traces (ids,
texts, labels), the seed and the method's settings. Any new, changed or removed trace gives another key, so
a stored entry always describes exactly the traces it is used for.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tracer_core.learning.embedder import default_cache_dir


@dataclass(frozen=True)
class EvidenceCache:
    """Where evidence is kept, and how to use it: `refit` recomputes (and stores) even when an entry exists;
    `reuse_only` never computes (a missing entry is reported instead)."""

    folder: Path
    refit: bool = False
    reuse_only: bool = False


@dataclass(frozen=True)
class Stored:
    """Evidence arrays read back, and when they were computed."""

    arrays: dict[str, np.ndarray]
    computed_at: float


def default_folder() -> Path:
    """`suspects/` inside the embedding cache folder (`$TRACER_CACHE_DIR` or ~/.cache/tracer/embeddings)."""
    return default_cache_dir() / "suspects"


def evidence_key(identity: dict, texts: Sequence[str], labels: Sequence[str], ids: Sequence[int], settings: dict) -> str:
    """A digest of the embedder identity, the method settings and every scored trace."""
    digest = hashlib.sha256(json.dumps([identity, settings], sort_keys=True).encode())
    for trace_id, text, label in zip(ids, texts, labels):
        digest.update(json.dumps([trace_id, text, label]).encode())
        digest.update(b"\0")
    return digest.hexdigest()[:32]


def load(folder: Path, key: str) -> Stored | None:
    """The stored evidence for `key`, or None (missing or unreadable: it is then computed again)."""
    path = folder / f"{key}.npz"
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        return Stored(arrays, path.stat().st_mtime)
    except (OSError, ValueError, KeyError):
        return None


def save(folder: Path, key: str, arrays: dict[str, Any]) -> None:
    """Write the entry through a temporary file (a reader never sees half of it); a failure only costs a refit."""
    partial = folder / f".{key}.{os.getpid()}.{time.monotonic_ns()}.npz"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(partial, **arrays)
        os.replace(partial, folder / f"{key}.npz")
    except OSError:
        partial.unlink(missing_ok=True)
