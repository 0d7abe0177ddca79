"""A scripted OpenAI-compatible chat-completions server on 127.0.0.1, for scenario tests.

The server plays the model. Every ``POST .../chat/completions`` request is turned
into a :class:`ModelCall` (the request's messages, read the way a model reads
them) and handed to a *policy*, a function that returns the reply text. The
policy decides from what the request shows, as a model following the RLM
prompt would: on a root turn it writes a ```repl block that acts on the REPL
output it has been shown so far; asked for a summary it summarises; asked for a
last answer it answers from what it saw; a plain sub-call gets a plain answer.

Nothing here knows about one implementation's prompt wording more than a model
would: a root turn is recognised by a system prompt that teaches ```repl blocks
and ``llm_query``; a summary request and an out-of-turns request by their
plain-English asks. The same server therefore drives ``rlm`` and the public
``rlms`` package alike, which is how the scenario tests' expected answers were
checked (see tests/test_rlms_examples.py).

Only the standard library is used (``http.server.ThreadingHTTPServer``), so the
real ``openai`` (and ``portkey-ai``) client runs unmodified against it.
"""

from __future__ import annotations

import json
import re
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = [
    "FINAL",
    "PLAIN",
    "ROOT",
    "SUMMARY",
    "ModelCall",
    "ScriptedOpenAIServer",
    "classify",
    "repl_reply",
]

ROOT = "root"  # a root-model turn of an RLM loop (parent or child)
SUMMARY = "summary"  # a compaction request: "summarise your progress"
FINAL = "final"  # the loop ran out of turns and asks for a last answer
PLAIN = "plain"  # any other call: llm_query from the REPL, a leaf rlm_query, a direct client

_TURN_RE = re.compile(r"\bTurn (\d+)\s*(?:/|of)\s*(\d+)")
_SUMMARY_RE = re.compile(r"summar(?:y|ise|ize)\b[^.\n]{0,40}\byour progress", re.IGNORECASE)
_FINAL_RE = re.compile(
    r"please provide a final answer|no turns left|best final answer", re.IGNORECASE
)


def _text(content: Any) -> str:
    """The text of a message's content (a string, or a list of content parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict):
                parts.append(str(part.get("text", "")))
            else:
                parts.append(str(part))
        return "".join(parts)
    return str(content)


def classify(messages: list[dict[str, Any]]) -> tuple[str, int | None, int | None]:
    """``(kind, turn, max_turns)`` of a request, from its messages alone."""
    system = (
        _text(messages[0].get("content"))
        if messages and messages[0].get("role") == "system"
        else ""
    )
    if not ("```repl" in system and "llm_query" in system):
        return PLAIN, None, None
    last = messages[-1]
    last_text = _text(last.get("content"))
    if last.get("role") == "assistant" or _FINAL_RE.search(last_text):
        return FINAL, None, None
    if last.get("role") == "user" and _SUMMARY_RE.search(last_text):
        return SUMMARY, None, None
    match = _TURN_RE.search(last_text)
    if match:
        return ROOT, int(match.group(1)), int(match.group(2))
    return ROOT, None, None


@dataclass
class ModelCall:
    """One chat-completions request, as the model sees it."""

    messages: list[dict[str, Any]]
    model: str
    body: dict[str, Any]
    kind: str = field(init=False)
    turn: int | None = field(init=False)
    max_turns: int | None = field(init=False)

    def __post_init__(self) -> None:
        self.kind, self.turn, self.max_turns = classify(self.messages)

    @property
    def system(self) -> str:
        first = self.messages[0] if self.messages else {}
        return _text(first.get("content")) if first.get("role") == "system" else ""

    @property
    def prompt(self) -> str:
        """The last user message (the whole question of a plain call)."""
        for message in reversed(self.messages):
            if message.get("role") == "user":
                return _text(message.get("content"))
        return ""

    @property
    def shown(self) -> str:
        """Everything the caller showed the model: user messages (prompts and REPL output)."""
        return "\n".join(
            _text(m.get("content")) for m in self.messages if m.get("role") in ("user", "tool")
        )

    @property
    def written(self) -> str:
        """Everything the model itself wrote earlier in this conversation (assistant turns)."""
        return "\n".join(
            _text(m.get("content")) for m in self.messages if m.get("role") == "assistant"
        )

    def seen(self, marker: str) -> list[str]:
        """Values of REPL output lines ``MARKER: value``, oldest first.

        Only lines that *start* with the marker count, so the model's own code
        (``print("MARKER:", x)``), if it is ever echoed back, is not mistaken for output.
        """
        pattern = re.compile(rf"^{re.escape(marker)}:[ ]?(.*)$", re.MULTILINE)
        return [m.group(1).strip() for m in pattern.finditer(self.shown)]

    def last_seen(self, marker: str) -> str | None:
        values = self.seen(marker)
        return values[-1] if values else None

    def wrote(self, pattern: str) -> list[re.Match[str]]:
        """Matches of ``pattern`` in the model's own earlier turns (summaries included)."""
        return list(re.finditer(pattern, self.written, re.MULTILINE))


