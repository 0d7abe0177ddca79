"""Portkey's AI gateway, through the ``openai`` SDK with Portkey's headers.

The headers (``x-portkey-api-key``, ``x-portkey-virtual-key``,
``x-portkey-provider``, ``x-portkey-config``...) are built by the
``portkey-ai`` package's own ``createHeaders``; requests, usage parsing and
retries are the OpenAI client's. (Portkey's own client fixes its inner
OpenAI client at ``max_retries=1`` with no backoff, so it is not used for the
calls: retries must follow ``max_retries``, with backoff, jitter and
``Retry-After``.) Gateway-side retries and fallbacks can still be set in a
Portkey ``config``.

``Portkey`` and ``AsyncPortkey`` are module attributes, as in rlms: when a test
replaces ``rlm.clients.portkey.Portkey`` (``unittest.mock.patch``), clients
constructed under the patch are built by the replacement, with the arguments
rlms passed (``api_key``, ``base_url``, ``timeout``), and the calls go to it.
"""

from __future__ import annotations

from typing import Any

import portkey_ai
from portkey_ai import PORTKEY_GATEWAY_URL, AsyncPortkey, Portkey, createHeaders

from rlm.clients.base_lm import DEFAULT_TIMEOUT, required_setting, setting_from
from rlm.clients.openai import OpenAIClient
from rlm.clients.pricing import ANY_PROVIDER


class PortkeyClient(OpenAIClient):
    """Chat completions through the Portkey gateway."""

    def __init__(
        self,
        api_key: str | None = None,
        model_name: str | None = None,
        base_url: str | None = None,
        virtual_key: str | None = None,
        provider: str | None = None,
        config: str | dict[str, Any] | None = None,
        provider_api_key: str | None = None,
        trace_id: str | None = None,
        metadata: dict[str, str] | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        max_retries: int = 4,
        sampling_args: dict[str, Any] | None = None,
        prompt_cache_key: str | None = None,
        prices: dict[str, Any] | None = None,
        price_provider: str | None = None,
        **client_kwargs: Any,
    ):
        api_key = required_setting(api_key, "Portkey", "PORTKEY_API_KEY")
        options = {
            "virtual_key": virtual_key,
            "provider": provider,
            "config": config,
            "trace_id": trace_id,
            "metadata": metadata,
        }
        headers = createHeaders(api_key=api_key, **{k: v for k, v in options.items() if v})
        headers.update(client_kwargs.pop("default_headers", None) or {})
        super().__init__(
            # The provider's own key, when the gateway should forward one (no virtual key).
            api_key=provider_api_key or "portkey",
            model_name=model_name,
            base_url=setting_from(base_url, "PORTKEY_BASE_URL", default=PORTKEY_GATEWAY_URL),
            timeout=timeout,
            max_retries=max_retries,
            sampling_args=sampling_args,
            prompt_cache_key=prompt_cache_key,
            prices=prices,
            # The gateway routes to any provider: search the whole table by model name.
            price_provider=price_provider or provider or ANY_PROVIDER,
            default_headers=headers,
            **client_kwargs,
        )
        if Portkey is not portkey_ai.Portkey or AsyncPortkey is not portkey_ai.AsyncPortkey:
            # A replaced SDK (a test's patch): build the clients the way rlms did.
            gateway = self._clients.args["base_url"]
            sync_cls, async_cls = Portkey, AsyncPortkey
            self._clients.factories = (
                lambda **_: sync_cls(api_key=api_key, base_url=gateway, timeout=timeout),
                lambda **_: async_cls(api_key=api_key, base_url=gateway, timeout=timeout),
            )
