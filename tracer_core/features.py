"""Input features: the sentence embedding, optionally joined by word TF-IDF stored as plain arrays."""

from __future__ import annotations

import numpy as np
from scipy.sparse import csr_matrix, hstack
from sklearn.feature_extraction.text import TfidfVectorizer

TFIDF_PARAMS = {"ngram_range": (1, 2), "sublinear_tf": True, "lowercase": True}


class Tfidf:
    """Word 1-2 gram TF-IDF rebuilt from its vocabulary and idf weights (no pickle)."""

    def __init__(self, terms: list[str], idf: np.ndarray):
        self.terms = terms
        self.idf = idf
        self._vectorizer = TfidfVectorizer(vocabulary=terms, **TFIDF_PARAMS)
        self._vectorizer.idf_ = idf

    @classmethod
    def fit(cls, texts: list[str], min_df: int = 2) -> Tfidf:
        vectorizer = TfidfVectorizer(min_df=min_df, **TFIDF_PARAMS).fit(texts)
        return cls(vectorizer.get_feature_names_out().tolist(), vectorizer.idf_.astype(np.float32))

    def transform(self, texts: list[str]) -> csr_matrix:
        return self._vectorizer.transform(texts).astype(np.float32)


def join_features(vectors: np.ndarray, texts: list[str], tfidf: Tfidf | None):
    """Embeddings alone, or embeddings next to TF-IDF as one sparse matrix."""
    if tfidf is None:
        return vectors
    return hstack([csr_matrix(vectors), tfidf.transform(texts)]).tocsr()