def repl_reply(prose: str, code: str) -> str:
    """A model reply: some prose, then one ```repl block."""
    return f"{prose.strip()}\n\n```repl\n{code.strip()}\n```"


def _estimate_tokens(text: str) -> int:
    return (len(text) + 3) // 4


@dataclass
class _Record:
    call: ModelCall
    reply: str | None
    error: str | None


class ScriptedOpenAIServer:
    """An OpenAI-compatible ``/chat/completions`` endpoint whose replies come from ``policy``.

    Use as a context manager (or call :meth:`start` / :meth:`stop`). ``base_url``
    is what an OpenAI-style client takes (``http://127.0.0.1:PORT/v1``). Every
    call is recorded in :attr:`calls`; a policy that raises answers HTTP 400 (which
    the clients do not retry) and the traceback lands in :attr:`errors`, so a test
    can fail with the policy's own error rather than with whatever the library
    made of a bad reply.
    """

    def __init__(self, policy: Callable[[ModelCall], str], window: int | None = None):
        self.policy = policy
        #: With a window (tokens, estimated as the usage is), a longer prompt is refused
        #: as llama.cpp's server refuses it (HTTP 400, ``context_length_exceeded``), the
        #: policy not asked; the refused requests' messages are in :attr:`refused`.
        self.window = window
        self.refused: list[list[dict[str, Any]]] = []
        self._lock = threading.Lock()
        self._records: list[_Record] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> ScriptedOpenAIServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, {"object": "list", "data": []})
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                try:
                    body = json.loads(raw or b"{}")
                except ValueError as exc:
                    self._send(400, {"error": {"message": f"bad JSON: {exc}"}})
                    return
                status, payload = owner._answer(body)
                if body.get("stream") and status == 200:
                    self._send_sse(payload)
                else:
                    self._send(status, payload)

            def _send_sse(self, payload: dict[str, Any]) -> None:
                """The reply as server-sent chunks (one per line), usage in the last."""
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                base = {k: payload[k] for k in ("id", "created", "model")}
                base["object"] = "chat.completion.chunk"
                text = payload["choices"][0]["message"]["content"]
                for piece in text.splitlines(keepends=True) or [""]:
                    delta = {"index": 0, "delta": {"content": piece}, "finish_reason": None}
                    chunk = {**base, "choices": [delta]}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                last = {**base, "choices": [], "usage": payload["usage"]}
                self.wfile.write(f"data: {json.dumps(last)}\n\ndata: [DONE]\n\n".encode())
                self.wfile.flush()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="scripted-openai", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> ScriptedOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._server is not None, "server not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    # -- what happened ---------------------------------------------------------

    @property
    def calls(self) -> list[ModelCall]:
        with self._lock:
            return [r.call for r in self._records]

    @property
    def replies(self) -> list[tuple[ModelCall, str]]:
        with self._lock:
            return [(r.call, r.reply) for r in self._records if r.reply is not None]

    @property
    def errors(self) -> list[str]:
        with self._lock:
            return [r.error for r in self._records if r.error is not None]

    def calls_of(self, kind: str) -> list[ModelCall]:
        return [c for c in self.calls if c.kind == kind]

    # -- answering -------------------------------------------------------------

    def _answer(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        messages = body.get("messages") or []
        model = str(body.get("model") or "")
        prompt_tokens = sum(_estimate_tokens(_text(m.get("content"))) + 4 for m in messages)
        if self.window is not None and prompt_tokens > self.window:
            with self._lock:
                self.refused.append(messages)
            message = (
                f"This model's maximum context length is {self.window} tokens. However, you "
                f"requested {prompt_tokens} tokens ({prompt_tokens} in the messages, None in "
                "the completion). Please reduce the length of the messages or completion."
            )
            error = {"message": message, "type": "invalid_request_error", "param": "messages"}
            return 400, {"error": {**error, "code": "context_length_exceeded"}}
        call = ModelCall(messages=messages, model=model, body=body)
        try:
            reply = self.policy(call)
        except Exception:
            error = traceback.format_exc()
            with self._lock:
                self._records.append(_Record(call, None, error))
            return 400, {"error": {"message": error, "type": "invalid_request_error"}}
        text = reply
        stop = body.get("stop")
        for marker in [stop] if isinstance(stop, str) else (stop or []):
            # As the real API does: cut at the first stop sequence, which is not returned.
            if marker and marker in text:
                text = text[: text.index(marker)]
        with self._lock:
            self._records.append(_Record(call, text, None))
        completion_tokens = _estimate_tokens(text)
        return 200, {
            "id": f"chatcmpl-scripted-{len(self._records)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
