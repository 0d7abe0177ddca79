"""LMHandler: the TCP server that answers model calls made from inside the REPL.

It listens on 127.0.0.1 (port 0 picks a free one), serves many requests per
connection, refuses requests without its secret token, answers malformed or
oversized frames with an error instead of dying, and stops at once. Batched
requests run on the clients' async API on one long-lived event loop, at most
``batch_max_concurrent`` at a time when it is given, else under the provider's
adaptive limit (AIMD, see :mod:`rlm.comms.adaptive`: starts at 64, backs off on
429s and puts refused prompts back); a failed item fails only itself. Usage is
recorded per call, from the call's own numbers. Requests from this process (the REPL
helpers of ``local``, the host side of the isolated environments) reach it without a
socket (``SocketServer.answer_in_process``).

Bounded against whatever can reach the socket:

- a connection whose token has not been checked may send only small frames
  (``max_preauth_bytes``); a larger announced length is refused before a byte
  of its body is read, and the connection closed;
- at most ``max_connections`` connections at once (the next one gets an error
  frame and is closed); a connection idle for ``idle_timeout`` seconds, or one
  that sends no valid token within ``auth_timeout``, is closed;
- running out of file descriptors (EMFILE) sheds the waiting connection with
  an error instead of stopping the accept loop;
- a batch holds at most ``max_batch_size`` prompts;
- ``model=`` names only a configured client (``register_client``): any other
  name is refused with ``unknown model ...``, never sent to a provider.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from typing import Any

from rlm.clients.base_lm import BaseLM, Generation, UsageTracker, call_client
from rlm.comms.adaptive import AdaptiveLimit
from rlm.comms.batches import BatchRunner, describe
from rlm.comms.limiter import CallLimiter
from rlm.comms.protocol import (
    MAX_FRAME_BYTES,
    MAX_PREAUTH_FRAME_BYTES,
    HandlerAddress,
    LMRequest,
    LMResponse,
    register_handler_token,
    register_local_handler,
)
from rlm.comms.server import MAX_AUTH_FAILURES, SocketServer, _open_spare_fd, _refuse  # noqa: F401
from rlm.datatypes import RLMChatCompletion, UsageSummary

#: ``guard(request) -> error message or None``: refuses calls once a limit is spent.
Guard = Callable[[LMRequest], str | None]
#: ``subcall_fn(prompt, model, depth) -> RLMChatCompletion``: serves ``rlm_query``.
SubcallFn = Callable[[Any, str | None, int], RLMChatCompletion]


#: Defaults of the socket bounds (see the module docstring).
DEFAULT_MAX_CONNECTIONS = 256
DEFAULT_IDLE_TIMEOUT = 300.0
DEFAULT_AUTH_TIMEOUT = 30.0
DEFAULT_MAX_BATCH_SIZE = 10_000


class UnknownModelError(ValueError):
    """``model=`` named no configured client."""


class LMHandler(BatchRunner, SocketServer):
    """Routes model calls from the loop and from environments to the right client."""

    def __init__(
        self,
        client: BaseLM,
        host: str = "127.0.0.1",
        port: int = 0,
        other_backend_client: BaseLM | None = None,
        batch_max_concurrent: int | None = None,
        require_token: bool = True,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        limiter: CallLimiter | None = None,
        depth_models: dict[int, str] | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
        auth_timeout: float | None = DEFAULT_AUTH_TIMEOUT,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        max_preauth_bytes: int = MAX_PREAUTH_FRAME_BYTES,
    ):
        self.default_client = client
        self.other_backend_client = other_backend_client
        self.clients: dict[str, BaseLM] = {}
        self.host = host
        self._port = port
        #: None: batches run under the provider's adaptive limit (rlm.comms.adaptive).
        self.batch_max_concurrent = (
            None if batch_max_concurrent is None else max(1, int(batch_max_concurrent))
        )
        #: An explicit AdaptiveLimit for batches (None: the provider's shared one).
        self.batch_limit: AdaptiveLimit | None = None
        self.token: str | None = secrets.token_hex(16) if require_token else None
        self.max_frame_bytes = max_frame_bytes
        self.max_preauth_bytes = max(256, int(max_preauth_bytes))
        self.max_connections = max(1, int(max_connections))
        self.idle_timeout = idle_timeout
        self.auth_timeout = auth_timeout
        self.max_batch_size = max(1, int(max_batch_size))
        #: Counters of what the socket bounds refused (for tests and diagnostics).
        self.stats = {
            "accept_errors": 0,
            "shed_connections": 0,
            "refused_connections": 0,
            "unauthorized": 0,
            "oversized_frames": 0,
            "idle_closed": 0,
        }
        self._spare_fd: int | None = None
        self.guard: Guard | None = None
        self.subcall_fn: SubcallFn | None = None
        #: ``call_observer(kind, prompt, model) -> finished(record, error=None)``: told of
        #: each ``llm_query`` call and batch item (the RLM turns them into events).
        self.call_observer: Callable[..., Callable[..., None]] | None = None
        self._usage = UsageTracker()
        #: Usage is also recorded here: the trackers of the handlers of enclosing runs.
        self._ancestor_trackers: list[UsageTracker] = []
        #: One cap on model calls in flight, shared by every handler of an RLM tree
        #: (None: no cap beyond ``batch_max_concurrent`` per batch).
        self.limiter = limiter
        #: depth -> registered model name, for sub-calls made at that depth.
        self.depth_models = dict(depth_models or {})
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._loop_lock = threading.Lock()
        self._running = False
        self.register_client(client.model_name, client)
        if other_backend_client is not None and other_backend_client.model_name not in self.clients:
            # A configured model: ``model=`` may name it.
            self.register_client(other_backend_client.model_name, other_backend_client)

    # -- routing ----------------------------------------------------------------

    def register_client(self, model_name: str, client: BaseLM) -> None:
        """Make ``model=model_name`` in a sub-call use ``client``."""
        self.clients[model_name] = client

    def configured_models(self) -> list[str]:
        """The model names a request may ask for (``model=``)."""
        return sorted(self.clients)

    def check_model(self, model: Any) -> None:
        """Raise :class:`UnknownModelError` unless ``model`` is ``None`` or a configured name.

        Model code chooses only among the clients the user configured; a name that
        is not one of them is never turned into a new client or sent to a provider.
        """
        if model is None or model == "":
            return
        if not isinstance(model, str):
            raise UnknownModelError(
                f"malformed request: 'model' must be a string, got {type(model).__name__}"
            )
        if model not in self.clients:
            names = ", ".join(repr(name) for name in self.configured_models())
            raise UnknownModelError(
                f"unknown model {model[:200]!r}; the configured models are: {names}"
            )

    def get_client(self, model: str | None = None, depth: int = 0) -> BaseLM:
        """A registered model name wins; then a per-depth mapping; then depth >= 1 goes to
        the sub-call client; else the default client.

        Calls arriving over the socket are checked first (:meth:`check_model`), so an
        unknown name never gets here from model code; called directly, an unknown
        name falls back like ``model=None``, as in rlms."""
        if model and model in self.clients:
            return self.clients[model]
        mapped = self.depth_models.get(depth)
        if mapped is not None and mapped in self.clients:
            return self.clients[mapped]
        if depth >= 1 and self.other_backend_client is not None:
            return self.other_backend_client
        return self.default_client

    def attach_to(self, parent: LMHandler) -> None:
        """Make this handler part of ``parent``'s tree: its calls count in the parent's
        usage (and its ancestors'), under the parent's concurrency cap."""
        self._ancestor_trackers = [parent._usage, *parent._ancestor_trackers]
        self.limiter = parent.limiter

    # -- lifecycle --------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port the handler listens on (127.0.0.1)."""
        if self._listener is not None:
            return self._listener.getsockname()[1]
        return self._port

    @property
    def address(self) -> HandlerAddress:
        """``(host, port)``; the tuple also carries the token as ``.token`` (hidden in its
        repr), so an environment handed this address can authenticate."""
        return HandlerAddress(self.host, self.port, self.token)

    def start(self) -> tuple[str, int]:
        """Start serving in a background thread; returns ``(host, port)``."""
        if self._running:
            return self.address
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self._port))
        listener.listen(128)
        self._listener = listener
        self._running = True
        self._spare_fd = _open_spare_fd()
        register_handler_token(self.address, self.token)
        register_local_handler(self.address, self)
        self._start_accepting(listener)
        return self.address

    def stop(self) -> None:
        """Stop serving. Returns at once: blocked threads are woken by shutting their sockets."""
        if not self._running:
            return
        self._running = False
        listener, self._listener = self._listener, None
        if listener is not None:
            register_handler_token(listener.getsockname(), None)
            register_local_handler(listener.getsockname(), None)
            self._stop_accepting(listener)
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
        with self._conns_lock:
            conns, self._conns = self._conns, set()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._close_spare_fd()
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)

    def __enter__(self) -> LMHandler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> bool:
        self.stop()
        return False

    # -- serving ----------------------------------------------------------------

    def handle_payload(self, payload: bytes | bytearray) -> LMResponse:
        """Decode, authenticate (the frame's own ``token``) and answer one request frame.
        Never raises."""
        response, verdict = self._answer_frame(payload, authed=False)
        if verdict == "auth":
            return LMResponse.error_response("Missing 'prompt' or 'prompts' in request.")
        assert response is not None
        return response

    def handle_request(self, request: LMRequest) -> LMResponse:
        """Answer an authenticated request. Never raises. A batch whose asker says how
        long it waits (``request.timeout``) is answered a little before that, with what
        is done (the answer still has to cross the socket)."""
        wait = None
        if request.timeout is not None and request.prompts is not None:
            wait = max(0.0, request.timeout - min(2.0, 0.1 * request.timeout))
        return self._handle_request(request, wait)

    def _handle_request(self, request: LMRequest, wait: float | None = None) -> LMResponse:
        """:meth:`handle_request`; a batch is given up (and cancelled) after ``wait`` s."""
        try:
            self.check_model(request.model)
            if request.prompts is not None:
                if not isinstance(request.prompts, list):
                    return LMResponse.error_response("Malformed request: 'prompts' must be a list")
                if not request.prompts:
                    return LMResponse.batched_success_response([])
                if len(request.prompts) > self.max_batch_size:
                    return LMResponse.error_response(
                        f"batch of {len(request.prompts):,} prompts exceeds the limit of "
                        f"{self.max_batch_size:,} prompts per batch; split it into smaller batches"
                    )
                return LMResponse.batched_success_response(self._run_batch(request, wait))
            if request.prompt is None or request.prompt == "":
                return LMResponse.error_response("Missing 'prompt' or 'prompts' in request.")
            refusal = self.guard(request) if self.guard is not None else None
            if refusal:
                return LMResponse.error_response(refusal)
            if request.kind == "rlm" and self.subcall_fn is not None:
                return LMResponse.success_response(
                    self.subcall_fn(request.prompt, request.model, request.depth)
                )
            observe = self.call_observer
            if observe is None:
                return LMResponse.success_response(
                    self._call(request.prompt, request.model, request.depth)
                )
            finished = observe("llm", request.prompt, request.model)
            try:
                record = self._call(request.prompt, request.model, request.depth)
            except Exception as exc:
                finished(None, describe(exc))
                raise
            finished(record)
            return LMResponse.success_response(record)
        except UnknownModelError as exc:
            return LMResponse.error_response(str(exc))
        except Exception as exc:
            return LMResponse.error_response(describe(exc))

    # -- calling clients ------------------------------------------------------------

    def _completed(self, prompt: Any, generation: Generation, start: float) -> RLMChatCompletion:
        usage = generation.usage()
        self._usage.record(generation.model, usage)
        for tracker in self._ancestor_trackers:
            tracker.record(generation.model, usage)
        return RLMChatCompletion(
            root_model=generation.model,
            prompt=prompt,
            response=generation.text,
            usage_summary=UsageSummary({generation.model: usage}),
            execution_time=time.perf_counter() - start,
        )

    def _call(
        self,
        prompt: Any,
        model: str | None,
        depth: int,
        on_token: Any = None,
        stop: list[str] | None = None,
    ) -> RLMChatCompletion:
        client = self.get_client(model, depth)
        limiter = self.limiter
        if limiter is not None:
            limiter.acquire()
        try:
            start = time.perf_counter()
            generation = call_client(client, prompt, on_token=on_token, stop=stop)
        finally:
            if limiter is not None:
                limiter.release()
        return self._completed(prompt, generation, start)

    # -- direct use from the loop -------------------------------------------------

    def completion(self, prompt: Any, model: str | None = None) -> str:
        """A root call (depth 0), counted in this handler's usage."""
        return self._call(prompt, model, 0).response

    def completion_record(
        self,
        prompt: Any,
        model: str | None = None,
        depth: int = 0,
        on_token: Any = None,
        stop: list[str] | None = None,
    ) -> RLMChatCompletion:
        """Like ``completion`` but returns the full record (text, usage, timing); with
        ``on_token``, a client that streams calls it with each piece of text; ``stop``:
        stop sequences for this call, for a client that takes them."""
        return self._call(prompt, model, depth, on_token, stop)

    def get_usage_summary(self) -> UsageSummary:
        """Usage of every call this handler served (root and sub-calls)."""
        return self._usage.summary()


