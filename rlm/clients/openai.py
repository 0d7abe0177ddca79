"""OpenAI chat completions, and every server that speaks the same API.

Used by the ``openai``, ``vllm``, ``openrouter`` and ``vercel`` backends (and
by any OpenAI-compatible server: ``llama_cpp.server``, Ollama, LM Studio).
Retries (429 with ``Retry-After``, 5xx, connection errors, timeouts) are the
SDK's own, configured with ``max_retries``.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

# Module-level, as in rlms: ``patch("rlm.clients.openai.openai")`` replaces the SDK
# for clients constructed while the patch is active.
import openai

from rlm.clients.base_lm import (
    DEFAULT_TIMEOUT,
    BaseLM,
    Generation,
    Messages,
    SDKClientAttribute,
    SDKClients,
    refusal_overflow,
    relay_stream,
    require_model_name,
    required_setting,
    with_stop,
)

# API keys from the environment at import, named as in rlms (a fallback: the environment
# is read again when a client is built). No .env file is loaded.
DEFAULT_OPENAI_API_KEY = os.getenv("OPENAI_API_KEY")
DEFAULT_OPENROUTER_API_KEY = os.getenv("OPENROUTER_API_KEY")
DEFAULT_VERCEL_API_KEY = os.getenv("AI_GATEWAY_API_KEY")
DEFAULT_PRIME_API_KEY = os.getenv("PRIME_API_KEY")
DEFAULT_PRIME_INTELLECT_BASE_URL = "https://api.pinference.ai/api/v1/"

OPENAI_API_HOST = "api.openai.com"

#: Models that take ``max_completion_tokens`` (and refuse ``max_tokens``) on any endpoint:
#: the o-series and GPT-5 families, with or without a ``provider/`` prefix.
_REASONING_MODEL = re.compile(r"(?:^|/)(?:o[1-9](?:$|[-.])|gpt-5)", re.IGNORECASE)


def is_reasoning_model(model: str) -> bool:
    """Whether ``model`` is an OpenAI reasoning model (o1/o3/o4..., gpt-5...)."""
    return bool(_REASONING_MODEL.search(model or ""))


def _default_key(base_url: str | None) -> str | None:
    """The key rlms would use for ``base_url`` (read at call time, so patching works)."""
    url = (base_url or "").rstrip("/")
    if not url or url == "https://api.openai.com/v1":
        return DEFAULT_OPENAI_API_KEY
    if url == "https://openrouter.ai/api/v1":
        return DEFAULT_OPENROUTER_API_KEY
    if url == "https://ai-gateway.vercel.sh/v1":
        return DEFAULT_VERCEL_API_KEY
    if url == DEFAULT_PRIME_INTELLECT_BASE_URL.rstrip("/"):
        return DEFAULT_PRIME_API_KEY
    return None


def usage_generation(text: str, model: str, usage: Any) -> Generation:
    """The Generation of ``text`` with the counts and cost of an OpenAI-style usage object
    (any of them may be missing; ``usage`` None: nothing reported)."""
    if usage is None:
        return Generation(text=text, model=model)
    details = getattr(usage, "prompt_tokens_details", None)
    cost = getattr(usage, "cost", None)
    if cost is None:
        cost = (getattr(usage, "model_extra", None) or {}).get("cost")
    return Generation(
        text=text,
        model=model,
        input_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
        output_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
        cached_tokens=int(getattr(details, "cached_tokens", 0) or 0) if details is not None else 0,
        cost=float(cost) if cost is not None else None,
    )


def message_text(response: Any) -> str:
    """The text of a ``chat.completion`` response's first choice ("" without one)."""
    choice = response.choices[0] if response.choices else None
    return (choice.message.content if choice is not None else None) or ""


def streaming(args: dict[str, Any]) -> dict[str, Any]:
    """Chat-completion request arguments made a stream that ends with a usage chunk."""
    args["stream"] = True
    args.setdefault("stream_options", {"include_usage": True})
    return args


def delta_texts(chunk: Any) -> Iterator[str | None]:
    """The content deltas of one streamed ``chat.completion.chunk``."""
    for choice in getattr(chunk, "choices", None) or []:
        delta = getattr(choice, "delta", None)
        yield getattr(delta, "content", None) if delta is not None else None


def _usage_of(chunk: Any) -> Any:
    return getattr(chunk, "usage", None)


