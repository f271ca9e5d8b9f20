"""No-code adoption through LangChain's LLM cache: `set_llm_cache(TracerLLMCache(task=...))`.

Every non-streaming chat-model call consults the cache. The cache routes the last human
message through a Tracer for that call's function (model settings + the other messages,
hashed into the fingerprint); a certified hit returns a stored real message of the
predicted label (so tool-call and structured-output parsers work), everything else goes to
the model and its answer is recorded as a teacher trace.

Limits: streaming calls (`stream`/`astream`, `streaming=True`) bypass the LLM cache in
LangChain, so they are neither answered nor recorded; a label is only replayed after a real
message with that label was seen by this process; generations with `n > 1` are not cached.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Sequence
from typing import Any

from langchain_core._api.beta_decorator import suppress_langchain_beta_warning
from langchain_core.caches import RETURN_VAL_TYPE, BaseCache
from langchain_core.load import loads
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGeneration, LLMResult

from tracer_langchain.bridge import Route, TracerBridge
from tracer_langchain.fingerprint import hash_description, strip_transport
from tracer_langchain.text import last_human_text
from tracer_langchain.usage import UsageCollector

log = logging.getLogger("tracer_langchain")
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


class TracerLLMCache(BaseCache):
    """A LangChain `BaseCache` that answers certified chat-model calls from tracer's surrogate."""

    def __init__(self, task: str, *, db: Any = None, **tracer_options: Any) -> None:
        from tracer_core import TraceStore

        self.task = task
        self.store = db if isinstance(db, TraceStore) else TraceStore(db)
        self.tracer_options = tracer_options
        self._bridges: dict[str, TracerBridge] = {}
        self._replay: dict[tuple[str, str], BaseMessage] = {}
        self._lock = threading.Lock()
        self._warned = False

    def bridge_for(self, fingerprint: str) -> TracerBridge:
        """The tracer bridge of one chat-model function (created on first use)."""
        with self._lock:
            if fingerprint not in self._bridges:
                from tracer_core import Tracer

                tracer = Tracer(task=self.task, db=self.store, fingerprint=fingerprint, **self.tracer_options)
                self._bridges[fingerprint] = TracerBridge(tracer=tracer)
            return self._bridges[fingerprint]

    def lookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        try:
            fingerprint, text = call_key(prompt, llm_string)
            bridge = self.bridge_for(fingerprint)
            decision = bridge.tracer.route(text)
            if not (decision.handled and decision.label is not None and decision.policy_version is not None):
                return None
            message = self._replay.get((fingerprint, decision.label))
            if message is None:
                return None
            bridge.record_surrogate(Route(text, decision.reason, decision, hit=True), "llm-cache")
            metadata = {**message.response_metadata, "tracer_handled": True, "tracer_policy_version": decision.policy_version}
            return [ChatGeneration(message=message.model_copy(update={"response_metadata": metadata}))]
        except Exception as exc:
            self._warn(exc)
            return None

    def update(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        try:
            if len(return_val) != 1 or not isinstance(return_val[0], ChatGeneration):
                return
            fingerprint, text = call_key(prompt, llm_string)
            bridge = self.bridge_for(fingerprint)
            message = return_val[0].message
            usage = UsageCollector()
            usage.on_llm_end(LLMResult(generations=[list(return_val)]))
            bridge.record_teacher(Route(text, "llm_cache_miss"), message, None, usage, "llm-cache")
            label = bridge.output_codec(message).to_label(message)
            replay = message.model_copy(update={"id": None, "usage_metadata": None})
            self._replay[(fingerprint, label.strip())] = replay
        except Exception as exc:
            self._warn(exc)

    def clear(self, **kwargs: Any) -> None:
        """Forget the replay messages (traces and policies stay in the store)."""
        self._replay.clear()

    def close(self) -> None:
        for bridge in self._bridges.values():
            bridge.tracer.close()

    def _warn(self, exc: BaseException) -> None:
        if not self._warned:
            self._warned = True
            log.warning("tracer LLM cache failed, calling the model instead: %s: %s", type(exc).__name__, exc)


def call_key(prompt: str, llm_string: str) -> tuple[str, str]:
    """(fingerprint, text) of a chat-model call: the function is the model settings plus every message but the text."""
    with suppress_langchain_beta_warning():
        messages = loads(prompt, allowed_objects="messages")
    if not isinstance(messages, Sequence) or not messages:
        raise ValueError("the LLM cache prompt is not a message list")
    text = last_human_text(messages)
    context = [(m.type, m.text) for m in messages]
    last = max(i for i, m in enumerate(messages) if m.type == "human")
    context[last] = ("human", "<text>")
    return hash_description({"model": _model_description(llm_string), "messages": context}), text


def _model_description(llm_string: str) -> Any:
    """The model part of an llm_string without endpoint, secrets or object addresses."""
    serialized, _, params = llm_string.partition("---")
    try:
        model = strip_transport(json.loads(serialized))
    except json.JSONDecodeError:
        model = serialized
    return {"model": model, "params": _ADDRESS.sub("", params)}
