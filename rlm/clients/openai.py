"""OpenAI chat completions, and every server that speaks the same API.

Used by the ``openai``, ``vllm``, ``openrouter`` and ``vercel`` backends (and
by any OpenAI-compatible server: ``llama_cpp.server``, Ollama, LM Studio).
Retries (429 with ``Retry-After``, 5xx, connection errors, timeouts) are the
SDK's own, configured with ``max_retries``.
"""

from __future__ import annotations

import hashlib
import threading
from typing import Any

from rlm.clients.base_lm import (
    DEFAULT_TIMEOUT,
    BaseLM,
    Generation,
    Messages,
    api_key_from,
    check_sdk_options,
    missing_api_key,
    require_model_name,
)


def _usage_numbers(usage: Any) -> tuple[int, int, int, float | None]:
    """(input, output, cached, cost) from an OpenAI-style usage object (any may be missing)."""
    if usage is None:
        return 0, 0, 0, None
    input_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
    output_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
    details = getattr(usage, "prompt_tokens_details", None)
    cached = int(getattr(details, "cached_tokens", 0) or 0) if details is not None else 0
    cost = getattr(usage, "cost", None)
    if cost is None:
        extra = getattr(usage, "model_extra", None) or {}
        cost = extra.get("cost")
    return input_tokens, output_tokens, cached, (float(cost) if cost is not None else None)


class OpenAIClient(BaseLM):
    """Chat completions through the official ``openai`` SDK (sync and async)."""

    def __init__(
        self,
        api_key: str | None = None,
        model_name: str | None = None,
        base_url: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        max_retries: int = 4,
        sampling_args: dict[str, Any] | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        prompt_cache_key: str | None = None,
        auto_prompt_cache_key: bool | None = None,
        prices: dict[str, Any] | None = None,
        price_provider: str | None = "openai",
        **client_kwargs: Any,
    ):
        model_name = require_model_name("OpenAIClient", model_name, "gpt-4o-mini")
        super().__init__(
            model_name=model_name,
            timeout=timeout,
            sampling_args=sampling_args,
            prices=prices,
            price_provider=price_provider,
        )
        api_key = api_key_from(api_key, api_key_env)
        if not api_key:
            if base_url is None:
                raise missing_api_key("OpenAI", api_key_env)
            api_key = "EMPTY"  # local OpenAI-compatible servers accept any key
        check_sdk_options(
            "OpenAI",
            client_kwargs,
            self._sdk_class(asynchronous=False),
            "model_name, api_key, base_url, timeout, max_retries, sampling_args, "
            "prompt_cache_key, auto_prompt_cache_key, prices and price_provider",
        )
        self.base_url = base_url
        self.prompt_cache_key = prompt_cache_key
        # Derive a cache key for root-loop calls; by default only on api.openai.com
        # (other OpenAI-compatible servers may refuse the unknown field).
        self.auto_prompt_cache_key = (
            base_url is None if auto_prompt_cache_key is None else auto_prompt_cache_key
        )
        self._client_args: dict[str, Any] = {
            "api_key": api_key,
            "base_url": base_url,
            "timeout": timeout,
            "max_retries": max_retries,
            **client_kwargs,
        }
        self._sync: Any = None
        self._async: dict[int, Any] = {}  # one async client per event loop
        self._lock = threading.Lock()

    @staticmethod
    def _sdk_class(asynchronous: bool) -> Any:
        """The SDK client class; subclasses for other endpoints (Azure) return theirs."""
        import openai

        return openai.AsyncOpenAI if asynchronous else openai.OpenAI

    # SDK clients are created on first use: constructing an RLM stays cheap.
    def _sync_client(self) -> Any:
        if self._sync is None:
            with self._lock:
                if self._sync is None:
                    self._sync = self._sdk_class(asynchronous=False)(**self._client_args)
        return self._sync

    def _async_client(self) -> Any:
        import asyncio

        loop_id = id(asyncio.get_running_loop())
        with self._lock:
            client = self._async.get(loop_id)
            if client is None:
                client = self._async[loop_id] = self._sdk_class(asynchronous=True)(
                    **self._client_args
                )
        return client

    def _request(self, messages: Messages, model: str | None) -> dict[str, Any]:
        args: dict[str, Any] = {"model": model or self.model_name, "messages": messages}
        args.update(self.sampling_args)
        key = self.prompt_cache_key
        if (
            key is None
            and self.auto_prompt_cache_key
            and messages
            and messages[0].get("role") == "system"
        ):
            # A root-loop call on api.openai.com: its system prompt is a stable prefix, so a
            # key derived from it routes repeated turns to the same prompt cache.
            digest = hashlib.sha256(str(messages[0].get("content", "")).encode("utf-8")).hexdigest()
            key = f"rlm-{digest[:24]}"
        if key and "prompt_cache_key" not in args:
            args["prompt_cache_key"] = key
        return args

    def _parse(self, response: Any, model: str) -> Generation:
        choice = response.choices[0] if response.choices else None
        text = (choice.message.content if choice is not None else None) or ""
        input_tokens, output_tokens, cached, cost = _usage_numbers(response.usage)
        return Generation(
            text=text,
            model=model,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cached_tokens=cached,
            cost=cost,
        )

    def _generate(self, messages: Messages, model: str | None = None) -> Generation:
        args = self._request(messages, model)
        response = self._sync_client().chat.completions.create(**args)
        return self._parse(response, args["model"])

    async def _agenerate(self, messages: Messages, model: str | None = None) -> Generation:
        args = self._request(messages, model)
        response = await self._async_client().chat.completions.create(**args)
        return self._parse(response, args["model"])

    def close(self) -> None:
        if self._sync is not None:
            self._sync.close()
            self._sync = None
        self._async.clear()
