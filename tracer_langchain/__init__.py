"""LangChain integration for tracer: wrap a classification chain, watch it, or short-circuit via the LLM cache.

    from tracer_langchain import with_tracer
    chain = with_tracer(prompt | llm | StrOutputParser(), task="support-intent", alpha=0.95)
"""

from tracer_langchain.codec import OutputCodec, learn_codec
from tracer_langchain.errors import AmbiguousTextError, CodecError, IntegrationConfigError, TextExtractionError
from tracer_langchain.identity import ChainIdentity
from tracer_langchain.llm_cache import TracerLLMCache
from tracer_langchain.observer import TracerObserver, observe, stop_observing
from tracer_langchain.runnable import TracedRunnable, with_tracer
from tracer_langchain.text import extract_text

__all__ = [
    "AmbiguousTextError",
    "ChainIdentity",
    "CodecError",
    "IntegrationConfigError",
    "OutputCodec",
    "TextExtractionError",
    "TracedRunnable",
    "TracerLLMCache",
    "TracerObserver",
    "extract_text",
    "learn_codec",
    "observe",
    "stop_observing",
    "with_tracer",
]
