"""tracer: record LLM classification traces, train a surrogate, answer only where it is certified."""

from tracer_core.decision import Decision, Reason
from tracer_core.errors import TracerError
from tracer_core.identity import TaskIdentity, identify
from tracer_core.labels import structured_label, text_label
from tracer_core.learning.certificate import Certificate
from tracer_core.learning.embedder import Embedder, get_default_embedder
from tracer_core.observability import EventKind, JsonLogFormatter, TracerEvent, off_event, on_event, serve_metrics, use_json_logs
from tracer_core.serving.registry import TracerRegistry, registry_for
from tracer_core.serving.tracer import Tracer
from tracer_core.storage.store import TraceStore
from tracer_core.storage.writer import FlushReport

__all__ = [
    "Certificate", "Decision", "Embedder", "FlushReport", "Reason", "TaskIdentity", "TraceStore", "Tracer", "TracerError",
    "TracerRegistry", "get_default_embedder", "identify", "registry_for", "structured_label", "text_label",
    # operating it: metrics, events, JSON logs (tracer_core.observability)
    "EventKind", "JsonLogFormatter", "TracerEvent", "off_event", "on_event", "serve_metrics", "use_json_logs",
]
__version__ = "0.1.0"
