"""The socket side of :class:`rlm.comms.lm_handler.LMHandler`: one accept thread for every
handler of the process (``_Acceptor``, a selector over their listening sockets), one
serving thread per connection, frame authentication and the bounds on each connection
(see the handler's module docstring for what is bounded and how).

:class:`SocketServer` is the handler's base class; answering a request is the handler's
``handle_request``.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import selectors
import socket
import threading
import time
from typing import Any

from rlm.comms import workers
from rlm.comms.protocol import (
    MAX_FRAME_BYTES,
    FrameTooLargeError,
    LMRequest,
    LMResponse,
    decode_payload,
    recv_frame_bytes,
    socket_send,
    wire_form,
)
from rlm.utils.exceptions import ProtocolError

log = logging.getLogger("rlm")

#: Wrong tokens one connection may send before it is closed.
MAX_AUTH_FAILURES = 8


#: accept() errors that mean "out of descriptors or memory for now", not "stopped".
_RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


def _open_spare_fd() -> int | None:
    """A descriptor kept in reserve, closed to make room when accept() hits EMFILE."""
    try:
        return os.open(os.devnull, os.O_RDONLY)
    except OSError:
        return None


def _refuse(conn: socket.socket, message: str) -> None:
    """Answer a connection that will not be served with one error frame, then close it."""
    try:
        conn.settimeout(1.0)
        socket_send(conn, LMResponse.error_response(message).to_dict())
    except OSError:
        pass
    finally:
        try:
            conn.close()
        except OSError:
            pass


class _Acceptor:
    """One thread that accepts for the listening sockets of every handler in this process
    (a selector over them), so a tree of runs does not hold an accept thread per handler.
    It starts with the first listener and ends when the last one is removed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._selector: selectors.BaseSelector | None = None
        self._wake_fds: tuple[int, int] | None = None
        self._thread: threading.Thread | None = None
        self._count = 0

    def add(self, listener: socket.socket, server: SocketServer) -> None:
        listener.setblocking(False)
        with self._lock:
            if self._selector is None:
                self._selector = selectors.DefaultSelector()
                read, write = os.pipe()
                os.set_blocking(read, False)
                os.set_blocking(write, False)
                self._wake_fds = (read, write)
                self._selector.register(read, selectors.EVENT_READ, None)
            self._selector.register(listener, selectors.EVENT_READ, server)
            self._count += 1
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, args=(self._selector,), name="rlm-lm-accept", daemon=True
                )
                self._thread.start()

    def remove(self, listener: socket.socket) -> None:
        """Stop watching ``listener`` (before it is closed)."""
        with self._lock:
            if self._selector is None:
                return
            try:
                self._selector.unregister(listener)
            except (KeyError, ValueError):
                return
            self._count -= 1
            self._wake()

    def _wake(self) -> None:
        if self._wake_fds is not None:
            try:
                os.write(self._wake_fds[1], b"\0")
            except OSError:  # the pipe is full: the thread wakes anyway
                pass

    def _run(self, selector: selectors.BaseSelector) -> None:
        while True:
            for key, _ in selector.select():
                if key.data is None:
                    try:
                        os.read(key.fd, 4096)
                    except OSError:
                        pass
                    continue
                try:
                    key.data._accept_ready(key.fileobj)
                except Exception:  # one handler's failure must not stop the others' accepts
                    log.exception("rlm: the LM handler's accept loop failed")
            with self._lock:
                if self._count == 0:  # nobody listens any more: close down
                    selector.close()
                    if self._wake_fds is not None:
                        for fd in self._wake_fds:
                            os.close(fd)
                    self._selector, self._wake_fds, self._thread = None, None, None
                    return

    def _forget(self) -> None:
        """In a forked child: the parent's thread and selector are not there."""
        self.__init__()  # type: ignore[misc]


_acceptor = _Acceptor()
os.register_at_fork(after_in_child=_acceptor._forget)


