"""A local OpenAI-compatible chat server that plays the teacher LLM.

It stands in for a real LLM in tests, examples and the demo: it answers
`POST /v1/chat/completions` (streamed or not) with a label looked up from the
last user message, counts the requests it receives, and can be told to fail.
Run standalone: `python -m tracer_demo.local_teacher [--data FILE.jsonl] --port 8011` (default data:
the bundled Banking77 train split).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from tracer_demo import banking77_path

Answer = Callable[[list[dict]], str] | Mapping[str, str]
SHUTDOWN_POLL_S = 0.02  # how often the serving loop checks for `stop` (the library default, 0.5 s, delays every stop)


def message_text(message: dict) -> str:
    """The text of one chat message (string content or joined text parts)."""
    content = message.get("content") or ""
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content)


def lookup_answer(table: Mapping[str, str]) -> Callable[[list[dict]], str]:
    """Answer with the label of the last user message: exact match, else a contained key."""

    def answer(messages: list[dict]) -> str:
        users = [m for m in messages if m.get("role") == "user"]
        text = message_text(users[-1]).strip() if users else ""
        if text in table:
            return table[text]
        for key, label in table.items():
            if key and key in text:
                return label
        return "unknown"

    return answer


def load_table(path: str | Path | Traversable) -> dict[str, str]:
    """Read `{"input", "label"}` (or `{"input", "teacher"}`) JSONL into a lookup table."""
    table: dict[str, str] = {}
    source = Path(path) if isinstance(path, str) else path
    with source.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                row = json.loads(line)
                table[row["input"]] = row.get("label", row.get("teacher"))
    return table


class LocalTeacher:
    """An OpenAI-compatible teacher on 127.0.0.1; use as a context manager."""

    def __init__(self, answer: Answer, port: int = 0, latency_s: float = 0.0, model: str = "teacher"):
        self.answer = lookup_answer(answer) if isinstance(answer, Mapping) else answer
        self.latency_s = latency_s
        self.model = model
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        self._failures: list[int] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(SHUTDOWN_POLL_S,), name="local-teacher", daemon=True
        )

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self.requests)

    def fail_next(self, n: int = 1, status: int = 500) -> None:
        """Make the next `n` chat requests fail with HTTP `status`."""
        with self._lock:
            self._failures.extend([status] * n)

    def start(self) -> LocalTeacher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> LocalTeacher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _take(self, body: dict) -> int | None:
        """Record a request; return an HTTP status to fail with, if one is queued."""
        with self._lock:
            self.requests.append(body)
            return self._failures.pop(0) if self._failures else None


def _tool_name(body: dict) -> str | None:
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        return choice.get("function", {}).get("name")
    tools = body.get("tools") or []
    if len(tools) == 1 and choice not in ("none", "auto"):
        return tools[0].get("function", {}).get("name")
    return None


def _wants_json(body: dict) -> bool:
    fmt = body.get("response_format") or {}
    return fmt.get("type") in ("json_schema", "json_object")


def _completion(body: dict, label: str, model: str) -> dict[str, Any]:
    """A non-streamed chat completion carrying `label` (as text, JSON or a tool call)."""
    prompt_tokens = sum(len(message_text(m).split()) for m in body.get("messages", [])) + 8
    message: dict[str, Any] = {"role": "assistant", "content": label}
    finish = "stop"
    tool = _tool_name(body)
    if tool:
        message = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_" + uuid.uuid4().hex[:12],
                    "type": "function",
                    "function": {"name": tool, "arguments": json.dumps({"label": label})},
                }
            ],
        }
        finish = "tool_calls"
    elif _wants_json(body) and not label.lstrip().startswith("{"):
        message["content"] = json.dumps({"label": label})
    return {
        "id": "chatcmpl-" + uuid.uuid4().hex[:12],
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": 3,
            "total_tokens": prompt_tokens + 3,
        },
    }


def _stream_chunks(completion: dict) -> list[dict]:
    """Split a completion into OpenAI stream chunks (role, content pieces, finish, usage)."""
    base = {k: completion[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}
    message = completion["choices"][0]["message"]
    finish = completion["choices"][0]["finish_reason"]

    def chunk(delta: dict, finish_reason: str | None = None) -> dict:
        return base | {"choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}

    chunks = [chunk({"role": "assistant", "content": ""})]
    if message.get("tool_calls"):
        call = message["tool_calls"][0]
        chunks.append(chunk({"tool_calls": [{"index": 0} | call]}))
    else:
        text = message["content"]
        step = max(1, len(text) // 3)
        chunks += [chunk({"content": text[i : i + step]}) for i in range(0, len(text), step)]
    chunks.append(chunk({}, finish))
    return chunks


def _handler_for(teacher: LocalTeacher) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _send_json(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path.rstrip("/").endswith("/models"):
                self._send_json(200, {"object": "list", "data": [{"id": teacher.model, "object": "model", "owned_by": "local"}]})
            else:
                self._send_json(404, {"error": {"message": "not found", "type": "invalid_request_error"}})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except json.JSONDecodeError:
                self._send_json(400, {"error": {"message": "body is not JSON", "type": "invalid_request_error"}})
                return
            if not self.path.rstrip("/").endswith("/chat/completions"):
                self._send_json(404, {"error": {"message": "not found", "type": "invalid_request_error"}})
                return
            failure = teacher._take(body)
            if failure:
                self._send_json(failure, {"error": {"message": f"injected failure {failure}", "type": "server_error"}})
                return
            if teacher.latency_s:
                time.sleep(teacher.latency_s)
            label = teacher.answer(body.get("messages", []))
            completion = _completion(body, label, body.get("model") or teacher.model)
            if body.get("stream"):
                self._stream(body, completion)
            else:
                self._send_json(200, completion)

        def _stream(self, body: dict, completion: dict) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            events = _stream_chunks(completion)
            if (body.get("stream_options") or {}).get("include_usage"):
                usage_chunk = {k: completion[k] for k in ("id", "created", "model")}
                events.append(usage_chunk | {"object": "chat.completion.chunk", "choices": [], "usage": completion["usage"]})
            for event in events:
                self.wfile.write(b"data: " + json.dumps(event).encode() + b"\n\n")
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
            self.close_connection = True

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the local stand-in teacher LLM (OpenAI-compatible).")
    parser.add_argument("--data", help='JSONL with {"input", "label"} lines (default: the bundled Banking77 train split)')
    parser.add_argument("--port", type=int, default=8011)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds to wait per request")
    args = parser.parse_args()
    teacher = LocalTeacher(load_table(args.data or banking77_path()), port=args.port, latency_s=args.latency)
    print(f"local teacher on {teacher.base_url}", flush=True)
    teacher.start()
    try:
        teacher._thread.join()
    except KeyboardInterrupt:
        teacher.stop()


if __name__ == "__main__":
    main()
