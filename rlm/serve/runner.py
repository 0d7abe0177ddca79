"""Running the app: the loopback rule, and uvicorn in a background thread."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
from typing import Any

from rlm.utils.exceptions import ConfigurationError


def _require_server_extra() -> Any:
    try:
        import starlette  # noqa: F401
        import uvicorn
    except ImportError:
        raise ConfigurationError(
            'rlm serve needs Starlette and uvicorn; install them with: pip install "rlm[server]"'
        ) from None
    return uvicorn


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, api_key: str | None) -> None:
    """Refuse to serve a non-loopback address without an API key."""
    if not is_loopback(host) and not api_key:
        raise ConfigurationError(
            f"refusing to serve on {host!r} without --api-key: anyone who can reach it could "
            "run code through the RLM; pass --api-key KEY (or RLM_SERVE_API_KEY), or bind "
            "127.0.0.1"
        )


def listen(host: str, port: int) -> socket.socket:
    """A listening socket with TCP_NODELAY, which accepted sockets inherit (no 40 ms
    Nagle/delayed-ACK stall between a response's head and its body)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host.strip("[]"), port))
    sock.listen(2048)
    return sock


def serve_forever(app: Any, host: str, port: int, log_level: str = "info") -> None:
    """Serve ``app`` with uvicorn on ``host:port`` until interrupted."""
    uvicorn = _require_server_extra()
    sock = listen(host, port)
    try:
        server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="off"))
        asyncio.run(server.serve(sockets=[sock]))
    finally:
        sock.close()


class ServerThread:
    """uvicorn serving ``create_app(config)`` in a thread (tests, benchmarks, notebooks).

    ``with ServerThread(config) as server: server.url`` -> ``http://127.0.0.1:PORT/v1``.
    Port 0 picks a free port. Stopped on exit, even after a failure."""

    def __init__(self, config: Any, host: str = "127.0.0.1", port: int = 0, **uvicorn_kw: Any):
        uvicorn = _require_server_extra()
        check_bind(host, config.api_key)
        from rlm.serve.app import create_app

        self._app_factory = lambda: create_app(config)
        self._config = uvicorn.Config(
            self._app_factory,
            factory=True,
            host=host,
            port=port,
            log_level="warning",
            lifespan="off",
            **uvicorn_kw,
        )
        self._server = uvicorn.Server(self._config)
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._error: BaseException | None = None
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def _run(self, sock: socket.socket) -> None:
        try:
            asyncio.run(self._server.serve(sockets=[sock]))
        except BaseException as exc:  # reported by stop()
            self._error = exc

    def start(self) -> ServerThread:
        """Bind and listen now (requests queue until uvicorn accepts them), serve in a thread."""
        sock = listen(self.host, self.port)
        self.port = sock.getsockname()[1]
        self._sock = sock
        self._thread = threading.Thread(
            target=self._run, args=(sock,), name="rlm-serve", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._sock is not None:
            self._sock.close()
        if self._error is not None:
            raise self._error

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
