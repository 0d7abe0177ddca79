"""Small helpers shared by the loop and the logger: finding secrets and redacting them.

Secrets are redacted **by value**: :func:`collect_secrets` gathers every secret
a configuration gives a client or an environment (keys and tokens, header
values, the userinfo and query values of URLs, ``default_query`` values,
Portkey's ``virtual_key``, string literals that ``setup_code`` assigns to
secret-named variables) and :func:`redact` replaces each of them wherever it
appears -- in any string, at any depth -- not only under a key with a telling
name. :func:`register_secrets` adds values to a process-wide set that
:func:`redact` and :func:`redact_text` always apply (the logger, the printers
and ``rlm run`` use it), so a key given to one RLM never reaches a log or a
terminal.
"""

from __future__ import annotations

import ast
import functools
import re
import threading
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

#: What a redacted secret is replaced with.
REDACTED = "[REDACTED]"
#: Values shorter than this are redacted only where they stand (under their key),
#: not searched for in other text: "1" or "yes" would wipe out unrelated output.
MIN_SECRET_LENGTH = 6

_SECRET_WORDS = {
    "token",
    "secret",
    "password",
    "passwd",
    "passphrase",
    "authorization",
    "auth",
    "cookie",
    "credential",
    "credentials",
    "signature",
    "apikey",
    "sig",
    "jwt",
    "bearer",
    "session",
}
#: ``key`` is a secret after one of these words (``api_key``, ``virtual_key``), or alone.
_KEY_QUALIFIERS = {
    "api",
    "access",
    "secret",
    "private",
    "virtual",
    "auth",
    "subscription",
    "master",
    "service",
    "account",
    "signing",
    "client",
    "session",
    "encryption",
    "x",
}
#: Settings whose every value is a secret (header and query mappings, sandbox env vars).
_ALL_VALUES_SECRET = {
    "headers",
    "default_headers",
    "extra_headers",
    "http_headers",
    "default_query",
    "extra_query",
    "query",
    "query_params",
    "env",
    "env_vars",
    "envs",
    "environment_variables",
    "secrets",
}
#: Header names whose values are plainly not secrets.
_PUBLIC_HEADERS = {
    "content-type",
    "accept",
    "accept-encoding",
    "accept-language",
    "user-agent",
    "anthropic-version",
    "anthropic-beta",
    "openai-beta",
}
#: Settings that hold a URL (its userinfo and query values are secrets).
_URL_WORDS = ("url", "endpoint", "host", "base", "proxy")


@functools.lru_cache(maxsize=4096)  # the same few keys, in every logged record
def _words(key: str) -> tuple[str, ...]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key)
    return tuple(w for w in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if w)


def is_sensitive_key(key: str) -> bool:
    """Whether a setting's name says it holds a credential.

    Whole words count, so ``max_tokens`` and ``prompt_cache_key`` are settings,
    while ``api_key``, ``x-api-key``, ``virtual_key``, ``auth_token`` and
    ``Authorization`` are credentials.
    """
    words = _words(str(key))
    if not words:
        return False
    if any(w in _SECRET_WORDS for w in words):
        return True
    for i, word in enumerate(words):
        if word in ("key", "keys") and (
            len(words) == 1 or (i > 0 and words[i - 1] in _KEY_QUALIFIERS)
        ):
            return True
    return False


