"""Google Gemini through the ``google-genai`` SDK (``generateContent``).

System messages become ``system_instruction``; assistant turns are sent with
the role ``model``. ``sampling_args`` use OpenAI's names where they differ
(``max_tokens`` -> ``max_output_tokens``, ``stop`` -> ``stop_sequences``) and
otherwise any field of ``GenerateContentConfig``. Retries are the SDK's
(``HttpRetryOptions``: exponential backoff with jitter on 408, 429 and 5xx),
``max_retries`` of them; the SDK does not read ``Retry-After``. Gemini caches
repeated prefixes implicitly; cached tokens are reported from
``usage_metadata.cached_content_token_count``.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from rlm.clients.base_lm import (
    DEFAULT_TIMEOUT,
    BaseLM,
    Generation,
    Messages,
    content_text,
    relay_stream,
    require_model_name,
    required_setting,
)
from rlm.utils.exceptions import ConfigurationError

#: The key from the environment at import, named as in rlms (the environment is read again
#: when a client is built).
DEFAULT_GEMINI_API_KEY = os.getenv("GEMINI_API_KEY")
#: The model rlms' GeminiClient uses when no model_name is given.
DEFAULT_GEMINI_MODEL = "gemini-2.5-flash"

_RENAMED = {"max_tokens": "max_output_tokens", "stop": "stop_sequences"}


def to_gemini(messages: Messages) -> tuple[str | None, list[types.Content]]:
    """(system instruction, contents) for ``generate_content``."""
    system: list[str] = []
    contents: list[types.Content] = []
    for message in messages:
        role = message.get("role")
        text = content_text(message.get("content", ""))
        if role in ("system", "developer"):
            system.append(text)
        else:
            contents.append(
                types.Content(
                    role="model" if role == "assistant" else "user",
                    parts=[types.Part(text=text)],
                )
            )
    if not contents:
        contents.append(types.Content(role="user", parts=[types.Part(text="Continue.")]))
    return ("\n\n".join(system) if system else None), contents


class GeminiClient(BaseLM):
    """Gemini models through ``google.genai.Client`` (sync and ``client.aio``)."""

    def __init__(
        self,
        api_key: str | None = None,
        model_name: str | None = DEFAULT_GEMINI_MODEL,
        base_url: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        max_retries: int = 4,
        retry_initial_delay: float = 1.0,
        retry_max_delay: float = 60.0,
        sampling_args: dict[str, Any] | None = None,
        prices: dict[str, Any] | None = None,
        price_provider: str | None = "google",
    ):
        model_name = require_model_name("GeminiClient", model_name, "gemini-2.5-flash")
        sampling = {_RENAMED.get(k, k): v for k, v in (sampling_args or {}).items()}
        unknown = sorted(set(sampling) - set(types.GenerateContentConfig.model_fields))
        if unknown:
            raise ConfigurationError(
                f"Unknown sampling_args for Gemini: {unknown}. Accepted: max_tokens, stop and the "
                f"fields of GenerateContentConfig: {sorted(types.GenerateContentConfig.model_fields)}"
            )
        super().__init__(model_name, timeout, sampling, prices, price_provider)
        api_key = required_setting(
            api_key, "Gemini", "GEMINI_API_KEY", "GOOGLE_API_KEY", default=DEFAULT_GEMINI_API_KEY
        )
        self.base_url = base_url
        http_options = types.HttpOptions(
            base_url=base_url,
            timeout=None if timeout is None else int(timeout * 1000),  # milliseconds
            retry_options=types.HttpRetryOptions(
                attempts=max_retries + 1,
                initial_delay=retry_initial_delay,
                max_delay=retry_max_delay,
            ),
        )
        self.client = genai.Client(api_key=api_key, http_options=http_options)

    def _config(self, system: str | None) -> types.GenerateContentConfig:
        return types.GenerateContentConfig(system_instruction=system, **self.sampling_args)

    @staticmethod
    def _parse(response: Any, model: str) -> Generation:
        return GeminiClient._generation(response.text or "", response.usage_metadata, model)

    @staticmethod
    def _generation(text: str, usage: Any, model: str) -> Generation:
        """The Generation of ``text`` with the counts of one ``usage_metadata``."""
        output = 0
        if usage is not None:
            output = (usage.candidates_token_count or 0) + (usage.thoughts_token_count or 0)
        return Generation(
            text=text,
            model=model,
            input_tokens=(usage.prompt_token_count or 0) if usage is not None else 0,
            output_tokens=output,
            cached_tokens=(usage.cached_content_token_count or 0) if usage is not None else 0,
        )

    def _generate(self, messages: Messages, model: str | None = None) -> Generation:
        model = model or self.model_name
        system, contents = to_gemini(messages)
        response = self.client.models.generate_content(
            model=model, contents=contents, config=self._config(system)
        )
        return self._parse(response, model)

    async def _agenerate(self, messages: Messages, model: str | None = None) -> Generation:
        model = model or self.model_name
        system, contents = to_gemini(messages)
        response = await self.client.aio.models.generate_content(
            model=model, contents=contents, config=self._config(system)
        )
        return self._parse(response, model)

    def _stream(self, messages: Messages, model: str | None, on_token: Any) -> Generation:
        """``_generate`` as server-sent events (``generate_content_stream``, the
        ``streamGenerateContent?alt=sse`` endpoint): each chunk's text goes to ``on_token``;
        the usage is the last chunk's ``usage_metadata`` (the whole call's counts)."""
        model = model or self.model_name
        system, contents = to_gemini(messages)
        chunks = self.client.models.generate_content_stream(
            model=model, contents=contents, config=self._config(system)
        )
        try:
            first = next(chunks, None)  # the request is sent on the first read
        except genai_errors.ClientError as exc:
            if exc.code not in (400, 404, 405, 422):
                raise
            # A server that refuses to stream (or has no streaming endpoint: 404, 405)
            # answers in one piece.
            return self._generate(messages, model)
        text, usage = relay_stream(
            itertools.chain([first] if first is not None else [], chunks),
            on_token,
            lambda chunk: [chunk.text],
            lambda chunk: chunk.usage_metadata,
            closing=chunks,  # a generator: closing it ends the response
        )
        return self._generation(text, usage, model)

    def close(self) -> None:
        self.client.close()
