"""Any provider LiteLLM speaks, through ``litellm.completion`` / ``acompletion``.

``model_name`` is LiteLLM's ``provider/model`` string (``anthropic/claude-...``,
``openai/gpt-4o-mini``, ``openai/<name>`` with ``api_base`` for any
OpenAI-compatible server). The cost is LiteLLM's own (its bundled price map);
the shared price book (overrides, then ``genai-prices``) fills in when LiteLLM
has no price. Retries are passed to the provider SDK LiteLLM drives
(``max_retries``; the OpenAI and Anthropic SDKs back off with jitter and
honour ``Retry-After``).

LiteLLM fetches its price map from the network when imported unless
``LITELLM_LOCAL_MODEL_COST_MAP`` is set; this module sets it (when unset) so
prices come from the copy in the installed package and imports work offline.
"""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm  # noqa: E402

from rlm.clients.base_lm import (  # noqa: E402
    DEFAULT_TIMEOUT,
    BaseLM,
    Generation,
    Messages,
    refusal_overflow,
    relay_stream,
    require_model_name,
)
from rlm.clients.openai import delta_texts, message_text, streaming, usage_generation  # noqa: E402
from rlm.utils.exceptions import ConfigurationError  # noqa: E402


def _provider_cost(response: Any) -> float | None:
    """LiteLLM's cost of one response, or None when it has no price for the model."""
    hidden = getattr(response, "_hidden_params", None) or {}
    cost = hidden.get("response_cost")
    if cost is None:
        return None
    cost = float(cost)
    # LiteLLM answers 0.0 for models it cannot price; a real call is never free.
    return cost if cost > 0 else None


def _generation(text: str, model: str, reported: Any) -> Generation:
    """``text`` with the usage and LiteLLM's cost of ``reported`` (a response, or a
    stream's usage chunk; None: nothing reported)."""
    generation = usage_generation(text, model, getattr(reported, "usage", None))
    generation.cost = _provider_cost(reported) if reported is not None else None
    return generation


def _usage_chunk(chunk: Any) -> Any:
    """``chunk`` when it carries the usage (and LiteLLM's cost), else None."""
    return chunk if getattr(chunk, "usage", None) is not None else None


class LiteLLMClient(BaseLM):
    """Chat completions through LiteLLM."""

    def __init__(
        self,
        model_name: str | None = None,
        api_key: str | None = None,
        api_base: str | None = None,
        base_url: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        max_retries: int = 4,
        sampling_args: dict[str, Any] | None = None,
        prices: dict[str, Any] | None = None,
        price_provider: str | None = None,
        **completion_kwargs: Any,
    ):
        model_name = require_model_name(
            "LiteLLMClient",
            model_name,
            "anthropic/claude-sonnet-4-5",
            meaning=", LiteLLM's provider/model string",
        )
        # Table fallback: the provider prefix of the model name ("anthropic/...").
        provider, _, bare = model_name.partition("/")
        price_provider = price_provider or (provider if bare else None)
        super().__init__(model_name, timeout, sampling_args, prices, price_provider)
        api_base = api_base or base_url
        keys_set = bool(litellm.validate_environment(model_name).get("keys_in_environment", True))
        if not api_key and not api_base and not keys_set:
            missing = litellm.validate_environment(model_name).get("missing_keys") or []
            raise ConfigurationError(
                f"No API key for LiteLLM model {model_name!r}: pass backend_kwargs="
                f"{{'api_key': ...}} or set the {' or '.join(missing) or 'provider key'} "
                f"environment variable"
            )
        self.api_base = api_base
        self._args: dict[str, Any] = {
            # A self-hosted server behind api_base usually takes any key.
            "api_key": api_key or ("EMPTY" if api_base and not keys_set else None),
            "api_base": api_base,
            "timeout": timeout,
            "max_retries": max_retries,
            **completion_kwargs,
        }
        self._args = {k: v for k, v in self._args.items() if v is not None}

    def _request(self, messages: Messages, model: str | None) -> dict[str, Any]:
        return {
            "model": model or self.model_name,
            "messages": messages,
            **self._args,
            **self.sampling_args,
        }

    def _parse(self, response: Any, model: str) -> Generation:
        return _generation(message_text(response), model, response)

    def _generate(self, messages: Messages, model: str | None = None) -> Generation:
        args = self._request(messages, model)
        return self._parse(litellm.completion(**args), args["model"])

    async def _agenerate(self, messages: Messages, model: str | None = None) -> Generation:
        args = self._request(messages, model)
        return self._parse(await litellm.acompletion(**args), args["model"])

    def _stream(self, messages: Messages, model: str | None, on_token: Any) -> Generation:
        """``_generate`` with ``stream=True``: each content delta goes to ``on_token``.

        ``stream_options.include_usage`` makes LiteLLM end the stream with a usage chunk
        (sent on to OpenAI-style servers; other providers' usage events, such as
        Anthropic's, are read by LiteLLM itself) that carries LiteLLM's cost, as the
        non-streamed response does. When the provider sent no usage, LiteLLM fills that
        chunk with its own token estimate; that is not reported (the usage stays 0, the
        cost unknown), as the OpenAI client does for a stream without usage."""
        args = streaming(self._request(messages, model))
        try:
            chunks = litellm.completion(**args)
        except (litellm.BadRequestError, litellm.UnprocessableEntityError) as exc:
            if refusal_overflow(exc)[0]:
                raise  # the prompt, not the stream: it would be refused again
            # A server (or a LiteLLM provider) that refuses to stream answers in one piece.
            return self._generate(messages, model)
        text, last = relay_stream(chunks, on_token, delta_texts, _usage_chunk)
        received = getattr(chunks, "chunks", None)  # what the provider sent, as LiteLLM kept it
        if received is not None and not any(getattr(c, "usage", None) for c in received):
            last = None  # a usage chunk, if any, is LiteLLM's estimate, not the provider's count
        return _generation(text, args["model"], last)

    def knows_price(self) -> bool:
        """LiteLLM prices the models in its bundled map itself; else the shared price book."""
        if super().knows_price():
            return True
        import litellm

        name = self.model_name
        return name in litellm.model_cost or name.split("/", 1)[-1] in litellm.model_cost
