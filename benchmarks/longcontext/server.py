"""A tokenizer for sizing contexts and cutting the DIRECT arm's context to the window.

The model every arm shares is one loopback ``llama_cpp.server`` for the embedded GGUF,
started by :func:`rlm.local_server.llama_server`.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any


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
