"""Trace ids stored compactly in a certificate's JSON: `calibration_ids` as a packed array instead of a JSON list.

Packed: the differences between consecutive ids (the first from 0) as little-endian int64, zlib-compressed, base64
text, with the count: `{"packed": "delta-int64-zlib-base64", "n": 185000, "data": "..."}`, about a tenth of the
JSON list (calibration ids are sorted and dense, so most differences are small). The order of the ids is kept.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from typing import Any

import numpy as np

from tracer_core.errors import StoreError

PACKED_KEYS = ("calibration_ids",)  # certificate fields that hold trace ids
FORMAT = "delta-int64-zlib-base64"


def pack_ids(ids: list[int]) -> dict:
    """`ids` as a packed array (see the module docstring)."""
    deltas = np.diff(np.asarray(ids, dtype=np.int64), prepend=0).astype("<i8")
    return {"packed": FORMAT, "n": len(ids), "data": base64.b64encode(zlib.compress(deltas.tobytes())).decode("ascii")}


def unpack_ids(packed: dict) -> list[int]:
    """The ids `pack_ids` packed; StoreError if the value is not one of its arrays."""
    try:
        if packed.get("packed") != FORMAT:
            raise ValueError(f"unknown packing {packed.get('packed')!r}")
        raw = zlib.decompress(base64.b64decode(packed["data"], validate=True))
        ids = np.cumsum(np.frombuffer(raw, dtype="<i8")).tolist()
        if len(ids) != packed["n"]:
            raise ValueError(f"{len(ids)} ids where {packed['n']} were packed")
    except (ValueError, KeyError, TypeError, zlib.error, binascii.Error) as exc:
        raise StoreError(f"packed trace ids cannot be read: {exc}") from None
    return ids


def packed_certificate(certificate: dict) -> dict:
    """The certificate as stored: its id lists packed (a copy; the caller's dict is unchanged)."""
    lists = {k: certificate[k] for k in PACKED_KEYS if isinstance(certificate.get(k), list)}
    return {**certificate, **{k: pack_ids(v) for k, v in lists.items()}} if lists else certificate


def unpacked_certificate(certificate: dict[str, Any]) -> dict[str, Any]:
    """The certificate as read: packed id arrays back as lists (in place; returned)."""
    for key in PACKED_KEYS:
        if isinstance(certificate.get(key), dict):
            certificate[key] = unpack_ids(certificate[key])
    return certificate
