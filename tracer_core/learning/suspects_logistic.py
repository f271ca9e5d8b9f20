"""The suspects' logistic regression: scikit-learn's multinomial L-BFGS fit, with the dense block kept dense.

`fit_logistic` (learning/surrogate.py) hands scikit-learn the embedding joined to the TF-IDF as one sparse
matrix, so every product with the 384 dense columns runs through the sparse kernels; here the embedding goes
through BLAS and only the TF-IDF columns are sparse, in float32. The objective, the start (zeros) and the
optimiser's settings are scikit-learn's (but a shorter L-BFGS memory), so the fitted probabilities match `fit_logistic`'s within the
solver's tolerance; `start` lets a caller begin from an earlier solution fitted without the held-out traces.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from tracer_core.learning.surrogate import LinearSurrogate

if TYPE_CHECKING:
    from scipy.sparse import csr_matrix

log = logging.getLogger("tracer")

MAX_ITER = 200  # scikit-learn's settings in `fit_logistic`
TOL = 2e-4  # scikit-learn: 1e-4; Banking77 T2 suspects keep their quality (bench suspects) in ~30% fewer steps
MAXCOR = 5  # L-BFGS memory (scikit-learn: 10): half its per-step cost at ~700,000 weights, a few more steps
_ABSENT_BIAS = -1e4  # a label with no training trace is never predicted (as in `fit_logistic`)


def fit_blocks(
    dense: np.ndarray, sparse: csr_matrix | None, y: np.ndarray, n_labels: int, c: float,
    start: LinearSurrogate | None = None, *, tol: float = TOL, memory: int = MAXCOR,
) -> LinearSurrogate:
    """Multinomial logistic regression on `dense` (n, d) next to `sparse` (n, v) columns, penalty 1/(2 c) |W|^2.

    The result's weights cover the dense then the sparse columns, for `LinearSurrogate.predict_proba(dense,
    sparse)`. `start`, if given, must have as many columns; only its rows of labels present in `y` are used.
    L-BFGS stops when no gradient entry exceeds `tol`, keeping `memory` past steps.
    """
    from scipy.optimize import minimize

    classes = np.unique(y)
    k = len(classes)
    targets = np.searchsorted(classes, y)
    dense = np.ascontiguousarray(dense, dtype=np.float32)
    n, d = dense.shape
    sparse = sparse.astype(np.float32).tocsr() if sparse is not None else None
    sparse_t = sparse.T.tocsr() if sparse is not None else None
    width = d + (sparse.shape[1] if sparse is not None else 0)
    # scikit-learn fits two labels with one logit and penalty 1/(2 c) |w|^2; the two-row softmax form of the
    # same model has rows +-w/2, so the same optimum needs half the C
    strength = 1.0 / ((c / 2 if k == 2 else c) * n)
    onehot = np.zeros((n, k), dtype=np.float32)
    onehot[np.arange(n), targets] = 1.0

    def loss_and_gradient(params: np.ndarray) -> tuple[float, np.ndarray]:
        weights = params[: width * k].reshape(width, k)
        w32 = weights.astype(np.float32)
        logits = dense @ w32[:d] + params[width * k :].astype(np.float32)
        if sparse is not None:
            logits += sparse @ w32[d:]
        top = logits.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(logits - top).sum(axis=1, keepdims=True)) + top
        loss = float(np.mean(log_norm[:, 0] - logits[np.arange(n), targets], dtype=np.float64))
        residual = (np.exp(logits - log_norm) - onehot) / n
        gradient = np.empty_like(params)
        grad_w = gradient[: width * k].reshape(width, k)
        grad_w[:d] = dense.T @ residual
        if sparse_t is not None:
            grad_w[d:] = sparse_t @ residual
        grad_w += strength * weights
        gradient[width * k :] = residual.sum(axis=0)
        return loss + 0.5 * strength * float(np.dot(params[: width * k], params[: width * k])), gradient

    params = np.zeros(width * k + k)
    if start is not None:  # its labels that had no training trace (bias _ABSENT_BIAS) start from 0
        known = np.where(start.bias[classes] > _ABSENT_BIAS / 2, 1.0, 0.0)
        params[: width * k] = (start.weights[classes].T * known).ravel()
        params[width * k :] = start.bias[classes] * known
    result = minimize(loss_and_gradient, params, method="L-BFGS-B", jac=True,
                      options={"maxiter": MAX_ITER, "maxcor": memory, "maxls": 50, "gtol": tol, "ftol": 64 * np.finfo(float).eps})
    if not result.success:
        log.debug("suspects' logistic regression: %s", result.message)
    weights = np.zeros((n_labels, width), dtype=np.float32)
    bias = np.full(n_labels, _ABSENT_BIAS, dtype=np.float32)
    weights[classes] = result.x[: width * k].reshape(width, k).T
    bias[classes] = result.x[width * k :]
    return LinearSurrogate(weights, bias)
