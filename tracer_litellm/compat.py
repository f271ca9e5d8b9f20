"""Make LiteLLM's sync cache-hit path work without the proxy packages.

In litellm 1.110.x every sync cache hit calls `_should_defer_streaming_cache_hit_callbacks`,
which imports the Anthropic messages stream iterator, which imports proxy modules, which
import fastapi. Without fastapi installed (a plain `pip install` of tracer) the hit raises
ImportError and the user's call fails. When that import chain cannot load, no such
iterator can exist either, so the check is answered without it: the same result, no import.
"""

from __future__ import annotations

import functools
from typing import Any

import litellm.caching.caching_handler as caching_handler

_PATCHED = "_tracer_import_safe"


def make_cache_hits_import_safe() -> None:
    """Wrap the cache-hit check once so a missing proxy dependency cannot fail a cache hit."""
    original = caching_handler._should_defer_streaming_cache_hit_callbacks
    if getattr(original, _PATCHED, False):
        return

    @functools.wraps(original)
    def should_defer(*, cached_result: Any) -> bool:
        try:
            return original(cached_result=cached_result)
        except ImportError:
            from litellm.responses.streaming_iterator import BaseResponsesAPIStreamingIterator

            return isinstance(cached_result, caching_handler.CustomStreamWrapper | BaseResponsesAPIStreamingIterator)

    setattr(should_defer, _PATCHED, True)
    caching_handler._should_defer_streaming_cache_hit_callbacks = should_defer
