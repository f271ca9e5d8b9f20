"""LangChain integration for tracer: wrap a classification chain, or just watch it.

    from tracer_langchain import with_tracer
    chain = with_tracer(prompt | llm | StrOutputParser(), task="support-intent", alpha=0.95)
"""

from tracer_langchain.codec import OutputCodec, learn_codec
from tracer_langchain.errors import CodecError, IntegrationConfigError, TextExtractionError
from tracer_langchain.fingerprint import chain_fingerprint
from tracer_langchain.runnable import TracedRunnable, with_tracer
from tracer_langchain.text import extract_text

__all__ = [
    "CodecError",
    "IntegrationConfigError",
    "OutputCodec",
    "TextExtractionError",
    "TracedRunnable",
    "chain_fingerprint",
    "extract_text",
    "learn_codec",
    "with_tracer",
]
