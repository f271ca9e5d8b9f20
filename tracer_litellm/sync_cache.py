"""The sync short-circuit: a `litellm.cache` that answers from the surrogate.

LiteLLM runs no callback hook before the provider on the sync `completion` path, but it
does ask `litellm.cache.get_cache(...)` first. `SurrogateCache` answers that question
for sync chat calls the gate certifies, and hands everything else (misses, async calls,
writes) to the cache the user had set, or to an opt-in-only cache that never caches.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import litellm
from litellm.caching import Cache
from litellm.caching.caching import CacheMode

Answer = Callable[[dict[str, Any]], dict | None]


class SurrogateCache:
    """Answers sync chat completions from the surrogate; delegates all else to `inner`."""

    def __init__(self, answer: Answer, inner: Any | None = None) -> None:
        self.answer = answer
        self.inner = inner if inner is not None else Cache(type="local", mode=CacheMode.default_off)

    def get_cache(self, dynamic_cache_object: Any = None, **kwargs: Any) -> Any:
        if "messages" in kwargs and not kwargs.get("acompletion"):
            answered = self.answer(kwargs)
            if answered is not None:
                return answered
        return self.inner.get_cache(dynamic_cache_object=dynamic_cache_object, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def install_surrogate_cache(answer: Answer) -> SurrogateCache:
    """Put a `SurrogateCache` in front of whatever `litellm.cache` is now (once)."""
    current = litellm.cache
    if isinstance(current, SurrogateCache):
        current.answer = answer
        return current
    litellm.cache = SurrogateCache(answer, inner=current)
    return litellm.cache