def filter_sensitive_keys(kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """A copy of ``kwargs`` without keys that hold credentials (rlms' helper, kept)."""
    return {k: v for k, v in (kwargs or {}).items() if not is_sensitive_key(str(k))}


# ---------------------------------------------------------------------------
# Collecting secrets
# ---------------------------------------------------------------------------


def _url_secrets(text: str, out: set[str]) -> None:
    if "://" not in text and "?" not in text:
        return
    try:
        parts = urlsplit(text)
    except ValueError:
        return
    if parts.password:
        out.add(parts.password)
    if parts.username and parts.password is not None:
        out.add(parts.username)
    if "@" in parts.netloc and not parts.password and parts.username:
        out.add(parts.username)  # a token given as the whole userinfo
    for _, value in parse_qsl(parts.query, keep_blank_values=False):
        out.add(value)


def _setup_code_secrets(code: str, out: set[str]) -> None:
    """String literals that ``code`` gives a secret-named variable, key or argument."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return

    def name_of(target: ast.AST) -> str | None:
        if isinstance(target, ast.Name):
            return target.id
        if isinstance(target, ast.Attribute):
            return target.attr
        if isinstance(target, ast.Subscript) and isinstance(target.slice, ast.Constant):
            key = target.slice.value
            return key if isinstance(key, str) else None
        return None

    def strings(node: ast.AST | None) -> list[str]:
        if node is None:
            return []
        return [
            n.value
            for n in ast.walk(node)
            if isinstance(n, ast.Constant) and isinstance(n.value, str)
        ]

    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(is_sensitive_key(name_of(t) or "") for t in targets):
                out.update(strings(node.value))
        elif isinstance(node, ast.keyword) and node.arg and is_sensitive_key(node.arg):
            out.update(strings(node.value))
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=False):
                if (
                    isinstance(key, ast.Constant)
                    and isinstance(key.value, str)
                    and is_sensitive_key(key.value)
                ):
                    out.update(strings(value))
        elif isinstance(node, ast.Call) and len(node.args) >= 2:
            # os.environ.setdefault("API_KEY", "...") / os.putenv("TOKEN", "...")
            first = node.args[0]
            if (
                isinstance(first, ast.Constant)
                and isinstance(first.value, str)
                and is_sensitive_key(first.value)
            ):
                out.update(strings(node.args[1]))


def _collect(value: Any, out: set[str], key: str | None, all_secret: bool, depth: int) -> None:
    if depth > 20:
        return
    if isinstance(value, dict):
        for k, v in value.items():
            name = str(k)
            inner_all = all_secret or name.lower() in _ALL_VALUES_SECRET
            if all_secret and name.lower() in _PUBLIC_HEADERS:
                continue
            _collect(v, out, name, inner_all, depth + 1)
        return
    if isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            _collect(item, out, key, all_secret, depth + 1)
        return
    secret = getattr(value, "get_secret_value", None)  # pydantic SecretStr
    if callable(secret):
        try:
            value = secret()
        except Exception:
            return
    if not isinstance(value, str) or not value:
        return
    if all_secret or (key is not None and is_sensitive_key(key)):
        out.add(value)
    elif key == "setup_code":
        _setup_code_secrets(value, out)
    if key is None or any(w in key.lower() for w in _URL_WORDS) or "://" in value:
        _url_secrets(value, out)


def collect_secrets(*configs: Any) -> set[str]:
    """Every secret value in ``configs`` (``backend_kwargs``, a list of
    ``other_backend_kwargs``, ``environment_kwargs``...), for :func:`redact`.

    What counts: values under credential-named keys (:func:`is_sensitive_key`)
    at any depth; every value of a header, query or environment-variable mapping
    (``default_headers``, ``default_query``, ``env``...); the userinfo and query
    values of URLs; strings that ``setup_code`` assigns to secret-named names.
    """
    out: set[str] = set()
    for config in configs:
        _collect(config, out, None, False, 0)
    out.discard("")
    return out


# ---------------------------------------------------------------------------
# The process-wide set, and redaction
# ---------------------------------------------------------------------------

_registry: set[str] = set()
_registry_lock = threading.Lock()
_pattern_cache: dict[frozenset[str], re.Pattern[str] | None] = {}


def register_secrets(*values: str | Iterable[str] | None) -> None:
    """Add secrets that :func:`redact` and :func:`redact_text` always remove (this process).

    Accepts strings and iterables of strings; use it for a secret rlm cannot see in
    the configuration (one your ``setup_code`` reads from a file, say).
    """
    found: set[str] = set()
    for value in values:
        if isinstance(value, str):
            found.add(value)
        elif value is not None:
            found.update(v for v in value if isinstance(v, str))
    found = {v for v in found if v}
    if not found:
        return
    with _registry_lock:
        if found <= _registry:
            return
        _registry.update(found)
        _pattern_cache.clear()


def registered_secrets() -> frozenset[str]:
    with _registry_lock:
        return frozenset(_registry)


def _pattern(secrets: Iterable[str] | None) -> re.Pattern[str] | None:
    with _registry_lock:
        key = frozenset(_registry.union(secrets or ()))
        if key in _pattern_cache:
            return _pattern_cache[key]
    searchable = sorted((s for s in key if len(s) >= MIN_SECRET_LENGTH), key=len, reverse=True)
    pattern = re.compile("|".join(re.escape(s) for s in searchable)) if searchable else None
    with _registry_lock:
        if len(_pattern_cache) > 64:
            _pattern_cache.clear()
        _pattern_cache[key] = pattern
    return pattern


def redact_text(text: str, secrets: Iterable[str] | None = None) -> str:
    """``text`` with every registered secret (and each of ``secrets``) replaced."""
    pattern = _pattern(secrets)
    if pattern is None or not isinstance(text, str):
        return text
    return pattern.sub(REDACTED, text)


def _strip_url(text: str) -> str:
    """A URL without its userinfo, and with its query values redacted."""
    try:
        parts = urlsplit(text)
    except ValueError:
        return text
    if not parts.scheme or not parts.netloc:
        return text
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rsplit('@', 1)[1]}"
    query = parts.query
    if query:
        query = "&".join(
            f"{k}={REDACTED}" if v else k for k, v in parse_qsl(query, keep_blank_values=True)
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact(value: Any, secrets: Iterable[str] | None = None) -> Any:
    """A copy of ``value`` with secrets replaced by ``[REDACTED]``, at any depth.

    Every string has each registered secret and each of ``secrets`` replaced
    wherever it occurs; a value under a credential-named key, or in a header or
    query mapping, is replaced whole (however short); URLs lose their userinfo
    and query values. Other settings (``max_tokens``, ``model_name``...) stay.
    """
    pattern = _pattern(secrets)
    return _redact(value, pattern, None, False, 0)


def _redact(
    value: Any, pattern: re.Pattern[str] | None, key: str | None, whole: bool, depth: int
) -> Any:
    if isinstance(value, str):
        if whole and value:
            return REDACTED
        if key is not None and "://" in value and any(w in key.lower() for w in _URL_WORDS):
            value = _strip_url(value)  # a URL setting: no userinfo, no query values
        return pattern.sub(REDACTED, value) if pattern is not None else value
    if depth > 100:
        return value
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            name = str(k)
            lowered = name.lower()
            inner_whole = (
                is_sensitive_key(name)
                or lowered in _ALL_VALUES_SECRET
                or (whole and lowered not in _PUBLIC_HEADERS)
            )
            new_key = pattern.sub(REDACTED, k) if isinstance(k, str) and pattern else k
            out[new_key] = _redact(v, pattern, name, inner_whole, depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        items = [_redact(v, pattern, key, whole, depth + 1) for v in value]
        return tuple(items) if type(value) is tuple else items
    if whole and value is not None and not isinstance(value, (bool, int, float)):
        return REDACTED
    return value
