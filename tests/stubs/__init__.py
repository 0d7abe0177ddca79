"""Loopback HTTP stand-ins for model providers (standard library only).

``StubServer(responder)`` listens on 127.0.0.1 (a free port), records every
request (method, path, query, headers, JSON body, arrival time) and answers
with ``responder(request) -> dict``, the JSON body of a success in that
provider's wire format. Queued faults are served first, one per request:
``Fault(status=429, headers={"Retry-After": "1"})``, ``Fault(status=500)``,
``Fault(delay=30)`` (a slow answer; released when the server stops, so
nothing outlives a test), ``Fault(raw=b"not json")`` (a malformed body).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    body: Any
    at: float


@dataclass
class Fault:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None  # JSON body (defaults to a provider-style error)
    raw: bytes | None = None  # bytes sent as is, with Content-Type: application/json
    delay: float = 0.0  # seconds before answering (cut short when the server stops)


Responder = Callable[[Recorded], dict[str, Any]]


class StubServer:
    def __init__(self, responder: Responder):
        self.responder = responder
        self.requests: list[Recorded] = []
        self.faults: deque[Fault] = deque()
        self.stopping = threading.Event()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in separate writes

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                data = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                try:
                    body = json.loads(data) if data else None
                except ValueError:
                    body = data.decode("utf-8", "replace")
                request = Recorded(
                    method=self.command,
                    path=parts.path,
                    query=parse_qs(parts.query),
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                    at=time.monotonic(),
                )
                stub.requests.append(request)
                fault = stub.faults.popleft() if stub.faults else None
                if fault is not None and fault.delay:
                    stub.stopping.wait(fault.delay)
                if fault is not None and fault.raw is not None:
                    self._send(fault.status, fault.raw, fault.headers)
                elif fault is not None and fault.status != 200:
                    error = fault.body or {
                        "error": {"message": f"stub error {fault.status}", "type": "stub_error"}
                    }
                    self._send(fault.status, json.dumps(error).encode(), fault.headers)
                else:
                    reply = stub.responder(request)
                    self._send(200, json.dumps(reply).encode(), fault.headers if fault else {})

            def _send(self, status: int, payload: bytes, headers: dict[str, str]) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (its timeout): nothing to answer

            do_POST = _serve
            do_GET = _serve

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}"

    def __enter__(self) -> StubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def bodies(self) -> list[Any]:
        return [r.body for r in self.requests]


# -- replies in each provider's wire format --------------------------------------------

Reply = Callable[[Recorded], str]


def _text(reply: str | Reply, request: Recorded) -> str:
    return reply(request) if callable(reply) else reply


def openai_chat(
    reply: str | Reply = "pong",
    prompt_tokens: int = 11,
    completion_tokens: int = 3,
    cached_tokens: int = 0,
    cost: float | None = None,
) -> Responder:
    """``POST .../chat/completions`` (OpenAI, Azure, Portkey, OpenRouter, vLLM)."""

    def respond(request: Recorded) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens},
        }
        if cost is not None:
            usage["cost"] = cost
        return {
            "id": "chatcmpl-stub",
            "object": "chat.completion",
            "created": 0,
            "model": (request.body or {}).get("model", "stub"),
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": _text(reply, request)},
                }
            ],
            "usage": usage,
        }

    return respond


def anthropic_messages(
    reply: str | Reply = "pong",
    input_tokens: int = 11,
    output_tokens: int = 3,
    cache_read: int = 0,
    cache_write: int = 0,
) -> Responder:
    """``POST /v1/messages``."""

    def respond(request: Recorded) -> dict[str, Any]:
        return {
            "id": "msg_stub",
            "type": "message",
            "role": "assistant",
            "model": (request.body or {}).get("model", "stub"),
            "content": [{"type": "text", "text": _text(reply, request)}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
                "cache_read_input_tokens": cache_read,
                "cache_creation_input_tokens": cache_write,
            },
        }

    return respond


def gemini_generate(
    reply: str | Reply = "pong",
    prompt_tokens: int = 11,
    output_tokens: int = 3,
    cached_tokens: int = 0,
) -> Responder:
    """``POST /v1beta/models/{model}:generateContent``."""

    def respond(request: Recorded) -> dict[str, Any]:
        return {
            "candidates": [
                {
                    "content": {"role": "model", "parts": [{"text": _text(reply, request)}]},
                    "finishReason": "STOP",
                    "index": 0,
                }
            ],
            "usageMetadata": {
                "promptTokenCount": prompt_tokens,
                "candidatesTokenCount": output_tokens,
                "cachedContentTokenCount": cached_tokens,
                "totalTokenCount": prompt_tokens + output_tokens,
            },
            "modelVersion": "stub",
        }

    return respond
