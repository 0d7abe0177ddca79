"""``rlm serve``: an OpenAI-compatible endpoint backed by an RLM (``pip install "rlm[server]"``).

See :mod:`rlm.serve.app` and docs/serving.md. Importing this package needs Starlette and
uvicorn only when the app is built.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ServeConfig", "ServerThread", "create_app", "is_loopback"]


def __getattr__(name: str) -> Any:
    if name in ("ServeConfig", "create_app"):
        from rlm.serve import app

        return getattr(app, name)
    if name in ("ServerThread", "is_loopback"):
        from rlm.serve import runner

        return getattr(runner, name)
    raise AttributeError(name)
