"""Token counts and context windows, offline.

These machines cannot download tokenizer files, so counting uses the
provider's reported usage where there is one (the loop feeds it in) and
otherwise an estimate of four characters per token, which is close for
English prose and code with BPE tokenizers and errs high for CJK text.

Context windows come from :data:`MODEL_CONTEXT_LIMITS` (also named
``MODEL_CONTEXT_WINDOWS``; the longest key contained in the model name wins); override with ``RLM(context_window=...)``
or :func:`register_context_window`. A client may also say its own window
(``client.context_window``, e.g. the llama.cpp client's ``n_ctx``).
"""

from __future__ import annotations

import json
from typing import Any

#: Used when nothing else knows the model (rlms' name; ``DEFAULT_CONTEXT_WINDOW`` is ours).
DEFAULT_CONTEXT_LIMIT = 128_000
DEFAULT_CONTEXT_WINDOW = DEFAULT_CONTEXT_LIMIT

#: Characters per token for the estimate (``CHARS_PER_TOKEN_ESTIMATE`` in rlms).
CHARS_PER_TOKEN = 4
CHARS_PER_TOKEN_ESTIMATE = CHARS_PER_TOKEN

#: Input context window in tokens, keyed by a substring of the model name (the longest
#: contained key wins). rlms' table plus newer models; ``MODEL_CONTEXT_LIMITS`` (rlms'
#: name) is the same dict, so changing either changes both.
MODEL_CONTEXT_WINDOWS: dict[str, int] = {
    # OpenAI
    "gpt-5-nano": 272_000,
    "gpt-5": 272_000,
    "gpt-4.1": 1_047_576,
    "gpt-4o-mini": 128_000,
    "gpt-4o-2024": 128_000,
    "gpt-4o": 128_000,
    "gpt-4-turbo-preview": 128_000,
    "gpt-4-turbo": 128_000,
    "gpt-4-32k": 32_768,
    "gpt-4": 8_192,
    "gpt-3.5-turbo-16k": 16_385,
    "gpt-3.5-turbo": 16_385,
    "o1-mini": 128_000,
    "o1-preview": 128_000,
    "o1": 200_000,
    "o3": 200_000,
    "o4-mini": 200_000,
    # Anthropic
    "claude-3-5-sonnet": 200_000,
    "claude-3-5-haiku": 200_000,
    "claude-3-opus": 200_000,
    "claude-3-sonnet": 200_000,
    "claude-3-haiku": 200_000,
    "claude-2.1": 200_000,
    "claude-2": 100_000,
    "claude": 200_000,
    # Gemini
    "gemini-2.5-flash": 1_000_000,
    "gemini-2.5-pro": 1_000_000,
    "gemini-2.0-flash": 1_000_000,
    "gemini-1.5-pro": 1_000_000,
    "gemini-1.5-flash": 1_000_000,
    "gemini-1.0-pro": 30_720,
    "gemini": 1_000_000,
    # Qwen
    "qwen3-max": 256_000,
    "qwen3-72b": 128_000,
    "qwen3-32b": 128_000,
    "qwen3-8b": 32_768,
    "qwen3": 128_000,
    "qwen2.5-coder": 32_768,
    # Kimi
    "kimi-k2.5": 262_000,
    "kimi-k2-0905": 256_000,
    "kimi-k2-thinking": 256_000,
    "kimi-k2": 128_000,
    "kimi": 128_000,
    # GLM
    "glm-4.6": 200_000,
    "glm-4-9b": 1_000_000,
    "glm-4": 128_000,
    "glm": 128_000,
    # Others
    "llama-3": 128_000,
    "deepseek": 128_000,
    "mistral": 32_000,
}
MODEL_CONTEXT_LIMITS = MODEL_CONTEXT_WINDOWS


def register_context_window(model_substring: str, tokens: int) -> None:
    """Set (or override) the window of every model whose name contains ``model_substring``."""
    if tokens < 1:
        raise ValueError("tokens must be positive")
    MODEL_CONTEXT_WINDOWS[model_substring.lower()] = int(tokens)


def get_context_limit(model_name: str) -> int:
    """The context window of ``model_name`` from the table: an exact key, else the longest
    key the name contains (ignoring case), else ``DEFAULT_CONTEXT_LIMIT``."""
    exact = MODEL_CONTEXT_LIMITS.get(model_name or "")
    if exact is not None:
        return exact
    name = (model_name or "").lower()
    best = ""
    for key in MODEL_CONTEXT_LIMITS:
        if key.lower() in name and len(key) > len(best):
            best = key
    return MODEL_CONTEXT_LIMITS[best] if best else DEFAULT_CONTEXT_LIMIT


def context_window_for(client: Any, override: int | None = None) -> int:
    """The window to plan with: an explicit override, else the client's own, else the table."""
    if override:
        return int(override)
    own = getattr(client, "context_window", None)
    if isinstance(own, int) and own > 0:
        return own
    return get_context_limit(str(getattr(client, "model_name", "") or ""))


def estimate_tokens(text: str) -> int:
    """An offline token estimate of ``text``."""
    return (len(text) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN if text else 0


def count_tokens(messages: list[dict[str, Any]], model_name: str | None = None) -> int:
    """Estimated tokens of a message list (content plus a few per message for framing)."""
    total = 0
    for message in messages:
        content = message.get("content", "")
        if not isinstance(content, str):
            content = json.dumps(content, default=repr)
        total += estimate_tokens(content) + 4
    return total
