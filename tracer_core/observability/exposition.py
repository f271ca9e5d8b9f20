"""Serve the metrics over HTTP: `serve_metrics(port)`, or TRACER_METRICS_PORT when the first Tracer starts."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from tracer_core.errors import TracerError
from tracer_core.settings import SettingsError

log = logging.getLogger("tracer.observability")

PORT_ENV, ADDR_ENV = "TRACER_METRICS_PORT", "TRACER_METRICS_ADDR"
DEFAULT_ADDR = "0.0.0.0"  # as prometheus-client's own server: reachable by a Prometheus on another host

_lock = threading.Lock()
_served: tuple[int, int] | None = None  # (pid, port) of this process's server
_env_tried: int | None = None  # the pid that read TRACER_METRICS_PORT


def serve_metrics(port: int, addr: str = DEFAULT_ADDR) -> int:
    """Serve this process's Prometheus metrics (tracer's among them) at `http://addr:port/metrics`;
    returns the port (`port=0` picks a free one).

    With PROMETHEUS_MULTIPROC_DIR set it serves the sum over every process writing there. One server
    per process: a later call returns the port already served. Raises TracerError without
    prometheus-client, OSError if the port cannot be bound.
    """
    global _served
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise SettingsError(f"port must be an integer in [0, 65535], got {port!r}")
    try:
        import prometheus_client
    except ImportError:
        raise TracerError("serve_metrics needs prometheus-client: pip install 'tracer-router[ops]'") from None
    with _lock:
        if _served is not None and _served[0] == os.getpid():
            return _served[1]
        server, _ = prometheus_client.start_http_server(port, addr, registry=_registry(prometheus_client))
        _served = (os.getpid(), server.server_port)
        log.info("tracer metrics served at http://%s:%d/metrics", addr, server.server_port)
        return server.server_port


def _registry(prometheus_client: Any) -> Any:
    """The default registry, or one that sums the multiprocess directory's files."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return prometheus_client.REGISTRY
    from prometheus_client import multiprocess

    registry = prometheus_client.CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


def serve_from_env() -> None:
    """Once per process: serve on TRACER_METRICS_PORT (and TRACER_METRICS_ADDR) if set; a failure is logged."""
    global _env_tried
    if _env_tried == os.getpid():
        return
    _env_tried = os.getpid()
    raw = os.environ.get(PORT_ENV, "").strip()
    if not raw:
        return
    try:
        serve_metrics(int(raw) if raw.isdigit() else -1, os.environ.get(ADDR_ENV, "").strip() or DEFAULT_ADDR)
    except SettingsError:
        log.error("%s must be a port number in [0, 65535], got %r; tracer's metrics are not served", PORT_ENV, raw)
    except (TracerError, OSError) as exc:
        # several workers of one service share the variable: the first one serves (the sum, in multiprocess mode)
        log.warning("%s=%s: tracer's metrics are not served by process %d (%s)", PORT_ENV, raw, os.getpid(), exc)
