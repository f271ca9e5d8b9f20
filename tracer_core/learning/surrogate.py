"""Surrogate classifiers on embeddings, trained with scikit-learn and stored as plain arrays.

Each model is fit with scikit-learn, then reduced to its weight arrays so that a stored
policy predicts with numpy alone and loading it never executes code (no pickle). The fit's
surrogate is `fit_ensemble`: the average of three of them, whose confidence ranks inputs about
as well as the best one or better, without the noise of picking one (bench/results.md,
"Coverage targets").
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

log = logging.getLogger("tracer")


@contextmanager
def _convergence_logged(what: str) -> Iterator[None]:
    """Send scikit-learn's ConvergenceWarnings to the `tracer` logger (debug) instead of the terminal."""
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        yield
    for warning in caught:
        if issubclass(warning.category, ConvergenceWarning):
            log.debug("%s: %s", what, warning.message)
        else:  # anything else is not ours to hide
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


@dataclass
class LinearSurrogate:
    """Multinomial logistic regression: softmax(X W^T + b)."""

    weights: np.ndarray  # (n_labels, dim)
    bias: np.ndarray  # (n_labels,)
    kind: str = "logistic"

    def __post_init__(self) -> None:
        # (dim, n_labels), contiguous: a sparse product against a transposed view copies it per call
        self._columns = np.ascontiguousarray(self.weights.T)

    def predict_proba(self, x: np.ndarray, sparse_extra=None) -> np.ndarray:
        """`x` dense features; `sparse_extra` the sparse columns that follow them, if any."""
        d = x.shape[1]
        logits = x @ self._columns[:d] + self.bias
        if sparse_extra is not None:
            logits += sparse_extra @ self._columns[d:]
        return softmax(logits)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"w0": self.weights, "b0": self.bias}


@dataclass
class MLPSurrogate:
    """One hidden ReLU layer and a softmax output."""

    weights: list[np.ndarray]  # [(dim, hidden), (hidden, n_labels)]
    biases: list[np.ndarray]
    kind: str = "mlp"

    def predict_proba(self, x: np.ndarray, sparse_extra=None) -> np.ndarray:
        if sparse_extra is not None:
            raise ValueError("the MLP surrogate takes embeddings only")
        h = x
        for w, b in zip(self.weights[:-1], self.biases[:-1]):
            h = np.maximum(h @ w + b, 0.0)
        return softmax(h @ self.weights[-1] + self.biases[-1])

    def arrays(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            out[f"w{i}"], out[f"b{i}"] = w, b
        return out


@dataclass
class EnsembleSurrogate:
    """The average of its members' label probabilities; member i reads the TF-IDF columns when `sparse[i]`."""

    members: list[LinearSurrogate | MLPSurrogate]
    sparse: list[bool]
    kind: str = "ensemble"

    def predict_proba(self, x: np.ndarray, sparse_extra=None) -> np.ndarray:
        total = self.members[0].predict_proba(x, sparse_extra if self.sparse[0] else None)
        for member, sparse in zip(self.members[1:], self.sparse[1:]):
            total += member.predict_proba(x, sparse_extra if sparse else None)
        return total / len(self.members)

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"kinds": np.array([m.kind for m in self.members]), "sparse": np.array(self.sparse, dtype=np.uint8)}
        for i, member in enumerate(self.members):
            out |= {f"m{i}_{k}": v for k, v in member.arrays().items()}
        return out


Surrogate = LinearSurrogate | MLPSurrogate | EnsembleSurrogate


def surrogate_from_arrays(kind: str, arrays: dict[str, np.ndarray]) -> Surrogate:
    """Rebuild a surrogate from the arrays `Surrogate.arrays()` returned."""
    if kind == "ensemble":
        members = [
            _model_from_arrays(member, {k[len(f"m{i}_"):]: v for k, v in arrays.items() if k.startswith(f"m{i}_")})
            for i, member in enumerate(arrays["kinds"].tolist())
        ]
        return EnsembleSurrogate(members, [bool(s) for s in arrays["sparse"].tolist()])
    return _model_from_arrays(kind, arrays)


def _model_from_arrays(kind: str, arrays: dict[str, np.ndarray]) -> LinearSurrogate | MLPSurrogate:
    """One model (an ensemble's member or a policy's only model) from its arrays."""
    if kind == "logistic":
        return LinearSurrogate(arrays["w0"], arrays["b0"])
    if kind == "mlp":
        n = len([k for k in arrays if k.startswith("w")])
        return MLPSurrogate([arrays[f"w{i}"] for i in range(n)], [arrays[f"b{i}"] for i in range(n)])
    raise ValueError(f"unknown surrogate kind {kind!r}")


def fit_logistic(x: np.ndarray, y: np.ndarray, n_labels: int, seed: int = 0, c: float = 20.0) -> LinearSurrogate:
    """Logistic regression on L2-normalised embeddings (C tuned for MiniLM-like encoders)."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=c, max_iter=200, random_state=seed)
    with _convergence_logged("logistic regression"):
        model.fit(x, y)
    weights = np.zeros((n_labels, x.shape[1]), dtype=np.float32)
    bias = np.full(n_labels, -1e4, dtype=np.float32)
    if len(model.classes_) == 2:
        # binary sklearn models keep one row; expand to the two-row softmax form
        weights[model.classes_[1]] = model.coef_[0] / 2
        weights[model.classes_[0]] = -model.coef_[0] / 2
        bias[model.classes_[1]] = model.intercept_[0] / 2
        bias[model.classes_[0]] = -model.intercept_[0] / 2
    else:
        weights[model.classes_] = model.coef_
        bias[model.classes_] = model.intercept_
    return LinearSurrogate(weights, bias)


def fit_mlp(x: np.ndarray, y: np.ndarray, n_labels: int, seed: int = 0, hidden: int = 256) -> MLPSurrogate:
    """A small MLP (one hidden layer, weight decay) with a fixed budget of epochs."""
    from sklearn.neural_network import MLPClassifier

    model = MLPClassifier(
        hidden_layer_sizes=(hidden,), alpha=1e-3, max_iter=30, batch_size=min(128, len(y)),
        learning_rate_init=2e-3, random_state=seed,
    )
    with _convergence_logged("MLP (fixed epoch budget)"):
        model.fit(x, y)
    w_out = np.zeros((hidden, n_labels), dtype=np.float32)
    b_out = np.full(n_labels, -1e4, dtype=np.float32)
    if len(model.classes_) == 2:
        # binary MLPs have one logistic output: logit z -> softmax over [0, z]
        w_out[:, model.classes_[1]] = model.coefs_[1][:, 0]
        b_out[model.classes_[1]] = model.intercepts_[1][0]
        b_out[model.classes_[0]] = 0.0
    else:
        w_out[:, model.classes_] = model.coefs_[1]
        b_out[model.classes_] = model.intercepts_[1]
    return MLPSurrogate(
        [model.coefs_[0].astype(np.float32), w_out], [model.intercepts_[0].astype(np.float32), b_out]
    )


def fit_ensemble(vectors: np.ndarray, joined, y: np.ndarray, n_labels: int, seed: int = 0) -> EnsembleSurrogate:
    """Logistic regression on the embedding, the same on `joined` (embedding + TF-IDF) and the MLP, averaged."""
    members: list[LinearSurrogate | MLPSurrogate] = [
        fit_logistic(vectors, y, n_labels, seed=seed), fit_logistic(joined, y, n_labels, seed=seed),
        fit_mlp(vectors, y, n_labels, seed=seed),
    ]
    return EnsembleSurrogate(members, [False, True, False])
