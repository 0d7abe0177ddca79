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
from rlm.utils.exceptions import MissingBaseURLError
from rlm.utils.registry import Registry
from rlm.utils.registry import lazy as _lazy

Factory = Callable[[dict[str, Any]], BaseLM]

_BACKENDS: Registry[BaseLM] = Registry("backend")


def register_backend(name: str, factory: Factory) -> None:
    """Make ``backend=name`` build a client with ``factory(backend_kwargs)``."""
    _BACKENDS.register(name, factory)


def available_backends() -> list[str]:
    return _BACKENDS.names()


def get_client(backend: str, backend_kwargs: dict[str, Any] | None) -> BaseLM:
    """Build the client for ``backend``. Raises ``ConfigurationError`` for an unknown name."""
    return _BACKENDS.build(backend, backend_kwargs)


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

__all__ = [
    "BaseLM",
    "Generation",
    "UsageTracker",
    "available_backends",
    "get_client",
    "register_backend",
    "to_messages",
]
