"""How tests/data/release1.db was made: a store written by the first release (commit 6b3fa29).

    git worktree add /tmp/release1 6b3fa29
    cd /tmp && PYTHONPATH=/tmp/release1 python tests/data/make_release1_db.py OUT.db

It uses the first release's API only (no decision=, routing context kept in metadata).
"""

import sys
import zlib

import numpy as np

from tracer_core import Tracer


def embed(texts):
    out = []
    for text in texts:
        k = int(text.split()[0][3:]) if text.startswith("lab") else 99
        rng = np.random.default_rng(zlib.crc32(text.encode()))
        base = np.zeros(32)
        if k < 99:
            base[k] = 3.0
        else:
            base[20:] = 3.0
        vector = base + rng.normal(0, 0.6, 32)
        out.append(vector / np.linalg.norm(vector))
    return np.array(out, dtype=np.float32)


tracer = Tracer("release1", sys.argv[1], alpha=0.9, embedder=embed, auto_refit=False, fingerprint="0123456789abcdef")
texts = [f"lab{i % 8} item {i}" for i in range(400)]
tracer.record_many(texts, [x.split()[0] for x in texts])
print(tracer.fit().summary())
for i in range(20):
    text = f"lab{i % 8} later {i}" if i % 4 else f"far away {i}"
    d = tracer.route(text)
    context = {"policy_version": d.policy_version, "integration": "langchain"}
    if d.handled:
        tracer.record(text, d.label, source="surrogate", metadata={"score": d.score, **context})
    else:
        label = text.split()[0] if text.startswith("lab") else "lab0"
        tracer.record(text, label, metadata={"deferred_reason": d.reason, **context})
tracer.record("lab1 an observed one", "lab1", metadata={"deferred_reason": "not_checked", "policy_version": None})
tracer.close()
