"""The socket side of :class:`rlm.comms.lm_handler.LMHandler`: the accept loop, one
serving thread per connection, frame authentication and the bounds on each connection
(see the handler's module docstring for what is bounded and how).

:class:`SocketServer` is the handler's base class; answering a request is the handler's
``handle_request``.
"""

from __future__ import annotations

import errno
import os
import secrets
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


class SocketServer:
    """Accepts, authenticates and serves connections; answers with ``handle_request``."""

    def _accept_loop(self) -> None:
        listener = self._listener
        while self._running and listener is not None:
            try:
                conn, _ = listener.accept()
            except OSError as exc:
                if not self._running:
                    return  # listener shut down by stop()
                if exc.errno in _RESOURCE_ERRNOS:
                    self.stats["accept_errors"] += 1
                    self._shed_one(listener)
                continue  # ECONNABORTED and the like: the next connection is fine
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
                listener.settimeout(0)
                try:
                    conn, _ = listener.accept()
                finally:
                    listener.settimeout(None)
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
        (:func:`~rlm.comms.protocol.wire_form`). A call, or a child run, is served on a
        reused worker thread (:mod:`rlm.comms.workers`) and a batch on the batch loop; the
        caller waits at most ``timeout`` seconds, as it would for a response frame, and
        gets ``Request failed: TimeoutError: timed out`` then. Never raises."""
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
        else:
            future = workers.submit(lambda: self.handle_request(copy))
            try:
                response = future.result(timeout)
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
