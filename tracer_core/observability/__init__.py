"""Operating tracer: Prometheus metrics, typed events (to callables and a webhook) and JSON logs.

Everything a service watches comes from here: `serve_metrics(port)` (or TRACER_METRICS_PORT),
`on_event(handler)` (and TRACER_WEBHOOK_URL), `use_json_logs()` (or TRACER_LOG_FORMAT=json).
The rest of tracer calls `observe` where its state changes.
"""

from tracer_core.observability.delivery import off_event, on_event
from tracer_core.observability.events import EventKind, TracerEvent
from tracer_core.observability.exposition import serve_metrics
from tracer_core.observability.jsonlog import JsonLogFormatter, apply_log_format_from_env, use_json_logs

__all__ = ["EventKind", "JsonLogFormatter", "TracerEvent", "off_event", "on_event", "serve_metrics", "use_json_logs"]

apply_log_format_from_env()
