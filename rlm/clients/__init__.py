"""Language-model clients and the ``backend=`` registry.

``get_client(backend, backend_kwargs)`` builds a client by name. Built-in
backends register here exactly like user ones do (``register_backend``), and
each provider module is imported only when its backend is used, so a missing
optional SDK costs nothing until it is asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rlm.clients.base_lm import BaseLM, Generation, UsageTracker, to_messages
from rlm.utils.exceptions import ConfigurationError, MissingBaseURLError
from rlm.utils.registry import BACKEND_ENTRY_POINTS, Entry, Registry
from rlm.utils.registry import lazy as _lazy

Factory = Callable[[dict[str, Any]], BaseLM]

_BACKENDS: Registry[BaseLM] = Registry("backend", BACKEND_ENTRY_POINTS)


def register_backend(name: str, factory: Factory) -> None:
    """Make ``backend=name`` build a client with ``factory(backend_kwargs)``."""
    _BACKENDS.register(name, factory)


def available_backends() -> list[str]:
    """The names ``backend=`` accepts, sorted."""
    return _BACKENDS.names()


def backend_entries() -> list[Entry]:
    """Every backend with where it comes from: built-in, registered, or a plugin of the
    ``rlm.backends`` entry-point group (``rlm backends`` prints this)."""
    return _BACKENDS.entries()


def get_client(backend: str, backend_kwargs: dict[str, Any] | None) -> BaseLM:
    """Build the client for ``backend``. Raises ``ConfigurationError`` for an unknown name."""
    return _BACKENDS.build(backend, backend_kwargs)


#: Provider prefixes accepted in model strings besides the backend names themselves.
MODEL_PREFIX_ALIASES: dict[str, str] = {
    "azure": "azure_openai",
    "google": "gemini",
    "local": "llama_cpp",
    "llama.cpp": "llama_cpp",
    "llamacpp": "llama_cpp",
}


def parse_model_string(model: str, backend: str | None = None) -> tuple[str, str | None]:
    """Split ``"provider/model"`` (the LiteLLM convention) into ``(backend, model_name)``.

    ``"openai/gpt-4o-mini"`` -> ``("openai", "gpt-4o-mini")``; only the first ``/``
    splits, so ``"openrouter/anthropic/claude-3.5-sonnet"`` keeps its vendor part and
    ``"litellm/groq/llama3-8b"`` hands ``"groq/llama3-8b"`` to LiteLLM. The provider is a
    backend name or an alias in :data:`MODEL_PREFIX_ALIASES` (``azure``, ``google``,
    ``local``). ``"local"`` alone means the embedded model (its name: None).

    With ``backend`` given, the string is that backend's model name unless it starts with
    ``backend/`` (then the prefix is dropped), so ``backend="vllm",
    model="Qwen/Qwen2.5-7B"`` stays whole.

    Raises:
        ConfigurationError: the prefix is no known provider, or a part is empty.
    """
    text = str(model).strip()
    if backend is not None:
        prefix, sep, rest = text.partition("/")
        if sep and MODEL_PREFIX_ALIASES.get(prefix, prefix) == backend and rest:
            return backend, rest
        return backend, text or None
    if text in ("local", "llama_cpp"):
        return "llama_cpp", None
    prefix, sep, rest = text.partition("/")
    name = MODEL_PREFIX_ALIASES.get(prefix, prefix)
    if not sep or not rest or not prefix:
        raise ConfigurationError(
            f"Model {model!r} names no provider; write it as provider/model, e.g. "
            f"openai/gpt-4o-mini or anthropic/claude-sonnet-4-5 (providers: "
            f"{', '.join(available_backends())})"
        )
    if name not in _BACKENDS.names():
        raise ConfigurationError(
            f"Unknown provider {prefix!r} in model {model!r}. Providers: "
            f"{', '.join(available_backends())}; for any provider LiteLLM knows, write "
            f"litellm/{text}"
        )
    return name, rest


def resolve_model(
    model: str, backend: str | None = None, backend_kwargs: dict[str, Any] | None = None
) -> tuple[str, dict[str, Any]]:
    """``(backend, backend_kwargs)`` for a model string: :func:`parse_model_string`, with
    the model name put in (a copy of) ``backend_kwargs`` as ``model_name``."""
    name, model_name = parse_model_string(model, backend)
    kwargs = dict(backend_kwargs or {})
    if model_name is not None:
        kwargs["model_name"] = model_name
    return name, kwargs


def _vllm(kwargs: dict[str, Any]) -> BaseLM:
    if not kwargs.get("base_url"):
        raise MissingBaseURLError(
            "backend='vllm' needs backend_kwargs['base_url'], the address of your server "
            "(e.g. 'http://127.0.0.1:8000/v1')"
        )
    # A self-hosted model has no list price: only the user's `prices` can price it.
    return _lazy("rlm.clients.openai", "OpenAIClient", price_provider=None)(kwargs)


register_backend("openai", _lazy("rlm.clients.openai", "OpenAIClient"))
register_backend("vllm", _vllm)
register_backend(
    "openrouter",
    _lazy(
        "rlm.clients.openai",
        "OpenAIClient",
        base_url="https://openrouter.ai/api/v1",
        api_key_env="OPENROUTER_API_KEY",
        price_provider="openrouter",
    ),
)
register_backend(
    "vercel",
    _lazy(
        "rlm.clients.openai",
        "OpenAIClient",
        base_url="https://ai-gateway.vercel.sh/v1",
        api_key_env="AI_GATEWAY_API_KEY",
        price_provider="any",
    ),
)
register_backend(
    "azure_openai", _lazy("rlm.clients.azure_openai", "AzureOpenAIClient", extra="azure_openai")
)
register_backend("anthropic", _lazy("rlm.clients.anthropic", "AnthropicClient", extra="anthropic"))
register_backend("gemini", _lazy("rlm.clients.gemini", "GeminiClient", extra="gemini"))
register_backend("litellm", _lazy("rlm.clients.litellm", "LiteLLMClient", extra="litellm"))
register_backend("portkey", _lazy("rlm.clients.portkey", "PortkeyClient", extra="portkey"))
register_backend("scripted", _lazy("rlm.clients.scripted", "ScriptedLM"))
register_backend("mock", _lazy("rlm.clients.scripted", "ScriptedLM"))
register_backend("llama_cpp", _lazy("rlm.clients.llama_cpp", "LlamaCppClient", extra="local"))
_BACKENDS.seal_builtins()

__all__ = [
    "BaseLM",
    "Generation",
    "UsageTracker",
    "available_backends",
    "backend_entries",
    "get_client",
    "parse_model_string",
    "register_backend",
    "resolve_model",
    "to_messages",
]
