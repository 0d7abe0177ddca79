"""The LM handler's wire protocol.

A frame is a 4-byte big-endian length followed by that many bytes of UTF-8
JSON. Requests are ``{"prompt": ...}`` or ``{"prompts": [...]}`` with optional
``"model"`` and ``"depth"``; responses carry exactly one of
``chat_completion``, ``chat_completions`` or ``error`` (the other two present
as null). That much is the public ``rlms`` protocol, unchanged.

Ours adds three optional request keys -- ``"token"`` (the handler's secret;
a request without it is refused), ``"id"`` (echoed in the response) and
``"kind"`` (``"llm"``, the default, or ``"rlm"`` for ``rlm_query``) -- and
keeps connections open for many requests. The helpers below attach the token
for handlers started in this process, so callers need nothing new.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
from dataclasses import dataclass
from typing import Any

from rlm.core.types import RLMChatCompletion
from rlm.utils.exceptions import ProtocolError

#: Largest frame either side accepts (bytes). Big enough for a 100 MB prompt.
MAX_FRAME_BYTES = 512 * 1024 * 1024

_HEADER = struct.Struct(">I")


# ---------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------


@dataclass
class LMRequest:
    """A request to the LM handler: one prompt or a batch of prompts."""

    prompt: Any = None
    prompts: list[Any] | None = None
    model: str | None = None
    depth: int = 0
    token: str | None = None
    id: int | str | None = None
    kind: str = "llm"

    @property
    def is_batched(self) -> bool:
        return self.prompts is not None and len(self.prompts) > 0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.prompt is not None:
            out["prompt"] = self.prompt
        if self.prompts is not None:
            out["prompts"] = self.prompts
        if self.model is not None:
            out["model"] = self.model
        out["depth"] = self.depth
        if self.token is not None:
            out["token"] = self.token
        if self.id is not None:
            out["id"] = self.id
        if self.kind != "llm":
            out["kind"] = self.kind
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LMRequest:
        depth = data.get("depth", 0)
        return cls(
            prompt=data.get("prompt"),
            prompts=data.get("prompts"),
            model=data.get("model"),
            depth=depth if isinstance(depth, int) else 0,
            token=data.get("token"),
            id=data.get("id"),
            kind=data.get("kind") or "llm",
        )


@dataclass
class LMResponse:
    """The handler's answer: exactly one of ``chat_completion``, ``chat_completions``, ``error``."""

    error: str | None = None
    chat_completion: RLMChatCompletion | None = None
    chat_completions: list[RLMChatCompletion] | None = None
    id: int | str | None = None

    @property
    def success(self) -> bool:
        return self.error is None

    @property
    def is_batched(self) -> bool:
        return self.chat_completions is not None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"chat_completion": None, "chat_completions": None, "error": None}
        if self.error is not None:
            out["error"] = self.error
        elif self.chat_completions is not None:
            out["chat_completions"] = [c.to_dict() for c in self.chat_completions]
        elif self.chat_completion is not None:
            out["chat_completion"] = self.chat_completion.to_dict()
        else:
            out["error"] = "No chat completion or error provided."
        if self.id is not None:
            out["id"] = self.id
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LMResponse:
        if not isinstance(data, dict) or not data:
            return cls(error="Empty or invalid response from the LM handler")
        completions = data.get("chat_completions")
        completion = data.get("chat_completion")
        return cls(
            error=data.get("error"),
            chat_completion=RLMChatCompletion.from_dict(completion) if completion else None,
            chat_completions=[RLMChatCompletion.from_dict(c) for c in completions]
            if completions is not None
            else None,
            id=data.get("id"),
        )

    @classmethod
    def success_response(cls, chat_completion: RLMChatCompletion) -> LMResponse:
        return cls(chat_completion=chat_completion)

    @classmethod
    def batched_success_response(cls, chat_completions: list[RLMChatCompletion]) -> LMResponse:
        return cls(chat_completions=chat_completions)

    @classmethod
    def error_response(cls, error: str) -> LMResponse:
        return cls(error=error)


# ---------------------------------------------------------------------------
# Framing
# ---------------------------------------------------------------------------


def encode_frame(data: Any) -> bytes:
    text = json.dumps(data, ensure_ascii=False, default=repr)
    try:
        payload = text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates (e.g. surrogateescape-decoded text)
        payload = json.dumps(data, ensure_ascii=True, default=repr).encode("ascii")
    if len(payload) > MAX_FRAME_BYTES:
        raise ProtocolError(
            f"Frame of {len(payload):,} bytes exceeds the maximum of {MAX_FRAME_BYTES:,} bytes"
        )
    return _HEADER.pack(len(payload)) + payload


def socket_send(sock: socket.socket, data: Any) -> None:
    """Send one length-prefixed JSON frame."""
    sock.sendall(encode_frame(data))


#: Frames up to this size are first read with one plain recv() (the common case).
_SMALL_FRAME = 1 << 16


def _recv_exact(sock: socket.socket, n: int, *, at_start: bool = False) -> bytes | bytearray | None:
    """Read exactly ``n`` bytes: one ``recv`` when it delivers them all (small frames),
    else into one preallocated buffer (linear time for any size)."""
    got = 0
    first = b""
    if n <= _SMALL_FRAME:
        first = sock.recv(n)
        if len(first) == n:
            return first
        if not first:
            if at_start:
                return None
            raise ConnectionError(f"Connection closed after 0 of {n} bytes")
        got = len(first)
    buf = bytearray(n)
    buf[:got] = first
    view = memoryview(buf)
    while got < n:
        k = sock.recv_into(view[got:], min(n - got, 1 << 22))
        if k == 0:
            if at_start and got == 0:
                return None
            raise ConnectionError(f"Connection closed after {got} of {n} bytes")
        got += k
    return buf


