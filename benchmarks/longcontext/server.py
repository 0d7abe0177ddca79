"""The model every arm shares: one loopback ``llama_cpp.server`` for the embedded GGUF,
and a tokenizer for sizing contexts and cutting the DIRECT arm's context to the window.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any


class ServerError(RuntimeError):
    """The model server did not start, or stopped before it was ready."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _tail(path: Path, lines: int = 20) -> str:
    text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
    return "\n".join(text.strip().splitlines()[-lines:]) or "(no output)"


@contextlib.contextmanager
def llama_server(
    model_path: str | os.PathLike[str],
    log_path: Path,
    n_ctx: int,
    n_threads: int,
    extra_args: Sequence[str] = (),
    startup_timeout: float = 300.0,
) -> Iterator[str]:
    """Run ``python -m llama_cpp.server`` on 127.0.0.1 (its own process group, its output
    in ``log_path``) and yield its ``/v1`` base URL; the group is stopped on exit."""
    port = _free_port()
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
        # Logits of the last token only: all of them would take n_ctx x vocab floats (5 GB).
        "--logits_all",
        "False",
        *extra_args,
    ]
    base_url = f"http://127.0.0.1:{port}/v1"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + startup_timeout
        while not _ready(f"{base_url}/models"):
            if time.monotonic() > deadline:
                raise ServerError(
                    f"llama_cpp.server was not ready after {startup_timeout:.0f} s; "
                    f"{log_path} ends with:\n{_tail(log_path)}"
                )
            try:
                code = process.wait(timeout=0.25)  # the pause between polls; notices a death
            except subprocess.TimeoutExpired:
                continue
            raise ServerError(
                f"llama_cpp.server exited with status {code} before it was ready; "
                f"{log_path} ends with:\n{_tail(log_path)}"
            )
        yield base_url
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=15)


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """File descriptor 2 sent to /dev/null meanwhile (C libraries write there directly)."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class Tokens:
    """Token counts: exact with a GGUF tokenizer (llama.cpp, vocabulary only), else
    ``len(text) / chars_per_token``."""

    def __init__(self, chars_per_token: float = 4.0, gguf: str | os.PathLike[str] | None = None):
        if chars_per_token <= 0:
            raise ValueError(f"chars_per_token must be > 0, got {chars_per_token}")
        self.chars_per_token = chars_per_token
        self.gguf = str(gguf) if gguf is not None else None
        self._vocab: Any = None
        if gguf is not None:
            try:
                import llama_cpp
            except ImportError as exc:
                raise ValueError(
                    f"a GGUF tokenizer needs llama-cpp-python ({exc}); "
                    'pip install "rlm[local]", or drop --tokenizer'
                ) from None
            with _quiet_stderr():  # llama.cpp prints a context warning even when not verbose
                self._vocab = llama_cpp.Llama(str(gguf), vocab_only=True, verbose=False)

    @property
    def exact(self) -> bool:
        return self._vocab is not None

    def _ids(self, text: str) -> list[int]:
        return list(self._vocab.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def count(self, text: str) -> int:
        if self._vocab is None:
            return int(len(text) / self.chars_per_token + 0.999)
        return len(self._ids(text))

    def ratio(self, sample: str) -> float:
        """Characters per token of ``sample``."""
        return len(sample) / max(1, self.count(sample))

    def head(self, text: str, tokens: int) -> str:
        """The longest start of ``text`` that is at most ``tokens`` tokens."""
        if tokens <= 0:
            return ""
        if self._vocab is None:
            return text[: int(tokens * self.chars_per_token)]
        # No token is longer than 64 characters: the first tokens*64 characters suffice.
        ids = self._ids(text[: tokens * 64])
        if len(ids) <= tokens:
            return text[: tokens * 64]
        return self._vocab.detokenize(ids[:tokens]).decode("utf-8", errors="ignore")
