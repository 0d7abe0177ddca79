"""An OpenAI-compatible server for a local GGUF model: ``python -m llama_cpp.server`` on a
free loopback port, in its own process group, stopped as one.

``with llama_server(model_path) as base_url:`` waits until ``GET /v1/models`` answers and
yields ``http://127.0.0.1:PORT/v1``; point any OpenAI-compatible client at it (backend
``"openai"``, ``base_url=...``, any ``api_key``). Needs the ``[local-server]`` extra. The
tests and ``benchmarks/longcontext`` start their servers with it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = ["LLAMA_SERVER", "LlamaServerError", "free_port", "llama_server"]

#: What follows the interpreter in the server's command: ``python -m llama_cpp.server``.
LLAMA_SERVER = ("-m", "llama_cpp.server")


class LlamaServerError(RuntimeError):
    """The server did not start, or stopped before it was ready."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
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
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _stop(process: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    """SIGTERM to the server's process group, SIGKILL after ``grace`` seconds."""
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


def _wait_ready(
    process: subprocess.Popen[bytes],
    base_url: str,
    log: Path,
    kept: bool,
    startup_timeout: float,
) -> None:
    where = f" (all of it in {log})" if kept else ""
    deadline = time.monotonic() + startup_timeout
    while not _ready(f"{base_url}/models"):
        if time.monotonic() > deadline:
            raise LlamaServerError(
                f"llama_cpp.server was not ready after {startup_timeout:.0f} s; "
                f"its output{where} ends with:\n{_tail(log)}"
            )
        try:
            # Waiting on the process is the pause between polls, and notices a death.
            code = process.wait(timeout=0.25)
        except subprocess.TimeoutExpired:
            continue
        raise LlamaServerError(
            f"llama_cpp.server exited with status {code} before it was ready; "
            f"its output{where} ends with:\n{_tail(log)}"
        )


@contextlib.contextmanager
def llama_server(
    model_path: str | os.PathLike[str],
    n_ctx: int = 8192,
    n_threads: int = 2,
    *,
    log_path: str | os.PathLike[str] | None = None,
    extra_args: Sequence[str] = (),
    startup_timeout: float = 300.0,
    launcher: Sequence[str] = LLAMA_SERVER,
) -> Iterator[str]:
    """Run ``llama_cpp.server`` on ``model_path``; yields its ``/v1`` base URL.

    The server's output goes to ``log_path`` (appended), or to a temporary file that is
    removed on exit. ``extra_args`` are more ``llama_cpp.server`` options. ``launcher``
    is what follows the interpreter in the command: a script that takes the server's
    options and starts it another way (``benchmarks/longcontext/noreuse_server.py``).
    """
    port = free_port()
    command = [
        sys.executable, *launcher,
        "--model", str(model_path),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--n_ctx", str(n_ctx),
        "--n_threads", str(n_threads),
        # The last token's logits only: all of them take n_ctx x vocabulary floats (GBs).
        "--logits_all", "False",
        *extra_args,
    ]  # fmt: skip
    base_url = f"http://127.0.0.1:{port}/v1"
    with contextlib.ExitStack() as stack:
        if log_path is None:
            log = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="llama-server-")))
            log = log / "server.log"
        else:
            log = Path(log_path)
            log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as log_file:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, stopped as one
            )
        try:
            _wait_ready(process, base_url, log, log_path is not None, startup_timeout)
            yield base_url
        finally:
            _stop(process)
