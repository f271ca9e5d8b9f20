"""The serialised description of a chain whose prompt and model cannot be found (the identity fallback).

Secrets, endpoints and transport settings (base URL, retries, timeouts, proxies, headers)
are left out: they change where the call goes, not what it answers.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from langchain_core.load import dumpd
from langchain_core.runnables import Runnable

TRANSPORT_KEYS = frozenset(
    {
        "openai_api_base", "base_url", "api_base", "azure_endpoint", "openai_api_key", "api_key",
        "openai_organization", "organization", "openai_proxy", "http_client", "http_async_client",
        "default_headers", "default_query", "max_retries", "request_timeout", "timeout",
        "streaming", "stream_usage", "verbose", "callbacks", "tags", "metadata", "cache",
        "rate_limiter", "client", "async_client", "root_client", "root_async_client",
    }
)
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def chain_description_hash(chain: Runnable) -> str:
    """A 16-hex-digit hash of the chain's serialised form, without secrets and transport settings."""
    return hash_description(describe(chain))


def describe(chain: Runnable) -> Any:
    """The chain's `dumpd` form reduced to what determines its answers."""
    return strip_transport(dumpd(chain))


def hash_description(description: Any) -> str:
    data = json.dumps(description, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(data.encode("utf-8")).hexdigest()[:16]


def strip_transport(node: Any) -> Any:
    if isinstance(node, dict):
        if node.get("type") == "secret":
            return None
        return {k: strip_transport(v) for k, v in node.items() if k not in TRANSPORT_KEYS}
    if isinstance(node, list):
        return [strip_transport(v) for v in node]
    if isinstance(node, str):
        return _ADDRESS.sub("", node)
    return node
