"""The LM handler's wire protocol.

A frame is a 4-byte big-endian length followed by that many bytes of UTF-8
JSON. Requests are ``{"prompt": ...}`` or ``{"prompts": [...]}`` with optional
``"model"`` and ``"depth"``; responses carry exactly one of
``chat_completion``, ``chat_completions`` or ``error`` (the other two present
as null). That much is the public ``rlms`` protocol, unchanged.

Ours adds three optional request keys -- ``"token"`` (the handler's secret;
a request without it is refused), ``"id"`` (echoed in the response) and
``"kind"`` (``"llm"``, the default, or ``"rlm"`` for ``rlm_query``) -- one
optional frame, ``{"kind": "auth", "token": ...}``, that authenticates a whole
connection (it gets no answer when the token is right), and keeps connections
open for many requests.

Where the token comes from: ``LMHandler.address`` is a :class:`HandlerAddress`,
a ``(host, port)`` tuple that also carries ``.token`` (and keeps it through
pickling, so it reaches a worker process started with ``multiprocessing``);
the helpers below use it, or the token of a handler started in this process,
or the ``RLM_LM_HANDLER_TOKEN`` environment variable, in that order. So callers
need nothing new.

Within one process there is no socket: ``send_lm_request`` to the address of a handler
started in this process (:func:`register_local_handler`) hands the request to it
directly, with the token checked and the request copied as the wire would deliver it
(:func:`wire_form`); ``socket_request`` always goes over the socket.

The frames themselves are encoded and read by :mod:`rlm.comms.frames`, the
one codec shared with the isolated environments' driver and worker: every
frame read checks the announced length against a cap before anything is
allocated. Its names (``encode_frame``, ``read_frame``, ``check_frame_length``,
``FrameTooLargeError``...) stay importable from here.
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass
from typing import Any

from rlm.comms.frames import (  # noqa: F401 - the codec's names stay importable from here
    MAX_FRAME_BYTES,
    FrameTooLargeError,
    check_frame_length,
    decode_payload,
    encode_frame,
    read_frame,
)
from rlm.datatypes import RLMChatCompletion
from rlm.utils.exceptions import ProtocolError

#: Largest frame a handler reads on a connection whose token it has not checked yet.
MAX_PREAUTH_FRAME_BYTES = 64 * 1024
#: Environment variable the helpers read the handler token from, when nothing else gives it.
TOKEN_ENV_VAR = "RLM_LM_HANDLER_TOKEN"


class HandlerAddress(tuple):
    """An LM handler's ``(host, port)``, carrying the handler's token as ``.token``.

    It unpacks, indexes, hashes and compares like the plain tuple (``host, port =
    address`` and ``address == ("127.0.0.1", port)`` hold), and its ``repr`` is the
    plain tuple's, so the token never shows in a print or a log. Pickling and
    copying keep the token; JSON and string formatting drop it (pass ``.token``
    along yourself then, or set ``RLM_LM_HANDLER_TOKEN`` in the other process).
    """

    token: str | None

    def __new__(cls, host: str, port: int, token: str | None = None) -> HandlerAddress:
        self = super().__new__(cls, (host, int(port)))
        self.token = token
        return self

    def __repr__(self) -> str:
        return repr(tuple(self))

    def __reduce__(self) -> tuple[Any, ...]:
        return (HandlerAddress, (self[0], self[1], self.token))


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
    #: Ours: the seconds the asker waits for the answer. A batch's handler then answers
    #: just before that with what is done, each unanswered prompt failing by itself.
    timeout: float | None = None

    @property
    def is_batched(self) -> bool:
        """Whether this request carries several prompts (``prompts``)."""
        return self.prompts is not None and len(self.prompts) > 0

    def to_dict(self) -> dict[str, Any]:
        """The request as its wire frame's JSON object."""
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
        if self.timeout is not None:
            out["timeout"] = self.timeout
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LMRequest:
        """A request from a wire frame's JSON object."""
        depth = data.get("depth", 0)
        rid = data.get("id")
        kind = data.get("kind")
        timeout = data.get("timeout")
        return cls(
            prompt=data.get("prompt"),
            prompts=data.get("prompts"),
            model=data.get("model"),
            depth=depth if isinstance(depth, int) and not isinstance(depth, bool) else 0,
            token=data.get("token"),
            # Only an id that echoes safely (a short string or an int) is kept.
            id=rid
            if (isinstance(rid, int) and not isinstance(rid, bool))
            or (isinstance(rid, str) and len(rid) <= 256)
            else None,
            kind=kind if isinstance(kind, str) and kind else "llm",
            timeout=timeout
            if isinstance(timeout, (int, float))
            and not isinstance(timeout, bool)
            and 0 < timeout < float("inf")
            else None,
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
        """Whether the request succeeded (no ``error``)."""
        return self.error is None

    @property
    def is_batched(self) -> bool:
        """Whether this answers a batched request (``chat_completions``)."""
        return self.chat_completions is not None

    def to_dict(self) -> dict[str, Any]:
        """The response as its wire frame's JSON object (all three keys present)."""
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
        """Parse a response frame. Anything that is not the documented shape (a forged
        or corrupted frame) becomes an error response; this never raises."""
        if not isinstance(data, dict) or not data:
            return cls(error="Empty or invalid response from the LM handler")
        rid = data.get("id")
        rid = rid if isinstance(rid, (str, int)) and not isinstance(rid, bool) else None
        error = data.get("error")
        if error is not None:
            return cls(error=error if isinstance(error, str) else repr(error)[:2000], id=rid)
        try:
            completions = data.get("chat_completions")
            if completions is not None:
                if not isinstance(completions, list):
                    raise ValueError("'chat_completions' is not a list")
                return cls(chat_completions=[_completion_from(c) for c in completions], id=rid)
            completion = data.get("chat_completion")
            if completion is None:
                raise ValueError("no chat_completion, chat_completions or error")
            return cls(chat_completion=_completion_from(completion), id=rid)
        except (TypeError, ValueError, AttributeError, KeyError, OverflowError) as exc:
            return cls(error=f"Malformed response from the LM handler: {exc}", id=rid)

    @classmethod
    def success_response(cls, chat_completion: RLMChatCompletion) -> LMResponse:
        """A response carrying one completion."""
        return cls(chat_completion=chat_completion)

    @classmethod
    def batched_success_response(cls, chat_completions: list[RLMChatCompletion]) -> LMResponse:
        """A response carrying one completion per prompt, in order."""
        return cls(chat_completions=chat_completions)

    @classmethod
    def error_response(cls, error: str) -> LMResponse:
        """A response carrying an error message."""
        return cls(error=error)


def _completion_from(data: Any) -> RLMChatCompletion:
    """An ``RLMChatCompletion`` from a response frame, checked field by field."""
    if not isinstance(data, dict):
        raise ValueError(f"a completion must be an object, got {type(data).__name__}")
    for key in ("response", "root_model", "error"):
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            raise ValueError(f"completion field {key!r} must be a string")
    usage = data.get("usage_summary")
    if usage is not None and not isinstance(usage, dict):
        raise ValueError("completion field 'usage_summary' must be an object")
    elapsed = data.get("execution_time")
    if elapsed is not None and (isinstance(elapsed, bool) or not isinstance(elapsed, (int, float))):
        raise ValueError("completion field 'execution_time' must be a number")
    return RLMChatCompletion.from_dict(data)


# ---------------------------------------------------------------------------
# Framing
# ---------------------------------------------------------------------------


def socket_send(sock: socket.socket, data: Any) -> None:
    """Send one length-prefixed JSON frame."""
    sock.sendall(encode_frame(data))


#: Frames up to this size are first read with one plain recv() (the common case).
_SMALL_FRAME = 1 << 16


def _recv_exact(sock: socket.socket, n: int) -> bytes | bytearray | None:
    """Read exactly ``n`` bytes (``None`` when the peer closed before the first): one
    ``recv`` when it delivers them all (small frames), else into one preallocated buffer
    (linear time for any size)."""
    if n == 0:
        return b""
    got = 0
    first = b""
    if n <= _SMALL_FRAME:
        first = sock.recv(n)
        if len(first) == n:
            return first
        if not first:
            return None
        got = len(first)
    buf = bytearray(n)
    buf[:got] = first
    view = memoryview(buf)
    while got < n:
        k = sock.recv_into(view[got:], min(n - got, 1 << 22))
        if k == 0:
            if got == 0:
                return None
            raise ConnectionError(f"Connection closed after {got} of {n} bytes")
        got += k
    return buf


def recv_frame_bytes(sock: socket.socket, max_bytes: int | None = None) -> bytes | bytearray | None:
    """Receive one frame's payload; ``None`` when the peer closed cleanly between frames.

    The announced length is checked (:func:`check_frame_length`) before the
    payload is read or allocated; over the cap, :class:`FrameTooLargeError`.
    """
    return read_frame(lambda n: _recv_exact(sock, n), max_bytes)


def socket_recv(sock: socket.socket, max_bytes: int | None = None) -> Any:
    """Receive one frame and decode its JSON. Returns ``{}`` if the peer closed first."""
    payload = recv_frame_bytes(sock, max_bytes)
    if payload is None:
        return {}
    return decode_payload(payload)


# ---------------------------------------------------------------------------
# Tokens and pooled connections
# ---------------------------------------------------------------------------

_tokens: dict[tuple[str, int], str] = {}
_tokens_lock = threading.Lock()


def _register(table: dict[tuple[str, int], Any], address: tuple[str, int], value: Any) -> None:
    """``table[address] = value``, or, with ``None``, the entry removed (under the lock)."""
    key = (address[0], int(address[1]))
    with _tokens_lock:
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value


def register_handler_token(address: tuple[str, int], token: str | None) -> None:
    """Remember (or, with ``None``, forget) the secret of a handler running in this process."""
    _register(_tokens, address, token)


#: Handlers started in this process, by address: requests to them skip the socket.
_local_handlers: dict[tuple[str, int], Any] = {}


# A forked child has copies of the parent's handlers, not their threads: its requests go
# over the socket, to the parent, as before the fork.
os.register_at_fork(after_in_child=_local_handlers.clear)


def register_local_handler(address: tuple[str, int], handler: Any) -> None:
    """Make requests to ``address`` from this process go straight to ``handler`` (an object
    with ``answer_in_process(request, token, timeout)``), or, with ``None``, over the socket."""
    _register(_local_handlers, address, handler)


def _local_handler(address: Any) -> Any:
    try:
        return _local_handlers.get((address[0], int(address[1])))
    except (TypeError, ValueError, IndexError):
        return None


def _token_for(address: tuple[str, int]) -> str | None:
    """The token for ``address``: carried by a :class:`HandlerAddress`, else that of a
    handler started in this process, else ``$RLM_LM_HANDLER_TOKEN``."""
    carried = getattr(address, "token", None)
    if isinstance(carried, str) and carried:
        return carried
    token = _tokens.get((address[0], int(address[1])))
    if token is not None:
        return token
    return os.environ.get(TOKEN_ENV_VAR) or None


def auth_frame(token: str) -> bytes:
    """The frame that authenticates a connection: ``{"kind": "auth", "token": token}``."""
    return encode_frame({"kind": "auth", "token": token})


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

    A new connection starts with the auth frame when a token is known (see
    :func:`_token_for`), so the handler checks the token before it reads any
    request body. A stale kept-alive connection is retried once on a fresh one;
    a connection is dropped whenever a request does not complete.
    """
    key = (address[0], int(address[1]))
    token = data.get("token") if isinstance(data.get("token"), str) else None
    token = token or _token_for(address)
    frame = encode_frame(data)
    for attempt in (0, 1):
        sock = _pool.conns.get(key)
        reused = sock is not None
        out = frame
        if sock is None:
            sock = _pool.conns[key] = _connect(key, timeout)
            if token is not None:
                out = auth_frame(token) + frame  # one write: no extra round trip
        completed = False
        try:
            sock.settimeout(timeout)
            sock.sendall(out)
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
# Requests within the process
# ---------------------------------------------------------------------------


class _NotPlain(Exception):
    """A value the codec would change (or refuse): it takes the codec's path."""


#: Nesting past which a value takes the codec's path (which then decides as the wire does).
_PLAIN_DEPTH = 64


def _plain(value: Any, depth: int = 0) -> tuple[Any, int]:
    """``(copy, bound)``: ``value`` as the wire would deliver it (containers copied, strings
    and numbers as they are) and an upper bound on its JSON size in bytes; raises
    :class:`_NotPlain` for anything JSON would turn into something else."""
    kind = type(value)
    if kind is str:
        return value, 6 * len(value) + 2  # \uXXXX is the longest form of one character
    if kind is int:
        if -(1 << 63) <= value < 1 << 63:
            return value, 20
        raise _NotPlain
    if kind is float or kind is bool or value is None:
        return value, 24
    if depth >= _PLAIN_DEPTH:
        raise _NotPlain
    if kind is list:
        items, bound = [], 2
        for item in value:
            copy, size = _plain(item, depth + 1)
            items.append(copy)
            bound += size + 2
        return items, bound
    if kind is dict:
        out, bound = {}, 2
        for key, item in value.items():
            if type(key) is not str:
                raise _NotPlain
            copy, size = _plain(item, depth + 1)
            out[key] = copy
            bound += 6 * len(key) + size + 6
        return out, bound
    raise _NotPlain


def wire_form(data: dict[str, Any], max_bytes: int) -> dict[str, Any]:
    """A request's JSON object as the handler would decode it from a frame, without
    encoding one when it can: plain strings, numbers, lists and dicts are copied as they
    are; anything else (a tuple, an object written as its ``repr``) goes through the codec.
    Raises :class:`FrameTooLargeError` when the frame would be over ``max_bytes`` (or over
    :data:`MAX_FRAME_BYTES`, what a sender refuses to write)."""
    try:
        copy, bound = _plain(data)
    except _NotPlain:
        copy, bound = None, max_bytes + 1
    if bound <= min(max_bytes, MAX_FRAME_BYTES):
        return copy  # type: ignore[return-value]
    frame = encode_frame(data)  # raises over MAX_FRAME_BYTES, as the sender's side would
    check_frame_length(frame[:4], max_bytes)  # as the handler's side would
    return decode_payload(frame[4:]) if copy is None else copy


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
    local = _local_handler(address)
    if local is not None:  # a handler of this process: no socket, no JSON (see wire_form)
        token = request.token if isinstance(request.token, str) else None
        return local.answer_in_process(request, token or _token_for(address), timeout)
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
    """Send a batch; return one response per prompt, in order. One failed item fails only
    itself; so does an item still unanswered when ``timeout`` runs out (the handler
    answers with the others just before)."""
    if not prompts:
        return []
    request = LMRequest(prompts=list(prompts), model=model, depth=depth, timeout=timeout)
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
