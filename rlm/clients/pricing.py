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

A ``prices`` entry may also be the string ``"unpriced"``: the user's explicit
statement that the model has no price, so its calls are not counted toward
``max_budget``. The key ``"*"`` applies to every model of that client.
:func:`check_budget_prices` is what ``RLM`` runs at construction when
``max_budget`` is set: a configured model whose price is unknown, and that was
not opted out, is refused with a ``ConfigurationError``.

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
#: A ``prices`` value that opts a model out of ``max_budget`` accounting, explicitly.
UNPRICED = "unpriced"
#: A ``prices`` key that stands for every model of the client.
ANY_MODEL = "*"


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


def parse_prices(prices: dict[str, Any] | None) -> dict[str, Price | str]:
    """Check a user's ``prices`` mapping; a typo fails at construction, not at the bill."""
    if prices is None:
        return {}
    if not isinstance(prices, dict):
        raise ConfigurationError(
            f"prices must be a dict of model name -> {{'input': ..., 'output': ...}}, got {prices!r}"
        )
    parsed: dict[str, Price | str] = {}
    for model, entry in prices.items():
        if isinstance(entry, Price) or entry == UNPRICED:
            parsed[model] = entry
            continue
        if not isinstance(entry, dict) or "input" not in entry or "output" not in entry:
            raise ConfigurationError(
                f"prices[{model!r}] needs 'input' and 'output' (USD per million tokens), "
                f"or {UNPRICED!r} to leave the model out of max_budget; got {entry!r}"
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

    def _override(self, model: str) -> Price | str | None:
        found = self.overrides.get(model)
        return self.overrides.get(ANY_MODEL) if found is None else found

    def knows(self, model: str) -> bool:
        """Whether a call to ``model`` can be priced (an override, or a table entry), or
        the user opted it out of budget accounting (``"unpriced"``)."""
        if self._override(model) is not None:
            return True
        return self._table_cost(model, 1, 1, 0, 0) is not None

    def opted_out(self, model: str) -> bool:
        """Whether the user said ``model`` has no price (``prices={model: "unpriced"}``)."""
        return self._override(model) == UNPRICED

    def cost(self, generation: Generation) -> float | None:
        """The cost in USD of one call, or None when its model has no known price."""
        price = self._override(generation.model)
        if price == UNPRICED:
            return None
        if isinstance(price, Price):
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


# ---------------------------------------------------------------------------
# Refusing unpriced models under a budget
# ---------------------------------------------------------------------------

#: Backends that cost nothing per call.
_FREE_BACKENDS = {"scripted", "mock", "llama_cpp"}
#: backend -> where its default price lookup searches the bundled table (None: nowhere).
_BACKEND_PRICE_PROVIDERS: dict[str, str | None] = {
    "openai": "openai",
    "vllm": None,
    "openrouter": "openrouter",
    "vercel": ANY_PROVIDER,
    "azure_openai": "azure",
    "anthropic": "anthropic",
    "gemini": "google",
}


def _spec_knows_price(backend: str, kwargs: dict[str, Any]) -> bool | None:
    """Whether a not-yet-built client of ``backend`` can price ``model_name``: True,
    False, or None when rlm cannot tell (a backend registered by the user)."""
    backend = str(backend)
    if backend in _FREE_BACKENDS:
        return True
    model = kwargs.get("model_name")
    book = PriceBook(kwargs.get("prices"), None)  # a typo in prices fails here, early
    if isinstance(model, str) and book.knows(model):
        return True
    if ANY_MODEL in book.overrides:
        return True
    if not isinstance(model, str) or not model:
        return False
    provider = kwargs.get("price_provider")
    if provider is None:
        if backend == "portkey":
            provider = kwargs.get("provider") or ANY_PROVIDER
        elif backend == "litellm":
            prefix, _, bare = model.partition("/")
            provider = prefix if bare else None
            try:
                import litellm  # its bundled map prices the models it knows

                if model in litellm.model_cost or (bare and bare in litellm.model_cost):
                    return True
            except ImportError:
                pass
        elif backend in _BACKEND_PRICE_PROVIDERS:
            provider = _BACKEND_PRICE_PROVIDERS[backend]
        else:
            return None
    return PriceBook(None, provider).knows(model)


def unpriced_models(configs: list[Any]) -> list[str]:
    """The configured models whose calls ``max_budget`` could not count.

    ``configs`` holds built clients (their ``knows_price()`` decides; a client
    without it, such as a 0.1.x-style one that reports its own cost, passes) or
    ``(backend, backend_kwargs)`` pairs for clients not built yet.
    """
    missing: list[str] = []
    for config in configs:
        if isinstance(config, tuple) and len(config) == 2:
            backend, kwargs = config
            kwargs = dict(kwargs or {})
            known = _spec_knows_price(backend, kwargs)
            name = str(kwargs.get("model_name") or f"<{backend} default model>")
        else:
            knows = getattr(config, "knows_price", None)
            known = knows() if callable(knows) else None
            name = str(getattr(config, "model_name", None) or type(config).__name__)
        if known is False and name not in missing:
            missing.append(name)
    return missing


def check_budget_prices(configs: list[Any], allow_unpriced: bool = False) -> None:
    """Refuse (``ConfigurationError``) a ``max_budget`` run with a model whose price is unknown.

    Call it at construction with every configured client -- the root backend and
    each of ``other_backends`` -- as built clients or ``(backend, backend_kwargs)``
    pairs (see :func:`unpriced_models`). ``allow_unpriced=True`` is the run-wide
    opt-out; per model, ``backend_kwargs={"prices": {name: "unpriced"}}`` (or a
    price) is.
    """
    if allow_unpriced:
        return
    missing = unpriced_models(configs)
    if not missing:
        return
    example = missing[0]
    raise ConfigurationError(
        f"max_budget is set but no price is known for {', '.join(repr(m) for m in missing)}: "
        "their calls could not be counted toward the budget. Give a price, e.g. "
        f"backend_kwargs={{'prices': {{{example!r}: {{'input': USD_per_million, "
        "'output': USD_per_million}}}, or opt the model out explicitly with "
        f"backend_kwargs={{'prices': {{{example!r}: 'unpriced'}}}}"
    )
