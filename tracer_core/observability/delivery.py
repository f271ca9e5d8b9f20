"""Where an event goes: a log line (`tracer.events`), the callables registered with `on_event`, and
the webhook of TRACER_WEBHOOK_URL. Callables and the webhook each run on a daemon thread of their
own, never on the caller's path; at exit both get at most EXIT_FLUSH_S together to finish."""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Callable

from tracer_core.observability.events import TracerEvent
from tracer_core.observability.outbox import Outbox
from tracer_core.observability.webhook import EXITING, Webhook
from tracer_core.settings import SettingsError

log = logging.getLogger("tracer.events")
WEBHOOK_ENV = "TRACER_WEBHOOK_URL"
EXIT_FLUSH_S = 0.5

EventHandler = Callable[[TracerEvent], object]
_handlers: list[EventHandler] = []
_failed: set[int] = set()  # handlers whose failure was logged
_lock = threading.Lock()
_webhook: tuple[str, Webhook | None] | None = None  # (the URL, its sender) of the last event


def on_event(handler: EventHandler) -> EventHandler:
    """Call `handler(event)` for every `TracerEvent` of this process (on a background thread, in order).

    An exception in it is logged once and never reaches tracer. Returns `handler` (a decorator works too).
    """
    with _lock:
        if handler not in _handlers:
            _handlers.append(handler)
    return handler


def off_event(handler: EventHandler) -> None:
    """Stop calling `handler` (registered with `on_event`); nothing happens if it is not registered."""
    with _lock:
        if handler in _handlers:
            _handlers.remove(handler)


def _call_handlers(event: TracerEvent) -> None:
    with _lock:
        handlers = list(_handlers)
    for handler in handlers:
        try:
            handler(event)
        except Exception:  # noqa: BLE001 - a user's handler must never break tracer
            if id(handler) not in _failed:
                _failed.add(id(handler))
                log.exception("tracer event handler %s failed on a %s event (logged once)",
                              getattr(handler, "__qualname__", handler), event.kind)


_calls: Outbox[TracerEvent] = Outbox(_call_handlers, "tracer-events")


def emit(event: TracerEvent) -> None:
    """Log `event`, then queue it for the registered handlers and the webhook (never blocks)."""
    subject = f" task {event.task!r} version {event.version}" if event.task is not None else ""
    log.info("tracer event %s%s: %s; why: %s; what to do: %s", event.kind, subject, event.what, event.why, event.action,
             extra={"tracer_event": event.to_dict()})
    if _handlers:
        _calls.put(event)
    webhook = _configured_webhook()
    if webhook is not None:
        webhook.send(event)


def _configured_webhook() -> Webhook | None:
    """The sender of TRACER_WEBHOOK_URL as it is now (a bad URL is logged once per value, without its secrets)."""
    global _webhook
    url = os.environ.get(WEBHOOK_ENV, "").strip()
    with _lock:
        if _webhook is None or _webhook[0] != url:
            try:
                _webhook = (url, Webhook(url) if url else None)
            except SettingsError as exc:
                log.error("%s; no event is posted", exc)
                _webhook = (url, None)
        return _webhook[1]


@atexit.register
def _flush_at_exit() -> None:
    """Give queued events at most EXIT_FLUSH_S to reach the handlers and the webhook (one attempt each); never more."""
    EXITING.set()
    deadline = time.monotonic() + EXIT_FLUSH_S
    outboxes = [_calls] + ([_webhook[1].outbox] if _webhook is not None and _webhook[1] is not None else [])
    for outbox in outboxes:
        outbox.drain(max(deadline - time.monotonic(), 0.0))
