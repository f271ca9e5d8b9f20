"""LiteLLM integration for tracer: one callback records every chat call and answers certified ones.

SDK:    litellm.callbacks = [TracerCallback(alpha=0.95)]
Proxy:  litellm_settings: {callbacks: tracer_litellm.proxy_handler}   (settings from TRACER_* variables)
"""

from __future__ import annotations

import threading
from typing import Any

from tracer_litellm.callback import TracerCallback
from tracer_litellm.settings import SettingsError, TracerSettings

__all__ = ["SettingsError", "TracerCallback", "TracerSettings"]

_proxy_lock = threading.Lock()
_proxy_handler: TracerCallback | None = None


def __getattr__(name: str) -> Any:
    """`tracer_litellm.proxy_handler`: the proxy's callback, made from TRACER_* variables on first access."""
    global _proxy_handler
    if name != "proxy_handler":
        raise AttributeError(f"module 'tracer_litellm' has no attribute {name!r}")
    with _proxy_lock:
        if _proxy_handler is None:
            _proxy_handler = TracerCallback.from_env()
        return _proxy_handler
