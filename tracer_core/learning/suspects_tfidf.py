"""Each fold's word TF-IDF for the suspects' cross-fit, cut from one count matrix of every text.

`Tfidf.fit` (learning/features.py) tokenises its texts again for each fold; here the 1-2 gram counts are
taken once and a fold keeps the terms of at least MIN_DF of its training texts, weighted as scikit-learn's
`TfidfVectorizer(min_df=MIN_DF, **TFIDF_PARAMS)` fitted on those texts weights them (same terms in the same
order, smooth idf, sublinear tf, l2 rows).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from tracer_core.learning.features import MIN_DF, TFIDF_PARAMS

if TYPE_CHECKING:
    from scipy.sparse import csr_matrix


def term_counts(texts: list[str]) -> csr_matrix:
    """Word 1-2 gram counts of every text (columns: every term, alphabetical)."""
    from sklearn.feature_extraction.text import CountVectorizer

    params = {k: v for k, v in TFIDF_PARAMS.items() if k != "sublinear_tf"}
    return CountVectorizer(**params).fit_transform(texts).astype(np.float32).tocsr()


def fold_terms(counts: csr_matrix, train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(columns of the terms in >= MIN_DF training texts, their idf), as TfidfVectorizer fitted on them."""
    df = np.bincount(counts[train].indices, minlength=counts.shape[1])
    columns = np.flatnonzero(df >= MIN_DF)
    idf = np.log((1.0 + len(train)) / (1.0 + df[columns])) + 1.0
    return columns, idf.astype(np.float32)


def weighted(counts: csr_matrix, rows: np.ndarray, columns: np.ndarray, idf: np.ndarray) -> csr_matrix:
    """TF-IDF of the texts `rows` on the terms `columns`: (1 + log count) x idf, rows scaled to unit length."""
    x = counts[rows][:, columns].tocsr()
    x.data = (1.0 + np.log(x.data)) * idf[x.indices]
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
    x.data /= np.repeat(np.where(norms > 0, norms, 1.0), np.diff(x.indptr)).astype(np.float32)
    return x
