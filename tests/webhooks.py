"""Local webhook endpoints for the event tests: one that receives JSON, one that accepts connections and
never answers, and an address that refuses connections."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class EventReceiver:
    """A real HTTP server on 127.0.0.1 that keeps every JSON body POSTed to it (and the request's path)."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self.paths: list[str] = []
        self.headers: list[dict] = []
        received = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.events.append(json.loads(body))
                received.paths.append(self.path)
                received.headers.append(dict(self.headers))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def url(self, secret: str = "") -> str:
        return f"http://127.0.0.1:{self.port}/hook" + (f"?token={secret}" if secret else "")

    def kinds(self) -> list[str]:
        return [event["kind"] for event in self.events]

    def wait_for(self, kind: str, seconds: float = 10.0) -> dict:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for event in self.events:
                if event["kind"] == kind:
                    return event
            time.sleep(0.02)
        raise AssertionError(f"no {kind} event reached the receiver; got {self.kinds()}")

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class HangingServer:
    """Accepts every connection and never answers (a webhook that hangs)."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook?token=hang-secret"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self._sock.close()
        for conn in self.accepted:
            conn.close()


def refusing_url() -> str:
    """A URL on a port nothing listens on (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook?token=refused-secret"
