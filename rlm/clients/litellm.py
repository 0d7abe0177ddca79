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

from rlm.clients.base_lm import DEFAULT_TIMEOUT, BaseLM, Generation, Messages  # noqa: E402
from rlm.clients.openai import _usage_numbers  # noqa: E402
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
    input_tokens, output_tokens, cached, _ = _usage_numbers(getattr(reported, "usage", None))
    return Generation(
        text=text,
        model=model,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cached_tokens=cached,
        cost=_provider_cost(reported) if reported is not None else None,
    )


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
        if not model_name:
            raise ConfigurationError(
                "LiteLLMClient needs model_name, LiteLLM's provider/model string "
                "(e.g. backend_kwargs={'model_name': 'anthropic/claude-sonnet-4-5'})"
            )
        provider, _, bare = model_name.partition("/")
        super().__init__(
            model_name=model_name,
            timeout=timeout,
            sampling_args=sampling_args,
            prices=prices,
            # Table fallback: the provider prefix of the model name ("anthropic/...").
            price_provider=price_provider or (provider if bare else None),
        )
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
        choice = response.choices[0] if response.choices else None
        text = (choice.message.content if choice is not None else None) or ""
        return _generation(text, model, response)

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
        args = self._request(messages, model)
        args["stream"] = True
        args.setdefault("stream_options", {"include_usage": True})
        try:
            chunks = litellm.completion(**args)
        except (litellm.BadRequestError, litellm.UnprocessableEntityError):
            # A server (or a LiteLLM provider) that refuses to stream answers in one piece.
            return self._generate(messages, model)
        pieces: list[str] = []
        last = None  # the chunk with the usage
        try:
            for chunk in chunks:
                if getattr(chunk, "usage", None) is not None:
                    last = chunk
                for choice in getattr(chunk, "choices", None) or []:
                    delta = getattr(choice, "delta", None)
                    text = getattr(delta, "content", None) if delta is not None else None
                    if text:
                        pieces.append(text)
                        on_token(text)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()  # the response, also when on_token raised (a cancelled run)
        received = getattr(chunks, "chunks", None)  # what the provider sent, as LiteLLM kept it
        if received is not None and not any(getattr(c, "usage", None) for c in received):
            last = None  # a usage chunk, if any, is LiteLLM's estimate, not the provider's count
        return _generation("".join(pieces), args["model"], last)

    def knows_price(self) -> bool:
        """LiteLLM prices the models in its bundled map itself; else the shared price book."""
        if super().knows_price():
            return True
        import litellm

        name = self.model_name
        return name in litellm.model_cost or name.split("/", 1)[-1] in litellm.model_cost
