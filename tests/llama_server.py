"""The real local model for tests (a helper, not a test module): its path or a skip, and
a real OpenAI-compatible llama.cpp server (:func:`rlm.local_server.llama_server`).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from rlm.local_model import find_model
from rlm.local_server import LlamaServerError, free_port, llama_server

__all__ = ["LlamaServerError", "free_port", "llama_server", "real_model_or_skip"]


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
