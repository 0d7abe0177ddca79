"""Loopback HTTP stand-ins for model providers (standard library only).

``StubServer(responder)`` listens on 127.0.0.1 (a free port), records every
request (method, path, query, headers, JSON body, arrival time) and answers
with ``responder(request) -> dict``, the JSON body of a success in that
provider's wire format. Queued faults are served first, one per request:
``Fault(status=429, headers={"Retry-After": "1"})``, ``Fault(status=500)``,
``Fault(delay=30)`` (a slow answer; released when the server stops, so
nothing outlives a test), ``Fault(raw=b"not json")`` (a malformed body).

The provider replies below also answer a streaming request (``"stream": true``, or
Gemini's ``:streamGenerateContent?alt=sse``) in that provider's server-sent events,
one event per piece of the reply (a list of pieces, or a string cut into words),
written one at a time; the joined pieces and the usage equal the JSON answer's.
"""

from __future__ import annotations

import json
import re
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


@dataclass
class Stream:
    """A reply sent as server-sent events, one chunk (and flush) per event."""

    events: list[tuple[str | None, Any]]  # (event name or None, JSON data or a raw line)


Responder = Callable[[Recorded], "dict[str, Any] | Stream"]


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

            def handle(self) -> None:
                try:
                    super().handle()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client dropped a kept-alive connection

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
                    if isinstance(reply, Stream):
                        self._send_events(reply)
                    else:
                        payload = json.dumps(reply).encode()
                        self._send(200, payload, fault.headers if fault else {})

            def _send_events(self, stream: Stream) -> None:
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for name, data in stream.events:
                        line = data if isinstance(data, str) else json.dumps(data)
                        event = (f"event: {name}\n" if name else "") + f"data: {line}\n\n"
                        raw = event.encode()
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(raw), raw))
                        self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass

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

Reply = Callable[[Recorded], "str | list[str]"]


def pieces_of(text: str) -> list[str]:
    """``text`` cut into words, each with the whitespace after it (joined: ``text``)."""
    return re.findall(r"\s*\S+\s*|\s+", text) if text else []


def _pieces(reply: str | list[str] | Reply, request: Recorded) -> list[str]:
    value = reply(request) if callable(reply) else reply
    return list(value) if isinstance(value, list) else pieces_of(value)


def _text(reply: str | list[str] | Reply, request: Recorded) -> str:
    return "".join(_pieces(reply, request))


def _streaming(request: Recorded) -> bool:
    return isinstance(request.body, dict) and request.body.get("stream") is True


def openai_chat(
    reply: str | list[str] | Reply = "pong",
    prompt_tokens: int = 11,
    completion_tokens: int = 3,
    cached_tokens: int = 0,
    cost: float | None = None,
) -> Responder:
    """``POST .../chat/completions`` (OpenAI, Azure, Portkey, OpenRouter, vLLM). Streamed:
    one ``chat.completion.chunk`` per piece, the usage in a last chunk with no choices
    only when ``stream_options.include_usage`` asks for it (as OpenAI does), then
    ``[DONE]``."""

    def respond(request: Recorded) -> dict[str, Any] | Stream:
        usage: dict[str, Any] = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens},
        }
        if cost is not None:
            usage["cost"] = cost
        base = {
            "id": "chatcmpl-stub",
            "created": 0,
            "model": (request.body or {}).get("model", "stub"),
        }
        if _streaming(request):
            chunk = {**base, "object": "chat.completion.chunk"}
            events: list[tuple[str | None, Any]] = []
            for i, piece in enumerate(_pieces(reply, request)):
                delta = {"content": piece, **({"role": "assistant"} if i == 0 else {})}
                choice = {"index": 0, "delta": delta, "finish_reason": None}
                events.append((None, {**chunk, "choices": [choice]}))
            end = {"index": 0, "delta": {}, "finish_reason": "stop"}
            events.append((None, {**chunk, "choices": [end]}))
            if ((request.body or {}).get("stream_options") or {}).get("include_usage"):
                events.append((None, {**chunk, "choices": [], "usage": usage}))
            return Stream([*events, (None, "[DONE]")])
        return {
            **base,
            "object": "chat.completion",
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
    reply: str | list[str] | Reply = "pong",
    input_tokens: int = 11,
    output_tokens: int = 3,
    cache_read: int = 0,
    cache_write: int = 0,
) -> Responder:
    """``POST /v1/messages``. Streamed: ``message_start`` (the input usage),
    ``content_block_start``, a ``ping``, one ``content_block_delta`` per piece,
    ``content_block_stop``, ``message_delta`` (the output tokens) and ``message_stop``."""

    def respond(request: Recorded) -> dict[str, Any] | Stream:
        message = {
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
        if not _streaming(request):
            return message
        start = {
            **message,
            "content": [],
            "stop_reason": None,
            "usage": {**message["usage"], "output_tokens": 1},
        }
        events: list[tuple[str | None, Any]] = [
            ("message_start", {"type": "message_start", "message": start}),
            (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
            ),
            ("ping", {"type": "ping"}),
        ]
        for piece in _pieces(reply, request):
            delta = {"type": "text_delta", "text": piece}
            events.append(
                (
                    "content_block_delta",
                    {"type": "content_block_delta", "index": 0, "delta": delta},
                )
            )
        finish = {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": output_tokens},
        }
        events += [
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ("message_delta", finish),
            ("message_stop", {"type": "message_stop"}),
        ]
        return Stream(events)

    return respond


def gemini_generate(
    reply: str | list[str] | Reply = "pong",
    prompt_tokens: int = 11,
    output_tokens: int = 3,
    cached_tokens: int = 0,
) -> Responder:
    """``POST /v1beta/models/{model}:generateContent``. Streamed
    (``:streamGenerateContent?alt=sse``): one ``GenerateContentResponse`` per piece, each
    with the prompt's usage so far, the last with ``finishReason`` and the whole usage."""

    def respond(request: Recorded) -> dict[str, Any] | Stream:
        usage = {
            "promptTokenCount": prompt_tokens,
            "candidatesTokenCount": output_tokens,
            "cachedContentTokenCount": cached_tokens,
            "totalTokenCount": prompt_tokens + output_tokens,
        }

        def response(text: str, last: bool = True) -> dict[str, Any]:
            candidate: dict[str, Any] = {
                "content": {"role": "model", "parts": [{"text": text}]},
                "index": 0,
            }
            if last:
                candidate["finishReason"] = "STOP"
            partial = {"promptTokenCount": prompt_tokens, "totalTokenCount": prompt_tokens}
            return {
                "candidates": [candidate],
                "usageMetadata": usage if last else partial,
                "modelVersion": "stub",
            }

        if not request.path.endswith(":streamGenerateContent"):
            return response(_text(reply, request))
        pieces = _pieces(reply, request) or [""]
        return Stream(
            [(None, response(p, last=i == len(pieces) - 1)) for i, p in enumerate(pieces)]
        )

    return respond
