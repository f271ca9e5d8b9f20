"""Input features: the sentence embedding, optionally joined by word TF-IDF stored as plain arrays."""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from scipy.sparse import csr_matrix

TFIDF_PARAMS = {"ngram_range": (1, 2), "sublinear_tf": True, "lowercase": True}
MIN_DF = 2  # a term counts when at least this many training texts hold it


class Tfidf:
    """Word 1-2 gram TF-IDF (sublinear tf, l2 norm) rebuilt from its vocabulary and idf weights.

    `transform` equals scikit-learn's `TfidfVectorizer.transform` but skips its per-call
    overhead, which dominates when routing one input at a time.
    """

    def __init__(self, terms: list[str], idf: np.ndarray):
        self.terms = terms
        self.idf = idf.astype(np.float32)
        self._index = {term: i for i, term in enumerate(terms)}

    @functools.cached_property
    def _analyze(self) -> Callable[[str], list[str]]:
        """scikit-learn's analyzer, built on the first transform (loading a policy does not import scikit-learn)."""
        from sklearn.feature_extraction.text import TfidfVectorizer

        return TfidfVectorizer(**TFIDF_PARAMS).build_analyzer()

    @classmethod
    def fit(cls, texts: list[str], min_df: int = MIN_DF) -> Tfidf:
        from sklearn.feature_extraction.text import TfidfVectorizer

        vectorizer = TfidfVectorizer(min_df=min_df, **TFIDF_PARAMS).fit(texts)
        return cls(vectorizer.get_feature_names_out().tolist(), vectorizer.idf_)

    def transform(self, texts: list[str]) -> csr_matrix:
        from scipy.sparse import csr_matrix

        indptr: list[int] = [0]
        cols: list[int] = []
        counts: list[int] = []
        for text in texts:
            found = Counter(i for i in map(self._index.get, self._analyze(text)) if i is not None)
            cols.extend(found.keys())
            counts.extend(found.values())
            indptr.append(len(cols))
        cols_arr = np.asarray(cols, dtype=np.int32)
        vals = (1.0 + np.log(np.asarray(counts, dtype=np.float32))) * self.idf[cols_arr]
        row_of = np.repeat(np.arange(len(texts)), np.diff(indptr))
        norms = np.sqrt(np.bincount(row_of, weights=vals**2, minlength=len(texts))).astype(np.float32)
        vals /= np.where(norms > 0, norms, 1.0)[row_of]
        return csr_matrix((vals, cols_arr, indptr), shape=(len(texts), len(self.terms)), dtype=np.float32)


def join_features(vectors: np.ndarray, texts: list[str], tfidf: Tfidf | None):
    """Training matrix: embeddings alone, or embeddings next to TF-IDF as one sparse matrix."""
    if tfidf is None:
        return vectors
    from scipy.sparse import csr_matrix, hstack

    return hstack([csr_matrix(vectors), tfidf.transform(texts)]).tocsr()


def predict_proba(surrogate, vectors: np.ndarray, texts: list[str], tfidf: Tfidf | None) -> np.ndarray:
    """Label probabilities without building the joined matrix (the fast path for routing)."""
    if tfidf is None:
        return surrogate.predict_proba(vectors)
    return surrogate.predict_proba(vectors, tfidf.transform(texts))
