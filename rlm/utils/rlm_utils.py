"""Small helpers shared by the loop and the logger."""

from __future__ import annotations

from typing import Any

_SECRET_WORDS = ("api_key", "apikey", "secret", "token", "password", "authorization")


def is_sensitive_key(key: str) -> bool:
    lowered = key.lower().replace("-", "_")
    return any(word in lowered for word in _SECRET_WORDS) or ("api" in lowered and "key" in lowered)


def filter_sensitive_keys(kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """A copy of ``kwargs`` without keys that hold credentials (for logs and metadata)."""
    return {k: v for k, v in (kwargs or {}).items() if not is_sensitive_key(str(k))}
