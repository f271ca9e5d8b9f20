"""tracer: record LLM classification traces, train a surrogate, answer only where it is certified."""

from tracer_core.certificate import Certificate
from tracer_core.decision import Decision
from tracer_core.embedder import Embedder, get_default_embedder
from tracer_core.errors import TracerError
from tracer_core.store import TraceStore
from tracer_core.tracer import Tracer
from tracer_core.writer import FlushReport

__all__ = ["Certificate", "Decision", "Embedder", "FlushReport", "TraceStore", "Tracer", "TracerError", "get_default_embedder"]
__version__ = "0.1.0"
