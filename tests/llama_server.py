"""A real OpenAI-compatible llama.cpp server for tests (a helper, not a test module).

``with llama_server(model_path) as base_url:`` starts ``python -m
llama_cpp.server`` on a free local port in its own process group, waits
until ``GET /v1/models`` answers, yields ``http://127.0.0.1:PORT/v1`` and
stops the whole process group on exit.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from rlm.local_model import find_model


class LlamaServerError(RuntimeError):
    """The server did not start, or stopped before it was ready."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no output)"
    return "\n".join(text.strip().splitlines()[-lines:]) or "(no output)"


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _stop(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=grace)


@contextlib.contextmanager
def llama_server(
    model_path: str | os.PathLike[str],
    n_ctx: int = 8192,
    n_threads: int = 2,
    startup_timeout: float = 180.0,
) -> Iterator[str]:
    """Run ``llama_cpp.server`` on ``model_path``; yields its ``/v1`` base URL."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model_path),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        str(n_ctx),
        "--n_threads",
        str(n_threads),
    ]
    base_url = f"http://127.0.0.1:{port}/v1"
    with tempfile.TemporaryDirectory(prefix="llama-server-") as scratch:
        log = Path(scratch) / "server.log"
        with open(log, "wb") as log_file:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, stopped as one
            )
        try:
            deadline = time.monotonic() + startup_timeout
            while not _ready(f"{base_url}/models"):
                if time.monotonic() > deadline:
                    raise LlamaServerError(
                        f"llama_cpp.server was not ready after {startup_timeout:.0f}s "
                        f"on port {port}; its output ends with:\n{_tail(log)}"
                    )
                try:
                    # Waiting on the process doubles as the pause between polls
                    # and notices at once when the server dies.
                    code = process.wait(timeout=0.25)
                except subprocess.TimeoutExpired:
                    continue
                raise LlamaServerError(
                    f"llama_cpp.server exited with status {code} before it was ready; "
                    f"its output ends with:\n{_tail(log)}"
                )
            yield base_url
        finally:
            _stop(process)


def real_model_or_skip(*modules: str) -> Path:
    """The fetched model's path, or skip (fail, with RLM_REQUIRE_REAL_MODEL=1)."""
    required = os.environ.get("RLM_REQUIRE_REAL_MODEL") == "1"
    missing = [m for m in ("llama_cpp", *modules) if importlib.util.find_spec(m) is None]
    reason = None
    if missing:
        reason = f'{", ".join(missing)} not importable (pip install "rlm[local-server]")'
    path = find_model()
    if reason is None and path is None:
        explicit = os.environ.get("RLM_LOCAL_MODEL")
        reason = (
            f"RLM_LOCAL_MODEL={explicit!r} is not a file"
            if explicit
            else "the local model is not fetched (python -m rlm fetch-model)"
        )
    if reason is not None:
        if required:
            pytest.fail(f"RLM_REQUIRE_REAL_MODEL=1 but {reason}")
        pytest.skip(reason)
    assert path is not None
    return path