class SocketServer:
    """Accepts, authenticates and serves connections; answers with ``handle_request``."""

    def _start_accepting(self, listener: socket.socket) -> None:
        """Accept on ``listener`` (non-blocking from now on) from the process's acceptor."""
        _acceptor.add(listener, self)

    def _stop_accepting(self, listener: socket.socket) -> None:
        _acceptor.remove(listener)

    def _accept_ready(self, listener: socket.socket) -> None:
        """Accept the connections waiting on ``listener`` (called by the acceptor)."""
        while self._running:
            try:
                conn, _ = listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if not self._running:
                    return  # listener shut down by stop()
                if exc.errno in _RESOURCE_ERRNOS:
                    self.stats["accept_errors"] += 1
                    self._shed_one(listener)
                    return  # the selector says when to try again
                continue  # ECONNABORTED and the like: the next connection is fine
            conn.settimeout(None)  # blocking, whatever the listener is
            try:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
            with self._conns_lock:
                if not self._running:
                    conn.close()
                    return
                full = len(self._conns) >= self.max_connections
                if not full:
                    self._conns.add(conn)
            if full:
                self.stats["refused_connections"] += 1
                _refuse(
                    conn, f"too many connections to the LM handler (limit {self.max_connections})"
                )
                continue
            try:
                threading.Thread(target=self._serve_connection, args=(conn,), daemon=True).start()
            except RuntimeError:  # no thread could be started: shed this connection
                with self._conns_lock:
                    self._conns.discard(conn)
                _refuse(conn, "the LM handler cannot start a thread for this connection")

    def _shed_one(self, listener: socket.socket) -> None:
        """Out of descriptors: free the spare one, accept the waiting connection, answer it
        with an error and close it, then take the spare back. Without a spare (or when
        even that fails), back off briefly so the loop does not spin."""
        if self._close_spare_fd():
            try:
                conn, _ = listener.accept()  # the listener is non-blocking
            except OSError:
                conn = None
            if conn is not None:
                self.stats["shed_connections"] += 1
                _refuse(conn, "the LM handler is out of file descriptors; retry later")
            self._spare_fd = _open_spare_fd()
            if conn is not None:
                return
        time.sleep(0.05)

    def _close_spare_fd(self) -> bool:
        """Close the spare descriptor (:func:`_open_spare_fd`); False when there was none."""
        spare, self._spare_fd = self._spare_fd, None
        if spare is None:
            return False
        try:
            os.close(spare)
        except OSError:
            pass
        return True

    def _serve_connection(self, conn: socket.socket) -> None:
        try:
            self.serve_stream(conn)
        finally:
            with self._conns_lock:
                self._conns.discard(conn)
            try:
                conn.close()
            except OSError:
                pass

    def serve_stream(self, conn: socket.socket) -> None:
        """Answer the frames of one connection until it closes, times out or misbehaves.

        Until the connection has shown the token, frames are capped at
        ``max_preauth_bytes`` and must arrive within ``auth_timeout``; afterwards at
        ``max_frame_bytes``, with ``idle_timeout`` between frames. Never raises.
        """
        authed = self.token is None  # the connection sent a valid auth frame
        proven = authed  # some frame carried the right token: large frames allowed
        failures = 0
        try:
            conn.settimeout(self.idle_timeout if proven else self.auth_timeout)
            while self._running:
                limit = self.max_frame_bytes
                if not proven:
                    limit = min(limit, self.max_preauth_bytes)
                try:
                    payload = recv_frame_bytes(conn, limit)
                except FrameTooLargeError as exc:
                    # The body was not read, so the stream cannot be resynced: answer, close.
                    self.stats["oversized_frames"] += 1
                    if proven:
                        message = str(exc)
                    else:
                        self.stats["unauthorized"] += 1
                        message = (
                            f"Unauthorized: frame of {exc.length:,} bytes exceeds the "
                            f"{exc.limit:,} bytes allowed before the handler token is checked; "
                            'send {"kind": "auth", "token": ...} first'
                        )
                    self._send(conn, LMResponse.error_response(message))
                    return
                except ProtocolError as exc:
                    self._send(conn, LMResponse.error_response(str(exc)))
                    return
                except TimeoutError:
                    self.stats["idle_closed"] += 1
                    return
                if payload is None:
                    return
                response, verdict = self._answer_frame(payload, authed)
                if verdict in ("auth", "ok") and not proven:
                    proven = True
                    conn.settimeout(self.idle_timeout)
                if verdict == "auth":
                    authed = True
                    continue  # a valid auth frame gets no answer
                if verdict == "refused":
                    self.stats["unauthorized"] += 1
                    failures += 1
                if response is not None and not self._send(conn, response):
                    return
                if verdict == "bad-auth" or failures >= MAX_AUTH_FAILURES:
                    return
        except OSError:
            return  # peer went away, or stop() shut the socket

    def answer_in_process(
        self, request: LMRequest, token: str | None, timeout: float | None
    ) -> LMResponse:
        """Answer a request made in this process (``send_lm_request`` to this handler's
        address) without a socket or JSON: the same token check, frame cap and answer as
        a frame on a connection, the request copied as the wire would deliver it
        (:func:`~rlm.comms.protocol.wire_form`). A call is served on a reused worker thread
        (:mod:`rlm.comms.workers`) and a batch on the batch loop, the caller waiting at most
        ``timeout`` seconds, as it would for a response frame (then ``Request failed:
        TimeoutError: timed out``); a child run (``kind="rlm"``) runs in the calling
        thread. Never raises, except what interrupts that thread (a stopped cell)."""
        if not self._token_ok(token):
            wrong = "Unauthorized: wrong handler token"
            return LMResponse.error_response(
                wrong if token else "Unauthorized: missing or wrong handler token"
            )
        try:
            data = wire_form(request.to_dict(), self.max_frame_bytes)
        except FrameTooLargeError as exc:
            if exc.length > MAX_FRAME_BYTES:  # the sender's side would not write it
                return LMResponse.error_response(f"Request failed: {type(exc).__name__}: {exc}")
            return LMResponse.error_response(str(exc))
        except ProtocolError as exc:
            return LMResponse.error_response(f"Malformed request: {exc}")
        copy = LMRequest.from_dict(data)
        if copy.prompts is not None:
            response = self._handle_request(copy, timeout)
        elif copy.kind == "rlm":
            # A child run, in the thread that asked for it (as rlms runs its children): its
            # own limits, the deadline it inherits and cancellation bound it.
            response = self.handle_request(copy)
        else:
            try:
                response = workers.call(lambda: self.handle_request(copy), timeout)
            except TimeoutError:
                return LMResponse.error_response("Request failed: TimeoutError: timed out")
        response.id = copy.id
        return response

    @staticmethod
    def _send(conn: socket.socket, response: LMResponse) -> bool:
        try:
            socket_send(conn, response.to_dict())
            return True
        except OSError:
            return False

    def _token_ok(self, token: Any) -> bool:
        return self.token is None or (
            isinstance(token, str)
            and secrets.compare_digest(
                token.encode("utf-8", "surrogatepass"), self.token.encode("utf-8")
            )
        )

    def _answer_frame(
        self, payload: bytes | bytearray, authed: bool
    ) -> tuple[LMResponse | None, str]:
        """``(response, verdict)`` for one frame of a connection.

        verdict: ``"auth"`` (a valid auth frame: no response), ``"bad-auth"`` (an auth
        frame with a wrong token: answer, then close), ``"refused"`` (a request without
        a valid token on an unauthenticated connection, or with a wrong one),
        ``"malformed"`` or ``"ok"``.
        """
        try:
            data = decode_payload(payload)
        except ProtocolError as exc:  # bad UTF-8, bad JSON, absurd nesting
            return LMResponse.error_response(f"Malformed request: {exc}"), "malformed"
        if not isinstance(data, dict):
            return LMResponse.error_response(
                "Malformed request: a request must be a JSON object"
            ), "malformed"
        if data.get("kind") == "auth":
            if self._token_ok(data.get("token")):
                return None, "auth"
            return LMResponse.error_response("Unauthorized: wrong handler token"), "bad-auth"
        request = LMRequest.from_dict(data)
        token_given = "token" in data
        if (token_given or not authed) and not self._token_ok(request.token):
            response = LMResponse.error_response("Unauthorized: missing or wrong handler token")
            response.id = request.id
            return response, "refused"
        response = self.handle_request(request)
        response.id = request.id
        return response, "ok"
