"""No-code adoption through LangChain's LLM cache: `set_llm_cache(TracerLLMCache(task=...))`.

Every non-streaming chat-model call consults the cache. The cache routes the last human
message through the Tracer of that call's task version (`tracer_core.identify` of the
model settings and the messages); a certified hit returns a stored real message of the
predicted label (so tool-call and structured-output parsers work), everything else goes to
the model and its answer is recorded as a teacher trace.

Calls with conversation history or non-text content are recorded, never answered.
Limits: streaming calls (`stream`/`astream`, `streaming=True`) bypass the LLM cache in
LangChain, so they are neither answered nor recorded; a label is only replayed after a real
message with that label was seen by this process; generations with `n > 1` are not cached.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from langchain_core._api.beta_decorator import suppress_langchain_beta_warning
from langchain_core.caches import RETURN_VAL_TYPE, BaseCache
from langchain_core.load import loads
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGeneration, LLMResult

from tracer_core import Decision, FlushReport, Reason, TaskIdentity, Tracer, TraceStore, identify, registry_for
from tracer_core.decision import deferred
from tracer_core.serving.tracer import DEFAULT_CLOSE_TIMEOUT_S, abandon_refits
from tracer_core.storage.trace import is_label
from tracer_langchain.codec import learn_codec
from tracer_langchain.fingerprint import hash_description, strip_transport
from tracer_langchain.identity import routed_index
from tracer_langchain.text import last_human_text
from tracer_langchain.usage import UsageCollector

log = logging.getLogger("tracer_langchain")
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


class TracerLLMCache(BaseCache):
    """A LangChain `BaseCache` that answers certified chat-model calls from tracer's surrogate."""

    def __init__(self, task: str, *, db: Any = None, **tracer_options: Any) -> None:
        self.task = task
        self.store = db if isinstance(db, TraceStore) else TraceStore(db)
        self.tracer_options = tracer_options
        self.tracers: dict[str, Tracer] = {}
        self._replay: dict[tuple[str, str], BaseMessage] = {}
        self._decisions: dict[tuple[str, str], Decision] = {}
        self._lock = threading.Lock()
        self._warned = False

    def tracer_for(self, identity: TaskIdentity) -> Tracer:
        tracer = registry_for(self.store).tracer(self.task, identity, **self.tracer_options)
        self.tracers[tracer.fingerprint] = tracer
        return tracer

    def lookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        try:
            identity, text = call_identity(prompt, llm_string)
            tracer = self.tracer_for(identity)
            decision = deferred(identity.blocked) if identity.blocked else tracer.route(text)
            if decision.handled and decision.label is not None and decision.policy_version is not None:
                message = self._replay.get((tracer.fingerprint, decision.label))
                if message is not None:
                    tracer.record(text, decision.label, decision=decision, metadata={"integration": "langchain-cache"})
                    metadata = {**message.response_metadata, "tracer_handled": True,
                                "tracer_policy_version": decision.policy_version}
                    return [ChatGeneration(message=message.model_copy(update={"response_metadata": metadata}))]
                decision = deferred(Reason.NO_CODEC, decision.policy_version, decision.label, decision.score)
            with self._lock:
                self._decisions[(prompt, llm_string)] = decision
            return None
        except Exception as exc:
            self._warn(exc)
            return None

    def update(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        try:
            with self._lock:
                decision = self._decisions.pop((prompt, llm_string), None)
            if len(return_val) != 1 or not isinstance(return_val[0], ChatGeneration):
                return
            identity, text = call_identity(prompt, llm_string)
            tracer = self.tracer_for(identity)
            message = return_val[0].message
            usage = UsageCollector()
            usage.on_llm_end(LLMResult(generations=[list(return_val)]))
            try:
                codec = learn_codec(message)
                label: str | None = codec.to_label(message)
                metadata = {"integration": "langchain-cache", "codec": codec.spec}
            except Exception as exc:  # recorded as an unparsed answer (a disagreement if it was an audit)
                self._warn(exc)
                label, metadata = None, {"integration": "langchain-cache"}
            tracer.record_answer(
                text, label, decision=decision, model=usage.model, prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens, metadata=metadata,
            )
            if label is not None and is_label(label):
                replay = message.model_copy(update={"id": None, "usage_metadata": None})
                self._replay[(tracer.fingerprint, label)] = replay
        except Exception as exc:
            self._warn(exc)

    def clear(self, **kwargs: Any) -> None:
        """Forget the replay messages (traces and policies stay in the store)."""
        self._replay.clear()

    def close(self, timeout: float | None = DEFAULT_CLOSE_TIMEOUT_S) -> FlushReport:
        """Abandon running background refits and flush, like `Tracer.close()` (the store stays open)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        abandoned = abandon_refits(list(self.tracers.values()), timeout)
        report = self.store.flush(None if deadline is None else max(deadline - time.monotonic(), 0.0))
        return replace(report, abandoned_refits=abandoned)

    def _warn(self, exc: BaseException) -> None:
        if not self._warned:
            self._warned = True
            log.warning("tracer LLM cache failed, calling the model instead: %s: %s", type(exc).__name__, exc)


def call_identity(prompt: str, llm_string: str) -> tuple[TaskIdentity, str]:
    """(identity, text) of a chat-model call: the model settings plus every message but the text.

    The model is named by a hash of its settings (the cache sees no model object); turns before
    the last human message other than system messages are conversation history.
    """
    with suppress_langchain_beta_warning():
        messages = loads(prompt, allowed_objects="messages")
    if not isinstance(messages, Sequence) or not messages:
        raise ValueError("the LLM cache prompt is not a message list")
    text = last_human_text(messages)
    routed = routed_index(messages, text)
    identity = identify(
        model="llm-cache/" + hash_description(_model_description(llm_string)),
        messages=[(m.type, m.content) for m in messages], routed_text=text,
        history=[i for i, m in enumerate(messages) if i < routed and m.type != "system"], origin="langchain",
    )
    return identity, text


def _model_description(llm_string: str) -> Any:
    """The model part of an llm_string without endpoint, secrets or object addresses."""
    serialized, _, params = llm_string.partition("---")
    try:
        model = strip_transport(json.loads(serialized))
    except json.JSONDecodeError:
        model = serialized
    return {"model": model, "params": _ADDRESS.sub("", params)}
