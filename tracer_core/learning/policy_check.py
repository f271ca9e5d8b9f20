"""Validation of a loaded policy: shapes agree, every number is finite, thresholds in range, labels unique.

A stored policy is data anyone with the database file can edit; `check_policy` runs on every
load, so a policy that would answer from NaN weights, a truncated weight matrix or a NaN
threshold is refused (PolicyError naming the problem) instead of used.
"""

from __future__ import annotations

import math

import numpy as np

from tracer_core.errors import PolicyError


def check_policy(policy) -> None:
    """Raise PolicyError naming the first inconsistency of `policy` (a `tracer_core.learning.policy.Policy`)."""
    labels = policy.labels
    if not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(x, str) and x for x in labels):
        raise PolicyError("policy labels must be a list of at least two non-empty strings")
    if len(set(labels)) != len(labels):
        raise PolicyError("policy labels are not unique")
    n = len(labels)
    _in_range("threshold", policy.threshold, 0.0, 1.0)
    _in_range("ood_threshold", policy.ood_threshold, 0.0, math.inf)
    _in_range("unseen_threshold", policy.unseen_threshold, -1.0, 1.0 + 1e-6)
    if not set(policy.excluded) <= set(labels):
        raise PolicyError("policy excludes labels it does not know")
    dim = _ood_dim(policy.ood, n)
    n_tfidf = 0
    if policy.tfidf is not None:
        n_tfidf = len(policy.tfidf.terms)
        _array("tfidf idf", policy.tfidf.idf, (n_tfidf,))
    _check_surrogate(policy.surrogate, n, dim, n_tfidf)
    unseen = _array("unseen vectors", policy.unseen_vectors, (None, dim) if len(policy.unseen_vectors) else None)
    if len(unseen) != len(policy.unseen_labels):
        raise PolicyError(f"policy has {len(unseen)} unseen-label vectors but {len(policy.unseen_labels)} labels for them")


def _ood_dim(ood, n_labels: int) -> int:
    whitener = _array("OOD whitener", ood.whitener, (None, None))
    if whitener.shape[0] != whitener.shape[1]:
        raise PolicyError(f"policy OOD whitener has shape {whitener.shape}, expected a square matrix")
    _array("OOD means", ood.means, (n_labels, whitener.shape[0]))
    return whitener.shape[0]


def _check_surrogate(surrogate, n_labels: int, dim: int, n_tfidf: int) -> None:
    if surrogate.kind == "ensemble":
        if not surrogate.members or len(surrogate.members) != len(surrogate.sparse):
            raise PolicyError("policy ensemble surrogate has no members or a TF-IDF flag count that does not match them")
        for member, sparse in zip(surrogate.members, surrogate.sparse):
            _check_surrogate(member, n_labels, dim, n_tfidf if sparse else 0)
        return
    if surrogate.kind == "logistic":
        _array("surrogate weights", surrogate.weights, (n_labels, dim + n_tfidf))
        _array("surrogate bias", surrogate.bias, (n_labels,))
        return
    if n_tfidf:
        raise PolicyError("policy pairs an MLP surrogate with TF-IDF features")
    width = dim
    for i, (w, b) in enumerate(zip(surrogate.weights, surrogate.biases)):
        last = i == len(surrogate.weights) - 1
        w = _array(f"surrogate layer {i} weights", w, (width, n_labels if last else None))
        _array(f"surrogate layer {i} bias", b, (w.shape[1],))
        width = w.shape[1]
    if len(surrogate.weights) != len(surrogate.biases) or not surrogate.weights:
        raise PolicyError("policy MLP surrogate has mismatched layers")


def _array(name: str, value, shape: tuple[int | None, ...] | None) -> np.ndarray:
    """`value` as an array of the expected shape (None = any size) with only finite numbers."""
    arr = np.asarray(value)
    if shape is not None and (arr.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, arr.shape))):
        expected = "(" + ", ".join("any" if s is None else str(s) for s in shape) + ")"
        raise PolicyError(f"policy {name} have shape {arr.shape}, expected {expected}")
    if not np.issubdtype(arr.dtype, np.number) or not np.isfinite(arr).all():
        raise PolicyError(f"policy {name} contain NaN, infinite or non-numeric values")
    return arr


def _in_range(name: str, value, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not low <= value <= high:
        raise PolicyError(f"policy {name} is {value!r}; it must be a finite number in [{low}, {high}]")
