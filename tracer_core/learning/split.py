"""Which traces of a task version calibrate, and which train and validate: a split kept for the version's life.

A trace of the calibration pool (an unselected trace: a uniform sample of traffic) is
calibration-side when a hash of (salt, trace id) falls below its fraction: AUDIT_CAL_FRACTION for an
audit (a call the policy in force would have answered, sent to the LLM at random), CAL_FRACTION for
the others (before any policy, while suspended, or recorded without a decision); every other trace
is training-side. The side depends on nothing but the id, the salt (a task version's name and
fingerprint) and whether the trace was recorded as an audit (known when it was recorded, never its
label), so it never changes as the store grows: a calibration-side trace never trains or validates
a model of the version, and a training-side trace never calibrates.

The gate reads only the newest CAL_WINDOW calibration-side traces (by id), so that a certificate
describes recent traffic; older calibration-side traces move to the training side for good (the
window only moves forward: traces are only ever added after it). Within the training side,
train and validation are drawn at random, seeded, by the same kind of hash (salted with the seed):
at most `max_train` of them together (those of smallest hash), validation the share of smallest
hash. A trace keeps its part as the store grows (but at the margins), so successive refits look at
much the same validation traces instead of fresh draws: repeated looks do not chase lucky ones.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

CAL_FRACTION = 0.30
# Audits come at 5% of the calls a policy answers, while the deferred calls (a third of traffic) feed the training
# side: audits calibrate at a higher fraction, so the window of a deployed version grows (bench `replay`).
AUDIT_CAL_FRACTION = 1.0
VAL_FRACTION = 0.15  # of all traces when every trace may calibrate: validation is 0.15 / 0.70 of the training side
CAL_WINDOW = 4_000  # newest calibration-side traces the gate reads (bench `lifetime`, "calibration window")

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def uniform_of(ids: np.ndarray, salt: str) -> np.ndarray:
    """A number in [0, 1) per trace id, uniform and independent across ids, fixed by (salt, id) alone (splitmix64)."""
    key = np.uint64(int.from_bytes(hashlib.sha256(salt.encode("utf-8")).digest()[:8], "little"))
    x = np.asarray(ids, dtype=np.int64).astype(np.uint64) * _GOLDEN + key  # wraps modulo 2^64
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) * 2.0**-53


def calibration_side(ids: np.ndarray, salt: str, audit: np.ndarray | None = None) -> np.ndarray:
    """True where trace `id` is calibration-side for `salt`, were it in the calibration pool (fixed forever);
    `audit` marks the traces recorded as audits (default: none)."""
    fraction = CAL_FRACTION if audit is None else np.where(audit, AUDIT_CAL_FRACTION, CAL_FRACTION)
    return uniform_of(ids, salt) < fraction


@dataclass(frozen=True)
class Split:
    """Row indices of each part. Rows in no part are not used by the fit at all.

    `n_pool` counts the traces that may calibrate (the pool); `n_available` those on the
    training side (all but the calibration window), of which at most `max_train` train and validate.
    """

    train: np.ndarray
    val: np.ndarray
    cal: np.ndarray
    n_pool: int
    n_available: int

    @classmethod
    def persistent(
        cls, ids: np.ndarray, pool: np.ndarray, *, salt: str, seed: int, max_train: int | None = None,
        audit: np.ndarray | None = None,
    ) -> Split:
        """The split of traces `ids` (with `pool` marking those that may calibrate, `audit` those recorded as audits)
        for a version salted `salt`."""
        ids = np.asarray(ids)
        side = np.nonzero(pool & calibration_side(ids, salt, audit))[0]
        cal = np.sort(side[np.argsort(ids[side], kind="stable")][-CAL_WINDOW:])
        training = np.ones(len(ids), dtype=bool)
        training[cal] = False
        rest = np.nonzero(training)[0]
        n_available = len(rest)
        if max_train is not None and len(rest) > max_train:
            rest = rest[np.argsort(uniform_of(ids[rest], f"{salt}\x00train\x00{seed}"), kind="stable")[:max_train]]
        n_val = round(len(rest) * VAL_FRACTION / (1.0 - CAL_FRACTION))
        order = np.argsort(uniform_of(ids[rest], f"{salt}\x00validation\x00{seed}"), kind="stable")
        return cls(np.sort(rest[order[n_val:]]), np.sort(rest[order[:n_val]]), cal, int(pool.sum()), n_available)

    @property
    def used(self) -> np.ndarray:
        """Every row the fit reads, ascending."""
        return np.sort(np.concatenate([self.train, self.val, self.cal]))

    @property
    def training(self) -> np.ndarray:
        """Train and validation rows, ascending: the only rows whose labels decide anything before the gate."""
        return np.sort(np.concatenate([self.train, self.val]))

    def renumbered(self) -> Split:
        """The same split over `used` only (row i of the result is row used[i] here)."""
        used = self.used
        train, val, cal = (np.searchsorted(used, part) for part in (self.train, self.val, self.cal))
        return Split(train, val, cal, self.n_pool, self.n_available)
