"""A synthetic classification task a surrogate can learn, with a deterministic embedder (plumbing tests).

Inputs look like "lab3 item 17"; the embedding puts each label on its own axis plus noise
seeded by the text, so a linear surrogate learns the labels; "far away ..." inputs lie on
other axes (out of distribution).
"""

from __future__ import annotations

import zlib

import numpy as np

DIM = 32
N_LABELS = 8


def label_of(text: str) -> str:
    return text.split()[0] if text.startswith("lab") else "lab0"


def texts(n: int, tag: str = "item", n_labels: int = N_LABELS) -> list[str]:
    return [f"lab{i % n_labels} {tag} {i}" for i in range(n)]


def embed(batch: list[str]) -> np.ndarray:
    out = np.empty((len(batch), DIM), dtype=np.float32)
    for row, text in enumerate(batch):
        rng = np.random.default_rng(zlib.crc32(text.encode("utf-8")))
        base = np.zeros(DIM)
        if text.startswith("lab"):
            base[int(text.split()[0][3:]) % 20] = 3.0
        else:
            base[20:] = 3.0
        vector = base + rng.normal(0.0, 0.6, DIM)
        out[row] = vector / np.linalg.norm(vector)
    return out
