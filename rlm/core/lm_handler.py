"""LMHandler: the TCP server that answers model calls made from inside the REPL.

It listens on 127.0.0.1 (port 0 picks a free one), serves many requests per
connection, refuses requests without its secret token, answers malformed or
oversized frames with an error instead of dying, and stops at once. Batched
requests run on the clients' async API on one long-lived event loop, at most
``batch_max_concurrent`` at a time; a failed item fails only itself. Usage is
recorded per call, from the call's own numbers.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from rlm.clients.base_lm import BaseLM, Generation, UsageTracker, acall_client, call_client
from rlm.core.comms_utils import (
    MAX_FRAME_BYTES,
    LMRequest,
    LMResponse,
    recv_frame_bytes,
    register_handler_token,
    socket_send,
)
from rlm.core.limiter import CallLimiter
from rlm.core.types import RLMChatCompletion, UsageSummary
from rlm.utils.exceptions import ProtocolError

#: ``guard(request) -> error message or None``: refuses calls once a limit is spent.
Guard = Callable[[LMRequest], str | None]
#: ``subcall_fn(prompt, model, depth) -> RLMChatCompletion``: serves ``rlm_query``.
SubcallFn = Callable[[Any, str | None, int], RLMChatCompletion]


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class LMHandler:
    """Routes model calls from the loop and from environments to the right client."""

    def __init__(
        self,
        client: BaseLM,
        host: str = "127.0.0.1",
        port: int = 0,
        other_backend_client: BaseLM | None = None,
        batch_max_concurrent: int = 16,
        require_token: bool = True,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        limiter: CallLimiter | None = None,
        depth_models: dict[int, str] | None = None,
    ):
        self.default_client = client
        self.other_backend_client = other_backend_client
        self.clients: dict[str, BaseLM] = {}
        self.host = host
        self._port = port
        self.batch_max_concurrent = max(1, int(batch_max_concurrent))
        self.token: str | None = secrets.token_hex(16) if require_token else None
        self.max_frame_bytes = max_frame_bytes
        self.guard: Guard | None = None
        self.subcall_fn: SubcallFn | None = None
        self._usage = UsageTracker()
        #: Usage is also recorded here: the trackers of the handlers of enclosing runs.
        self._ancestor_trackers: list[UsageTracker] = []
        #: One cap on model calls in flight, shared by every handler of an RLM tree
        #: (None: no cap beyond ``batch_max_concurrent`` per batch).
        self.limiter = limiter
        #: depth -> registered model name, for sub-calls made at that depth.
        self.depth_models = dict(depth_models or {})
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._loop_lock = threading.Lock()
        self._running = False
        self.register_client(client.model_name, client)

    # -- routing ----------------------------------------------------------------

    def register_client(self, model_name: str, client: BaseLM) -> None:
        """Make ``model=model_name`` in a sub-call use ``client``."""
        self.clients[model_name] = client

    def get_client(self, model: str | None = None, depth: int = 0) -> BaseLM:
        """A registered model name wins; then a per-depth mapping; then depth >= 1 goes to
        the sub-call client; else the default client."""
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
        if self._listener is not None:
            return self._listener.getsockname()[1]
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

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
        register_handler_token(self.address, self.token)
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"rlm-lm-handler:{self.port}", daemon=True
        )
        self._accept_thread.start()
        return self.address

    def stop(self) -> None:
        """Stop serving. Returns at once: blocked threads are woken by shutting their sockets."""
        if not self._running:
            return
        self._running = False
        listener, self._listener = self._listener, None
        if listener is not None:
            register_handler_token(listener.getsockname(), None)
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

    def _accept_loop(self) -> None:
        listener = self._listener
        while self._running and listener is not None:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # listener shut down
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._conns_lock:
                if not self._running:
                    conn.close()
                    return
                self._conns.add(conn)
            threading.Thread(target=self._serve_connection, args=(conn,), daemon=True).start()

    def _serve_connection(self, conn: socket.socket) -> None:
        try:
            while self._running:
                try:
                    payload = recv_frame_bytes(conn, self.max_frame_bytes)
                except ProtocolError as exc:
                    # The oversized payload was not read, so the stream cannot be resynced.
                    self._send(conn, LMResponse.error_response(str(exc)))
                    return
                if payload is None:
                    return
                response = self.handle_payload(payload)
                if not self._send(conn, response):
                    return
        except OSError:
            return  # peer went away, or stop() shut the socket
        finally:
            with self._conns_lock:
                self._conns.discard(conn)
            try:
                conn.close()
            except OSError:
                pass

    @staticmethod
    def _send(conn: socket.socket, response: LMResponse) -> bool:
        try:
            socket_send(conn, response.to_dict())
            return True
        except OSError:
            return False

    def handle_payload(self, payload: bytes | bytearray) -> LMResponse:
        """Decode, authenticate and answer one request frame. Never raises."""
        import json

        try:
            data = json.loads(payload)
        except (ValueError, RecursionError) as exc:  # bad UTF-8, bad JSON, absurd nesting
            return LMResponse.error_response(f"Malformed request: not UTF-8 JSON ({exc})")
        if not isinstance(data, dict):
            return LMResponse.error_response("Malformed request: a request must be a JSON object")
        request = LMRequest.from_dict(data)
        if self.token is not None and not (
            isinstance(request.token, str)
            and secrets.compare_digest(
                request.token.encode("utf-8", "surrogatepass"), self.token.encode("utf-8")
            )
        ):
            response = LMResponse.error_response("Unauthorized: missing or wrong handler token")
        else:
            response = self.handle_request(request)
        response.id = request.id
        return response

    def handle_request(self, request: LMRequest) -> LMResponse:
        """Answer an authenticated request. Never raises."""
        try:
            if request.prompts is not None:
                if not isinstance(request.prompts, list):
                    return LMResponse.error_response("Malformed request: 'prompts' must be a list")
                if not request.prompts:
                    return LMResponse.batched_success_response([])
                return LMResponse.batched_success_response(self._run_batch(request))
            if request.prompt is None or request.prompt == "":
                return LMResponse.error_response("Missing 'prompt' or 'prompts' in request.")
            refusal = self.guard(request) if self.guard is not None else None
            if refusal:
                return LMResponse.error_response(refusal)
            if request.kind == "rlm" and self.subcall_fn is not None:
                return LMResponse.success_response(
                    self.subcall_fn(request.prompt, request.model, request.depth)
                )
            return LMResponse.success_response(
                self._call(request.prompt, request.model, request.depth)
            )
        except Exception as exc:
            return LMResponse.error_response(_describe(exc))

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

    def _call(self, prompt: Any, model: str | None, depth: int) -> RLMChatCompletion:
        client = self.get_client(model, depth)
        limiter = self.limiter
        if limiter is not None:
            limiter.acquire()
        try:
            start = time.perf_counter()
            generation = call_client(client, prompt)
        finally:
            if limiter is not None:
                limiter.release()
        return self._completed(prompt, generation, start)

    async def _acall(self, prompt: Any, model: str | None, depth: int) -> RLMChatCompletion:
        client = self.get_client(model, depth)
        limiter = self.limiter
        if limiter is not None:
            await limiter.aacquire()
        try:
            start = time.perf_counter()
            generation = await acall_client(client, prompt)
        finally:
            if limiter is not None:
                limiter.release()
        return self._completed(prompt, generation, start)

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        with self._loop_lock:
            if not self._running:
                raise RuntimeError("the LM handler is stopped")
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=_run_loop, args=(loop,), name="rlm-lm-batches", daemon=True
                )
                thread.start()
                self._loop, self._loop_thread = loop, thread
            return self._loop

    def _run_batch(self, request: LMRequest) -> list[RLMChatCompletion]:
        prompts = list(request.prompts or [])

        async def run_all() -> list[RLMChatCompletion]:
            sem = asyncio.Semaphore(self.batch_max_concurrent)

            async def one(prompt: Any) -> RLMChatCompletion:
                async with sem:
                    item = LMRequest(prompt=prompt, model=request.model, depth=request.depth)
                    refusal = self.guard(item) if self.guard is not None else None
                    if refusal:
                        return _failed(prompt, request.model, refusal)
                    try:
                        return await self._acall(prompt, request.model, request.depth)
                    except Exception as exc:
                        return _failed(prompt, request.model, _describe(exc))

            return list(await asyncio.gather(*(one(p) for p in prompts)))

        loop = self._event_loop()  # raises first if the handler is stopped
        return asyncio.run_coroutine_threadsafe(run_all(), loop).result()

    # -- direct use from the loop -------------------------------------------------

    def completion(self, prompt: Any, model: str | None = None) -> str:
        """A root call (depth 0), counted in this handler's usage."""
        return self._call(prompt, model, 0).response

    def completion_record(
        self, prompt: Any, model: str | None = None, depth: int = 0
    ) -> RLMChatCompletion:
        """Like ``completion`` but returns the full record (text, usage, timing)."""
        return self._call(prompt, model, depth)

    def get_usage_summary(self) -> UsageSummary:
        """Usage of every call this handler served (root and sub-calls)."""
        return self._usage.summary()


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Run the batch loop until stop(); then cancel what is left (waking the serving
    threads waiting on those batches with an error) and close the loop."""
    try:
        loop.run_forever()
    finally:
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()


def _failed(prompt: Any, model: str | None, error: str) -> RLMChatCompletion:
    return RLMChatCompletion(
        root_model=model or "unknown",
        prompt=prompt,
        response="",
        usage_summary=UsageSummary(),
        execution_time=0.0,
        error=error,
    )
