"""Azure OpenAI: the ``openai`` SDK's ``AzureOpenAI`` client.

``model_name`` is the *deployment* name: requests go to
``{azure_endpoint}/openai/deployments/{model_name}/chat/completions?api-version=...``
with the key in the ``api-key`` header. Everything else (messages, usage,
cached tokens, retries with ``Retry-After``) is the OpenAI client's.
"""

from __future__ import annotations

import os
from typing import Any

import openai  # module-level, as in rlms: rlm.clients.azure_openai.openai can be patched

from rlm.clients.base_lm import DEFAULT_TIMEOUT, missing_setting, required_setting, setting_from
from rlm.clients.openai import OpenAIClient

#: The key from the environment at import, named as in rlms (the environment is read again
#: when a client is built).
DEFAULT_AZURE_OPENAI_API_KEY = os.getenv("AZURE_OPENAI_API_KEY")


class AzureOpenAIClient(OpenAIClient):
    """Chat completions on an Azure OpenAI deployment."""

    def __init__(
        self,
        api_key: str | None = None,
        model_name: str | None = None,
        azure_endpoint: str | None = None,
        api_version: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        max_retries: int = 4,
        sampling_args: dict[str, Any] | None = None,
        prompt_cache_key: str | None = None,
        prices: dict[str, Any] | None = None,
        price_provider: str | None = "azure",
        **client_kwargs: Any,
    ):
        azure_endpoint = required_setting(
            azure_endpoint,
            "Azure OpenAI",
            "AZURE_OPENAI_ENDPOINT",
            what="endpoint",
            option="azure_endpoint",
            example="'https://NAME.openai.azure.com'",
        )
        api_version = required_setting(
            api_version,
            "Azure OpenAI",
            "OPENAI_API_VERSION",
            what="API version",
            option="api_version",
            example="'2024-10-21'",
        )
        token_auth = "azure_ad_token" in client_kwargs or "azure_ad_token_provider" in client_kwargs
        api_key = setting_from(
            api_key, "AZURE_OPENAI_API_KEY", default=DEFAULT_AZURE_OPENAI_API_KEY
        )
        if not api_key and not token_auth:
            raise missing_setting(
                "Azure OpenAI", "AZURE_OPENAI_API_KEY", alternative=" (or azure_ad_token_provider)"
            )
        super().__init__(
            api_key=api_key or "azure-ad",
            model_name=model_name,
            timeout=timeout,
            max_retries=max_retries,
            sampling_args=sampling_args,
            api_key_env="AZURE_OPENAI_API_KEY",
            prompt_cache_key=prompt_cache_key,
            prices=prices,
            price_provider=price_provider,
            **client_kwargs,
        )
        sdk_args = self._clients.args
        if token_auth and not api_key:
            sdk_args.pop("api_key")
        sdk_args.pop("base_url")
        sdk_args["azure_endpoint"] = azure_endpoint
        sdk_args["api_version"] = api_version
        self.base_url = azure_endpoint

    @staticmethod
    def _sdk_class(asynchronous: bool) -> Any:
        return openai.AsyncAzureOpenAI if asynchronous else openai.AzureOpenAI

    def is_official_endpoint(self) -> bool:
        return False  # an Azure resource, not api.openai.com
