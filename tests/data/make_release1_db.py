"""How tests/data/release1.db was made: a store written by the first release (commit 6b3fa29).

    git worktree add /tmp/release1 6b3fa29
    cd /tmp && PYTHONPATH=/tmp/release1 python tests/data/make_release1_db.py OUT.db
"""
import sys
import zlib

import numpy as np

from tracer_core import Tracer
def emb(texts):
    out=[]
    for t in texts:
        k=int(t.split()[0][3:]) if t.startswith("lab") else 99
        rng=np.random.default_rng(zlib.crc32(t.encode()))
        base=np.zeros(32)
        if k<99: base[k]=3.0
        else: base[20:]=3.0
        v=base+rng.normal(0,0.6,32); out.append(v/np.linalg.norm(v))
    return np.array(out,dtype=np.float32)
t=Tracer("release1", sys.argv[1], alpha=0.9, embedder=emb, auto_refit=False, fingerprint="0123456789abcdef")
texts=[f"lab{i%8} item {i}" for i in range(400)]
t.record_many(texts,[x.split()[0] for x in texts])
print(t.fit().summary())
for i in range(20):
    x=f"lab{i%8} later {i}" if i % 4 else f"far away {i}"; d=t.route(x)
    if d.handled: t.record(x, d.label, source="surrogate", metadata={"score": d.score, "policy_version": d.policy_version, "integration": "langchain"})
    else: t.record(x, x.split()[0] if x.startswith("lab") else "lab0", metadata={"deferred_reason": d.reason, "policy_version": d.policy_version, "integration": "langchain"})
t.record("lab1 an observed one", "lab1", metadata={"deferred_reason": "not_checked", "policy_version": None})
t.close()
