"""Out-of-distribution check: Mahalanobis distance to the nearest label mean (shared covariance)."""

from __future__ import annotations

import numpy as np


class MahalanobisOOD:
    """Distance of an embedding to the closest class mean under the pooled within-class covariance."""

    def __init__(self, means: np.ndarray, whitener: np.ndarray):
        self.means = means  # (n_labels, dim), already whitened
        self.whitener = whitener  # (dim, dim): d(x, m)^2 = |x W - m W|^2
        self._mean_norms = (means**2).sum(axis=1)

    @classmethod
    def fit(cls, vectors: np.ndarray, y: np.ndarray, shrinkage: float = 0.1) -> MahalanobisOOD:
        labels = np.unique(y)
        means = np.stack([vectors[y == c].mean(axis=0) for c in labels])
        centred = vectors - means[np.searchsorted(labels, y)]
        cov = centred.T @ centred / max(len(vectors) - len(labels), 1)
        cov = (1 - shrinkage) * cov + shrinkage * np.trace(cov) / cov.shape[0] * np.eye(cov.shape[0])
        whitener = np.linalg.cholesky(np.linalg.inv(cov)).astype(np.float32)
        return cls((means @ whitener).astype(np.float32), whitener)

    def distance(self, vectors: np.ndarray) -> np.ndarray:
        z = vectors @ self.whitener
        d2 = (z**2).sum(axis=1)[:, None] - 2 * z @ self.means.T + self._mean_norms[None, :]
        return np.sqrt(np.maximum(d2.min(axis=1), 0.0))

    def arrays(self) -> dict[str, np.ndarray]:
        return {"ood_means": self.means, "ood_whitener": self.whitener}
