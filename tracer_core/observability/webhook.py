"""POST events as JSON to a webhook URL from a background thread: a timeout, a few retries with
backoff, and the URL's secrets (a token in its query or user info) never shown."""

from __future__ import annotations

import base64
import http.client
import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

from tracer_core.observability.events import TracerEvent
from tracer_core.observability.outbox import Outbox
from tracer_core.settings import SettingsError
from tracer_core.store_address import MASK, redact

log = logging.getLogger("tracer.observability")

TIMEOUT_S = 2.0  # per attempt: connecting, and waiting for the answer
BACKOFF_S = (0.5, 2.0)  # before the second and the third attempt
WARN_EVERY_S = 60.0
EXITING = threading.Event()  # set at interpreter exit: no more waiting between attempts


class Webhook:
    """Where events are POSTed; `shown` is the URL as messages show it (scheme and host only)."""

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url.strip())
        # a token may be in the user info, the query or the path (Slack-style URLs): only scheme and host are shown
        self._secrets = tuple(s for s in (url, parts.query, parts.path.strip("/"), parts.password, parts.username) if s)
        host = parts.hostname or ""
        self.shown = f"{parts.scheme}://{host}" + ("/" + MASK if parts.path.strip("/") or parts.query else "")
        if parts.scheme not in ("http", "https") or not host:
            raise SettingsError(f"TRACER_WEBHOOK_URL must be an http:// or https:// URL with a host, got {self.shown!r}")
        try:
            port = f":{parts.port}" if parts.port else ""
        except ValueError:
            raise SettingsError(f"TRACER_WEBHOOK_URL has an invalid port: {self.shown!r}") from None
        self._target = urllib.parse.urlunsplit((parts.scheme, host + port, parts.path, parts.query, ""))
        self._headers = {"Content-Type": "application/json", "User-Agent": "tracer-webhook"}
        if parts.username is not None:
            user_info = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
            self._headers["Authorization"] = "Basic " + base64.b64encode(user_info.encode()).decode()
        self.outbox: Outbox[TracerEvent] = Outbox(self.deliver, "tracer-webhook")
        self._warned_at = -WARN_EVERY_S

    def send(self, event: TracerEvent) -> None:
        """Queue `event` for the background thread (never blocks)."""
        self.outbox.put(event)

    def deliver(self, event: TracerEvent) -> None:
        """POST one event, retrying a failure after each of BACKOFF_S (not once the interpreter exits);
        log (rate-limited) when it gives up."""
        body = json.dumps(event.to_dict(), default=str).encode("utf-8")
        for delay in (*BACKOFF_S, None):
            try:
                self._post(body)
                return
            except (OSError, http.client.HTTPException) as exc:  # URLError, HTTPError and timeouts are OSErrors
                if delay is None or EXITING.wait(delay):
                    self._warn(event, exc)
                    return

    def _post(self, body: bytes) -> None:
        request = urllib.request.Request(self._target, data=body, headers=self._headers, method="POST")
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            response.read()

    def _warn(self, event: TracerEvent, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY_S:
            self._warned_at = now
            why = redact(str(exc), self._secrets)
            log.warning("webhook %s: event %s not delivered after %d attempts (%s: %s)",
                        self.shown, event.kind, len(BACKOFF_S) + 1, type(exc).__name__, why)

