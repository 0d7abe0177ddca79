"""What a model call cost, in USD: one price book shared by every client.

Order of precedence for one call (see ``BaseLM.generate``):

1. a cost the provider reported itself (OpenRouter's ``usage.cost``, LiteLLM's
   response cost) is kept as is;
2. a user override, ``backend_kwargs={"prices": {"model": {"input": 2.5,
   "output": 10.0, "cached_input": 1.25, "cache_write": 3.125}}}``, in USD per
   million tokens (``cached_input`` and ``cache_write`` default to ``input``);
3. the price table bundled with the ``genai-prices`` package (maintained by
   Pydantic; data shipped inside the wheel, nothing fetched at run time),
   looked up for the client's provider (``anthropic``, ``openai``, ``google``...);
4. otherwise the cost is unknown: ``None``, never zero.

``genai-prices`` is an optional dependency (the ``prices`` extra, included in
every provider extra); without it only overrides and provider-reported costs
are known.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rlm.utils.exceptions import ConfigurationError

if TYPE_CHECKING:
    from rlm.clients.base_lm import Generation

#: ``price_provider`` value that searches the table across every provider.
ANY_PROVIDER = "any"

_PRICE_KEYS = ("input", "output", "cached_input", "cache_write")


@dataclass(frozen=True)
class Price:
    """USD per million tokens."""

    input: float
    output: float
    cached_input: float | None = None
    cache_write: float | None = None

    def cost(self, generation: Generation) -> float:
        """``input_tokens`` counts every prompt token, cached and cache-written ones included."""
        cached = generation.cached_tokens
        written = generation.cache_write_tokens
        plain = max(0, generation.input_tokens - cached - written)
        cached_price = self.input if self.cached_input is None else self.cached_input
        write_price = self.input if self.cache_write is None else self.cache_write
        return (
            plain * self.input
            + cached * cached_price
            + written * write_price
            + generation.output_tokens * self.output
        ) / 1_000_000


def parse_prices(prices: dict[str, Any] | None) -> dict[str, Price]:
    """Check a user's ``prices`` mapping; a typo fails at construction, not at the bill."""
    if prices is None:
        return {}
    if not isinstance(prices, dict):
        raise ConfigurationError(
            f"prices must be a dict of model name -> {{'input': ..., 'output': ...}}, got {prices!r}"
        )
    parsed: dict[str, Price] = {}
    for model, entry in prices.items():
        if isinstance(entry, Price):
            parsed[model] = entry
            continue
        if not isinstance(entry, dict) or "input" not in entry or "output" not in entry:
            raise ConfigurationError(
                f"prices[{model!r}] needs 'input' and 'output' (USD per million tokens), "
                f"got {entry!r}"
            )
        unknown = sorted(set(entry) - set(_PRICE_KEYS))
        if unknown:
            raise ConfigurationError(
                f"prices[{model!r}] has unknown keys {unknown}; accepted: {list(_PRICE_KEYS)}"
            )
        values = {}
        for key, value in entry.items():
            if value is not None and (not isinstance(value, (int, float)) or value < 0):
                raise ConfigurationError(
                    f"prices[{model!r}][{key!r}] must be a number >= 0, got {value!r}"
                )
            values[key] = None if value is None else float(value)
        parsed[model] = Price(**values)
    return parsed


class PriceBook:
    """Prices the calls of one client: user overrides, then the bundled table."""

    def __init__(self, overrides: dict[str, Any] | None = None, provider: str | None = None):
        self.overrides = parse_prices(overrides)
        self.provider = provider  # None: no table lookup (local servers, unknown gateways)
        self._unknown: set[str] = set()
        self._lock = threading.Lock()

    def knows(self, model: str) -> bool:
        """Whether a call to ``model`` can be priced (an override, or a table entry)."""
        if model in self.overrides:
            return True
        return self._table_cost(model, 1, 1, 0, 0) is not None

    def cost(self, generation: Generation) -> float | None:
        price = self.overrides.get(generation.model)
        if price is not None:
            return price.cost(generation)
        return self._table_cost(
            generation.model,
            generation.input_tokens,
            generation.output_tokens,
            generation.cached_tokens,
            generation.cache_write_tokens,
        )

    def _table_cost(
        self, model: str, input_tokens: int, output_tokens: int, cached: int, written: int
    ) -> float | None:
        if self.provider is None or model in self._unknown:
            return None
        try:
            from genai_prices import Usage, calc_price
        except ImportError:
            return None
        usage = Usage(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cache_read_tokens=cached or None,
            cache_write_tokens=written or None,
        )
        provider = None if self.provider == ANY_PROVIDER else self.provider
        try:
            return float(calc_price(usage, model_ref=model, provider_id=provider).total_price)
        except LookupError:
            with self._lock:
                self._unknown.add(model)  # not in the table: do not search again
            return None
