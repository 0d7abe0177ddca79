"""Anthropic's Messages API through the official ``anthropic`` SDK.

System messages become the ``system`` parameter; the other turns keep their
order (any role other than ``assistant`` is sent as ``user``). For prompt
caching, a conversation that starts with a system message (the RLM loop's
root calls) gets ``cache_control`` breakpoints on its stable prefix: the end
of the system prompt and the newest message, so the next turn reads
everything before it from the cache. Single-shot sub-calls get none: a cache
write costs more than a plain input token. Retries (429 with ``Retry-After``,
5xx, connection errors, timeouts) are the SDK's own, set by ``max_retries``.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any

import anthropic

from rlm.clients.base_lm import (
    DEFAULT_TIMEOUT,
    BaseLM,
    Generation,
    Messages,
    SDKClientAttribute,
    SDKClients,
    content_text,
    refusal_overflow,
    require_model_name,
    required_setting,
    setting_from,
)

#: Anthropic requires max_tokens; used when neither max_tokens nor sampling_args sets it
#: (rlms' default).
DEFAULT_MAX_TOKENS = 32768
_CACHE = {"type": "ephemeral"}
_CREATE_PARAMS = frozenset(inspect.signature(anthropic.resources.Messages.create).parameters)


def _blocks(content: Any) -> list[dict[str, Any]]:
    """Message content as a list of content blocks (so a cache marker can be attached)."""
    if isinstance(content, list) and all(isinstance(p, dict) and "type" in p for p in content):
        return [dict(p) for p in content]
    return [{"type": "text", "text": content_text(content)}]


def to_anthropic(messages: Messages, cache: bool) -> tuple[list[dict[str, Any]], list[dict]]:
    """(system blocks, messages) in the Messages API's shape, with cache markers when asked."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        content = message.get("content", "")
        if role in ("system", "developer"):
            system.append({"type": "text", "text": content_text(content)})
        else:
            turns.append(
                {"role": "assistant" if role == "assistant" else "user", "content": content}
            )
    if not turns:  # the API needs at least one message
        turns.append({"role": "user", "content": "Continue."})
    if cache and system:
        system[-1]["cache_control"] = _CACHE
        last = turns[-1]
        blocks = _blocks(last["content"])
        blocks[-1]["cache_control"] = _CACHE
        turns[-1] = {"role": last["role"], "content": blocks}
    return system, turns


class AnthropicClient(BaseLM):
    """Claude models through ``anthropic.Anthropic`` / ``anthropic.AsyncAnthropic``."""

    def __init__(
        self,
        api_key: str | None = None,
        model_name: str | None = None,
        base_url: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        max_retries: int = 4,
        sampling_args: dict[str, Any] | None = None,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        prompt_caching: bool = True,
        prices: dict[str, Any] | None = None,
        price_provider: str | None = "anthropic",
        **client_kwargs: Any,
    ):
        model_name = require_model_name("AnthropicClient", model_name, "claude-sonnet-4-5")
        super().__init__(model_name, timeout, sampling_args, prices, price_provider)
        api_key = required_setting(api_key, "Anthropic", "ANTHROPIC_API_KEY")
        self.base_url = setting_from(base_url, "ANTHROPIC_BASE_URL")
        self.max_tokens = max_tokens
        self.prompt_caching = prompt_caching
        # The SDK classes are looked up now, so a patch of rlm.clients.anthropic.anthropic
        # active at construction is the one this client uses.
        self._clients = SDKClients(
            "Anthropic",
            "model_name, api_key, base_url, timeout, max_retries, sampling_args, max_tokens, "
            "prompt_caching and prices",
            (anthropic.Anthropic, anthropic.AsyncAnthropic),
            client_kwargs,
            api_key=api_key,
            base_url=self.base_url,
            timeout=timeout,
            max_retries=max_retries,
        )

    # rlms' attribute names: the SDK clients (``anthropic.Anthropic``,
    # ``anthropic.AsyncAnthropic``), built on first use here.
    client = SDKClientAttribute(asynchronous=False)
    async_client = SDKClientAttribute(asynchronous=True)

    def _request(self, messages: Messages, model: str | None) -> dict[str, Any]:
        system, turns = to_anthropic(messages, cache=self.prompt_caching)
        args: dict[str, Any] = {
            "model": model or self.model_name,
            "messages": turns,
            "max_tokens": self.max_tokens,
        }
        if system:
            args["system"] = system
        # Sampling options the installed SDK's create() does not name (recent SDKs dropped
        # temperature and top_p from its signature) still reach the API, in the body.
        extra = {k: v for k, v in self.sampling_args.items() if k not in _CREATE_PARAMS}
        args.update({k: v for k, v in self.sampling_args.items() if k in _CREATE_PARAMS})
        if extra:
            args["extra_body"] = {**args.get("extra_body", {}), **extra}
        return args

    @staticmethod
    def _parse(response: Any, model: str) -> Generation:
        text = "".join(
            getattr(block, "text", "") for block in response.content if block.type == "text"
        )
        usage = response.usage
        read = int(getattr(usage, "cache_read_input_tokens", 0) or 0)
        written = int(getattr(usage, "cache_creation_input_tokens", 0) or 0)
        return Generation(
            text=text,
            model=model,
            # Anthropic's input_tokens excludes cache reads and writes; ours counts every one.
            input_tokens=int(usage.input_tokens or 0) + read + written,
            output_tokens=int(usage.output_tokens or 0),
            cached_tokens=read,
            cache_write_tokens=written,
        )

    def _generate(self, messages: Messages, model: str | None = None) -> Generation:
        args = self._request(messages, model)
        return self._parse(self._clients.get_sync().messages.create(**args), args["model"])

    async def _agenerate(self, messages: Messages, model: str | None = None) -> Generation:
        args = self._request(messages, model)
        return self._parse(await self._clients.get_async().messages.create(**args), args["model"])

    def _stream(self, messages: Messages, model: str | None, on_token: Any) -> Generation:
        """``_generate`` as server-sent events (``messages.stream``): each text delta goes
        to ``on_token``; the usage is the final message's (``message_start``'s input and
        cache counts, ``message_delta``'s output count), parsed as ``_generate`` parses."""
        args = self._request(messages, model)
        with contextlib.ExitStack() as stack:
            try:
                stream = stack.enter_context(self._clients.get_sync().messages.stream(**args))
            except (anthropic.BadRequestError, anthropic.UnprocessableEntityError) as exc:
                if refusal_overflow(exc)[0]:
                    raise  # the prompt, not the stream: it would be refused again
                # A server that refuses to stream answers in one piece.
                return self._generate(messages, model)
            for text in stream.text_stream:
                if text:
                    on_token(text)
            final = stream.get_final_message()
        return self._parse(final, args["model"])

    def close(self) -> None:
        self._clients.close()