class OpenAIClient(BaseLM):
    """Chat completions through the official ``openai`` SDK (sync and async).

    ``sampling_args`` go into every request, as rlms sends them: ``None`` values
    are dropped, ``extra_body`` is merged, and ``max_tokens`` is sent as
    ``max_completion_tokens`` on api.openai.com (every model) and to reasoning
    models (o1/o3/o4/gpt-5 families) anywhere; other models on other servers
    keep ``max_tokens``, which every OpenAI-compatible server understands.
    """

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
        super().__init__(model_name, timeout, sampling_args, prices, price_provider)
        api_key = required_setting(
            api_key,
            "OpenAI",
            api_key_env,
            # Local OpenAI-compatible servers (any base_url) accept any key.
            default=_default_key(base_url) or (None if base_url is None else "EMPTY"),
        )
        self.base_url = base_url
        self.prompt_cache_key = prompt_cache_key
        # Derive a cache key for root-loop calls only on the official endpoint
        # (other OpenAI-compatible servers may refuse the unknown field).
        self.auto_prompt_cache_key = auto_prompt_cache_key
        # The SDK classes are looked up now, so a patch of rlm.clients.openai.openai
        # active at construction is the one this client uses.
        self._clients = SDKClients(
            "OpenAI",
            "model_name, api_key, base_url, timeout, max_retries, sampling_args, "
            "prompt_cache_key, auto_prompt_cache_key, prices and price_provider",
            (self._sdk_class(asynchronous=False), self._sdk_class(asynchronous=True)),
            client_kwargs,
            api_key=api_key,
            base_url=base_url,
            timeout=timeout,
            max_retries=max_retries,
        )

    @staticmethod
    def _sdk_class(asynchronous: bool) -> Any:
        """The SDK client class; subclasses for other endpoints (Azure) return theirs."""
        return openai.AsyncOpenAI if asynchronous else openai.OpenAI

    def is_official_endpoint(self) -> bool:
        """Whether requests go to api.openai.com (``base_url``, else ``OPENAI_BASE_URL``)."""
        url = self.base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        return (urlparse(url).hostname or "").lower() == OPENAI_API_HOST

    # rlms' attribute names: the SDK clients (``openai.OpenAI``, ``openai.AsyncOpenAI``),
    # created on first use, so constructing an RLM stays cheap.
    client = SDKClientAttribute(asynchronous=False)
    async_client = SDKClientAttribute(asynchronous=True)

    #: ``stop`` per call (not sent to reasoning models, which refuse it).
    accepts_stop = True

    def _sampling(
        self, model: str, stop: list[str] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """(request arguments, extra_body) from ``sampling_args``, as described above."""
        sampling = with_stop(self.sampling_args, None if is_reasoning_model(model) else stop)
        args = {k: v for k, v in sampling.items() if v is not None}
        extra_body = dict(args.pop("extra_body", None) or {})
        if "max_tokens" in args and (self.is_official_endpoint() or is_reasoning_model(model)):
            args.setdefault("max_completion_tokens", args.pop("max_tokens"))
            args.pop("max_tokens", None)
        return args, extra_body

    def _request(
        self, messages: Messages, model: str | None, stop: list[str] | None = None
    ) -> dict[str, Any]:
        model = model or self.model_name
        sampling, extra_body = self._sampling(model, stop)
        args: dict[str, Any] = {"model": model, "messages": messages, **sampling}
        if (self.base_url or "").rstrip("/") == DEFAULT_PRIME_INTELLECT_BASE_URL.rstrip("/"):
            extra_body = {"usage": {"include": True}, **extra_body}
        if extra_body:
            args["extra_body"] = extra_body
        key = self.prompt_cache_key
        auto = self.auto_prompt_cache_key
        if auto is None:
            auto = self.is_official_endpoint()
        if key is None and auto and messages and messages[0].get("role") == "system":
            # A root-loop call on api.openai.com: its system prompt is a stable prefix, so a
            # key derived from it routes repeated turns to the same prompt cache.
            digest = hashlib.sha256(str(messages[0].get("content", "")).encode("utf-8")).hexdigest()
            key = f"rlm-{digest[:24]}"
        if key and "prompt_cache_key" not in args:
            args["prompt_cache_key"] = key
        return args

    def _parse(self, response: Any, model: str) -> Generation:
        return usage_generation(message_text(response), model, response.usage)

    def _generate(
        self, messages: Messages, model: str | None = None, stop: list[str] | None = None
    ) -> Generation:
        args = self._request(messages, model, stop)
        response = self._clients.get_sync().chat.completions.create(**args)
        return self._parse(response, args["model"])

    async def _agenerate(self, messages: Messages, model: str | None = None) -> Generation:
        args = self._request(messages, model)
        response = await self._clients.get_async().chat.completions.create(**args)
        return self._parse(response, args["model"])

    def _stream(
        self, messages: Messages, model: str | None, on_token: Any, stop: list[str] | None = None
    ) -> Generation:
        """``_generate`` as server-sent events: each content delta goes to ``on_token``;
        the usage comes from the final chunk (``stream_options.include_usage``)."""
        args = streaming(self._request(messages, model, stop))
        try:
            chunks = self._clients.get_sync().chat.completions.create(**args)
        except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
            if refusal_overflow(exc)[0]:
                raise  # the prompt, not the stream: it would be refused again
            # A server that refuses to stream (or its stream_options) answers in one piece.
            return self._generate(messages, model, stop)
        text, usage = relay_stream(chunks, on_token, delta_texts, _usage_of)
        return usage_generation(text, args["model"], usage)

    def close(self) -> None:
        self._clients.close()