# ---------------------------------------------------------------------------
# rlms' names
# ---------------------------------------------------------------------------


class LMRequestHandler(socketserver.StreamRequestHandler):
    """rlms' per-connection handler class, for code that builds its own server:
    ``ThreadingLMServer((host, port), LMRequestHandler)`` with ``server.lm_handler``
    set to an :class:`LMHandler`. Frames are answered exactly as the handler's own
    server answers them (token, caps, routing)."""

    def handle(self) -> None:
        """Serve one connection: authenticate, then answer framed requests until it closes."""
        handler: LMHandler | None = getattr(self.server, "lm_handler", None)
        if handler is None:
            _refuse(self.connection, "this server has no lm_handler")
            return
        handler.serve_stream(self.connection)

    def _safe_send(self, response: LMResponse) -> bool:
        """Send ``response``; ``False`` when the peer is gone."""
        return LMHandler._send(self.connection, response)


class ThreadingLMServer(socketserver.ThreadingTCPServer):
    """rlms' multi-threaded TCP server class (daemon threads, address reuse).

    ``LMHandler`` runs its own bounded accept loop and does not use this class;
    it is here for code written against rlms that serves an ``LMHandler`` itself.
    """

    daemon_threads = True
    allow_reuse_address = True
    lm_handler: LMHandler | None = None