def recv_frame_bytes(sock: socket.socket, max_bytes: int | None = None) -> bytes | bytearray | None:
    """Receive one frame's payload; ``None`` when the peer closed cleanly between frames."""
    header = _recv_exact(sock, _HEADER.size, at_start=True)
    if header is None:
        return None
    (length,) = _HEADER.unpack(header)
    limit = MAX_FRAME_BYTES if max_bytes is None else max_bytes
    if length > limit:
        raise ProtocolError(f"Frame of {length:,} bytes exceeds the maximum of {limit:,} bytes")
    return _recv_exact(sock, length)


def socket_recv(sock: socket.socket, max_bytes: int | None = None) -> Any:
    """Receive one frame and decode its JSON. Returns ``{}`` if the peer closed first."""
    payload = recv_frame_bytes(sock, max_bytes)
    if payload is None:
        return {}
    try:
        return json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"Frame is not valid UTF-8 JSON: {exc}") from exc


# ---------------------------------------------------------------------------
# Tokens and pooled connections
# ---------------------------------------------------------------------------

_tokens: dict[tuple[str, int], str] = {}
_tokens_lock = threading.Lock()


def register_handler_token(address: tuple[str, int], token: str | None) -> None:
    """Remember (or, with ``None``, forget) the secret of a handler running in this process."""
    key = (address[0], int(address[1]))
    with _tokens_lock:
        if token is None:
            _tokens.pop(key, None)
        else:
            _tokens[key] = token


def _token_for(address: tuple[str, int]) -> str | None:
    return _tokens.get((address[0], int(address[1])))


class _Conns(dict):
    """A thread's kept-alive sockets; closed when the thread ends and drops them."""

    def __del__(self) -> None:
        for sock in self.values():
            try:
                sock.close()
            except OSError:
                pass


class _Pool(threading.local):
    """One kept-alive connection per (thread, address)."""

    def __init__(self) -> None:
        self.conns: dict[tuple[str, int], socket.socket] = _Conns()


_pool = _Pool()


def _connect(address: tuple[str, int], timeout: float | None) -> socket.socket:
    sock = socket.create_connection((address[0], int(address[1])), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _drop(key: tuple[str, int]) -> None:
    sock = _pool.conns.pop(key, None)
    if sock is not None:
        try:
            sock.close()
        except OSError:
            pass


def socket_request(
    address: tuple[str, int], data: dict[str, Any], timeout: float | None = 300
) -> Any:
    """Send one request and wait for its response, reusing this thread's connection.

    The handler's token is attached when the handler runs in this process and
    the request carries none. A stale kept-alive connection is retried once on
    a fresh one; a connection is dropped whenever a request does not complete.
    """
    key = (address[0], int(address[1]))
    if "token" not in data:
        token = _token_for(key)
        if token is not None:
            data = {**data, "token": token}
    frame = encode_frame(data)
    for attempt in (0, 1):
        sock = _pool.conns.get(key)
        reused = sock is not None
        if sock is None:
            sock = _pool.conns[key] = _connect(key, timeout)
        completed = False
        try:
            sock.settimeout(timeout)
            sock.sendall(frame)
            response = socket_recv(sock)
            if response == {} and reused and attempt == 0:
                _drop(key)  # the server closed an idle connection: retry once on a new one
                continue
            completed = True
            return response
        except (ConnectionError, BrokenPipeError) as exc:
            if reused and attempt == 0:
                _drop(key)
                continue
            raise ConnectionError(f"LM handler at {key[0]}:{key[1]} unreachable: {exc}") from exc
        finally:
            if not completed:
                _drop(key)
    raise ConnectionError(f"LM handler at {key[0]}:{key[1]} closed the connection")


def close_pooled_connections() -> None:
    """Close this thread's kept-alive connections."""
    for key in list(_pool.conns):
        _drop(key)


# ---------------------------------------------------------------------------
# Typed helpers
# ---------------------------------------------------------------------------


def send_lm_request(
    address: tuple[str, int],
    request: LMRequest,
    timeout: float | None = 300,
    depth: int | None = None,
) -> LMResponse:
    """Send ``request`` and return the typed response (failures become error responses)."""
    if depth is not None:
        request.depth = depth
    try:
        return LMResponse.from_dict(socket_request(address, request.to_dict(), timeout))
    except (OSError, ProtocolError) as exc:
        return LMResponse.error_response(f"Request failed: {type(exc).__name__}: {exc}")


def send_lm_request_batched(
    address: tuple[str, int],
    prompts: list[Any],
    model: str | None = None,
    timeout: float | None = 300,
    depth: int = 0,
) -> list[LMResponse]:
    """Send a batch; return one response per prompt, in order. One failed item fails only itself."""
    if not prompts:
        return []
    request = LMRequest(prompts=list(prompts), model=model, depth=depth)
    response = send_lm_request(address, request, timeout)
    if not response.success:
        return [LMResponse.error_response(response.error or "unknown error") for _ in prompts]
    completions = response.chat_completions
    if completions is None or len(completions) != len(prompts):
        return [
            LMResponse.error_response("The LM handler returned the wrong number of completions")
            for _ in prompts
        ]
    return [
        LMResponse.error_response(c.error) if c.error else LMResponse.success_response(c)
        for c in completions
    ]
