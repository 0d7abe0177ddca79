"""The one seam between the RLM and a language model.

A provider implements ``_generate(messages, model=None)`` (and optionally
``_agenerate``), returning a :class:`Generation`: the text *and* the usage of
that one call. Everything else -- prompt normalisation, per-model usage
accounting, ``completion()``/``acompletion()``, ``get_usage_summary()`` -- is
shared here, so concurrent calls never read each other's usage.

Clients written against the public ``rlms`` package (subclasses overriding
``completion``/``acompletion``/``get_usage_summary``/``get_last_usage``) keep
working: the handler falls back to those methods when ``_generate`` is not
implemented.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import os
import threading
import weakref
from abc import ABCMeta
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rlm.clients.pricing import PriceBook
from rlm.comms.workers import in_worker
from rlm.datatypes import ModelUsageSummary, UsageSummary
from rlm.utils import exceptions as _exc
from rlm.utils.exceptions import ConfigurationError, ProviderError
from rlm.utils.token_utils import count_tokens

DEFAULT_TIMEOUT: float = 300.0

Messages = list[dict[str, Any]]
#: ``on_token(text)``: called with each piece of a streamed answer.
OnToken = Callable[[str], Any]


#: The usage fields of a :class:`Generation` and their names in :class:`ModelUsageSummary`.
_SUMMARY_FIELDS = {
    "input_tokens": "total_input_tokens",
    "output_tokens": "total_output_tokens",
    "cached_tokens": "total_cached_tokens",
    "cost": "total_cost",
}


@dataclass
class Generation:
    """One model call: its text and what it cost."""

    text: str
    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cost: float | None = None
    #: Prompt tokens written to the provider's cache (Anthropic); priced, not summarised.
    cache_write_tokens: int = 0

    def usage(self) -> ModelUsageSummary:
        """This call's tokens and cost as a one-call :class:`ModelUsageSummary`."""
        counts = {total: getattr(self, name) for name, total in _SUMMARY_FIELDS.items()}
        return ModelUsageSummary(total_calls=1, **counts)

    @classmethod
    def from_usage(cls, text: str, model: str, usage: ModelUsageSummary) -> Generation:
        """The Generation of ``text`` with the tokens and cost of ``usage`` (the inverse of
        :meth:`usage`)."""
        counts = {name: getattr(usage, total) for name, total in _SUMMARY_FIELDS.items()}
        return cls(text=text, model=model, **counts)


def _are_messages(items: list[Any]) -> bool:
    """Whether every item is a dict with a ``role``, in one pass in C (a long root history
    is checked on every call)."""
    try:
        return all(map(dict.__contains__, items, itertools.repeat("role")))
    except TypeError:  # an item that is not a dict
        return False


def to_messages(prompt: Any) -> Messages:
    """Normalise any prompt into chat messages.

    A string becomes one user message; a message dict or a list of message
    dicts (each with ``role``) passes through; anything else (a list of
    strings, a dict of data, bytes) is rendered as the content of one user message.
    """
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, dict) and "role" in prompt:
        return [prompt]
    if isinstance(prompt, list) and prompt and _are_messages(prompt):
        return prompt
    if isinstance(prompt, (bytes, bytearray)):
        return [{"role": "user", "content": bytes(prompt).decode("utf-8", errors="replace")}]
    if isinstance(prompt, list) and all(isinstance(m, str) for m in prompt):
        return [{"role": "user", "content": "\n".join(prompt)}]
    try:
        content = json.dumps(prompt, ensure_ascii=False, default=repr)
    except Exception:
        content = repr(prompt)
    return [{"role": "user", "content": content}]


def content_text(content: Any) -> str:
    """The text of a message's ``content``: a string, or a list of parts (dicts with
    ``text``, or anything else, as ``str``) joined by newlines."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(part.get("text", "")) if isinstance(part, dict) else str(part) for part in content
        )
    return str(content)


def estimate_message_tokens(messages: Messages) -> int:
    """Estimated input tokens of ``messages`` (see :mod:`rlm.utils.token_utils`)."""
    return count_tokens(messages)


class UsageTracker:
    """Thread-safe per-model totals, fed one :class:`Generation` at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._per_model: dict[str, ModelUsageSummary] = {}
        self._last = ModelUsageSummary()
        self._local = threading.local()

    def record(self, model: str, usage: ModelUsageSummary) -> None:
        """Add one call's usage to the totals of ``model`` (and remember it as this thread's last)."""
        with self._lock:
            self._per_model.setdefault(model, ModelUsageSummary()).add(usage)
            self._last = usage
        self._local.last = usage

    def summary(self) -> UsageSummary:
        """The totals so far, per model."""
        with self._lock:
            return UsageSummary(
                model_usage_summaries={
                    model: ModelUsageSummary(**vars(s)) for model, s in self._per_model.items()
                }
            )

    def last(self) -> ModelUsageSummary:
        """The last call made by the current thread (or by any thread, if this one made none)."""
        return getattr(self._local, "last", None) or self._last


#: The methods rlms' ``BaseLM`` declares abstract.
_RLMS_ABSTRACT = ("completion", "acompletion", "get_usage_summary", "get_last_usage")


class _LMMeta(ABCMeta):
    """Abstract methods as in rlms, for classes that do not implement ``_generate``.

    rlms' ``BaseLM`` is an ABC whose four methods in ``_RLMS_ABSTRACT`` are
    abstract, so ``BaseLM(...)`` and a subclass missing one of them raise
    ``TypeError`` on instantiation. Ours does the same, except that a class
    implementing ``_generate`` (every client of ours) gets all four from here.
    """

    def __new__(mcls, name: str, bases: tuple[type, ...], namespace: dict[str, Any], **kw: Any):
        cls = super().__new__(mcls, name, bases, namespace, **kw)
        base = next((c for c in cls.__mro__ if c.__dict__.get("_is_rlm_base_lm")), cls)
        abstract = set(cls.__abstractmethods__)
        if getattr(cls, "_generate", None) is getattr(base, "_generate", None):
            for method in _RLMS_ABSTRACT:
                if getattr(cls, method, None) is getattr(base, method, None):
                    abstract.add(method)
        cls.__abstractmethods__ = frozenset(abstract)
        return cls


class BaseLM(metaclass=_LMMeta):
    """Base class of every client. Subclasses implement ``_generate`` (ours), or
    ``completion``, ``acompletion``, ``get_usage_summary`` and ``get_last_usage``
    (rlms' abstract methods); a class with neither cannot be instantiated."""

    _is_rlm_base_lm = True

    #: True for clients that run on the caller's machine and cost nothing per token.
    is_local: bool = False
    #: The model's context window in tokens, when the client knows it (else a table is used).
    context_window: int | None = None
    #: True for clients whose ``_generate`` and ``_stream`` take ``stop`` (a list of stop
    #: sequences for that call, added to the client's own): see :func:`with_stop`.
    accepts_stop: bool = False
    #: Whether a root call may run in the loop's own thread when nothing needs it to run
    #: elsewhere (:meth:`rlm.utils.turns.Turns._ask_root`): Ctrl-C then lands in
    #: the call itself. False for a client whose call must not be interrupted midway.
    inline_root_calls: bool = True

    def __init__(
        self,
        model_name: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        sampling_args: dict[str, Any] | None = None,
        prices: dict[str, Any] | None = None,
        price_provider: str | None = None,
        **kwargs: Any,
    ):
        self.model_name = model_name or "unknown"
        self.timeout = timeout
        self.sampling_args: dict[str, Any] = dict(sampling_args or {})
        self.kwargs = kwargs
        self._usage = UsageTracker()
        self._init_counters()
        # ``prices``: the user's per-model overrides (USD per million tokens);
        # ``price_provider``: where to look in the bundled price table (None: nowhere).
        self.price_book = PriceBook(prices, price_provider)

    def _init_counters(self) -> None:
        # rlms' per-model counters and last-call figures, kept up to date by every call.
        self.model_call_counts: dict[str, int] = defaultdict(int)
        self.model_input_tokens: dict[str, int] = defaultdict(int)
        self.model_output_tokens: dict[str, int] = defaultdict(int)
        self.model_total_tokens: dict[str, int] = defaultdict(int)
        self.model_costs: dict[str, float] = defaultdict(float)
        self.last_prompt_tokens: int = 0
        self.last_completion_tokens: int = 0
        self.last_cost: float | None = None

    def _record(self, generation: Generation) -> None:
        """Count one call: the usage tracker, then rlms' counter attributes."""
        tracker = getattr(self, "_usage", None)
        if tracker is None:  # a subclass that skipped our __init__
            tracker = self._usage = UsageTracker()
        if not hasattr(self, "model_call_counts"):
            self._init_counters()
        usage = generation.usage()
        tracker.record(generation.model, usage)
        model = generation.model
        with tracker._lock:
            self.model_call_counts[model] += 1
            self.model_input_tokens[model] += generation.input_tokens
            self.model_output_tokens[model] += generation.output_tokens
            self.model_total_tokens[model] += generation.input_tokens + generation.output_tokens
            if generation.cost is not None:
                self.model_costs[model] += generation.cost
            self.last_prompt_tokens = generation.input_tokens
            self.last_completion_tokens = generation.output_tokens
            self.last_cost = generation.cost

    # -- provider hooks -------------------------------------------------------

    def _generate(self, messages: Messages, model: str | None = None) -> Generation:
        raise NotImplementedError(f"{type(self).__name__} does not implement _generate()")

    async def _agenerate(self, messages: Messages, model: str | None = None) -> Generation:
        return await in_worker(self._generate, messages, model)

    def _stream(self, messages: Messages, model: str | None, on_token: OnToken) -> Generation:
        """Optional: like ``_generate``, calling ``on_token(text)`` with each piece of the
        answer as the provider sends it; returns the whole call's Generation (text, usage)."""
        raise NotImplementedError(f"{type(self).__name__} does not stream")

    # -- shared machinery -------------------------------------------------------

    @classmethod
    def implements_generate(cls) -> bool:
        """Whether this client returns per-call usage (new-style) or only text (0.1.x style)."""
        return cls._generate is not BaseLM._generate

    @classmethod
    def supports_streaming(cls) -> bool:
        """Whether this client implements ``_stream`` (root tokens as they arrive)."""
        return cls._stream is not BaseLM._stream

    def generate(
        self, prompt: Any, model: str | None = None, stop: list[str] | None = None
    ) -> Generation:
        """One model call: the text and the usage of answering ``prompt`` (a string, messages, or anything :func:`to_messages` accepts), with ``model`` overriding the client's model name; counted in the usage totals. ``stop``: stop sequences for this call, sent when the client takes them (``accepts_stop``), else ignored."""
        extra = {"stop": list(stop)} if stop and self.accepts_stop else {}
        with ProviderErrors(model or self.model_name):
            generation = self._priced(self._generate(to_messages(prompt), model, **extra))
        self._record(generation)
        return generation

    def generate_stream(
        self,
        prompt: Any,
        on_token: OnToken,
        model: str | None = None,
        stop: list[str] | None = None,
    ) -> Generation:
        """``generate`` streamed through ``on_token`` (the same Generation at the end);
        a client that cannot stream answers in one piece, without calling ``on_token``."""
        if not type(self).supports_streaming():
            return self.generate(prompt, model, stop)
        extra = {"stop": list(stop)} if stop and self.accepts_stop else {}
        with ProviderErrors(model or self.model_name):
            generation = self._priced(self._stream(to_messages(prompt), model, on_token, **extra))
        self._record(generation)
        return generation

    async def agenerate(self, prompt: Any, model: str | None = None) -> Generation:
        """The async form of :meth:`generate`."""
        with ProviderErrors(model or self.model_name):
            generation = self._priced(await self._agenerate(to_messages(prompt), model))
        self._record(generation)
        return generation

    def _priced(self, generation: Generation) -> Generation:
        """The one place costs are filled in: a provider-reported cost wins, then the
        price book (user override, bundled table); unknown stays ``None``."""
        book = getattr(self, "price_book", None)  # None: a subclass that skipped our __init__
        if generation.cost is None and book is not None:
            generation.cost = book.cost(generation)
        return generation

    def knows_price(self) -> bool:
        """Whether calls to this client's model can be priced (so ``max_budget`` counts them)."""
        if self.is_local:
            return True
        book = getattr(self, "price_book", None)
        return book is not None and book.knows(self.model_name)

    def completion(self, prompt: Any, model: str | None = None) -> str:
        """The answer's text only (rlms' method); see :meth:`generate`."""
        return self.generate(prompt, model).text

    async def acompletion(self, prompt: Any, model: str | None = None) -> str:
        """The async form of :meth:`completion`."""
        if not type(self).implements_generate():
            # A 0.1.x-style subclass that only wrote completion(): run it in a thread.
            return await in_worker(self.completion, prompt)
        return (await self.agenerate(prompt, model)).text

    def get_usage_summary(self) -> UsageSummary:
        """Calls, tokens and cost of every call made through this client, per model."""
        return self._usage.summary()

    def get_last_usage(self) -> ModelUsageSummary:
        """The usage of this thread's last call (of any thread's, if this one made none)."""
        return self._usage.last()

    def close(self) -> None:
        """Release connections or loaded weights. Safe to call twice."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model_name={self.model_name!r})"


# ---------------------------------------------------------------------------
# Provider errors, mapped once
# ---------------------------------------------------------------------------

#: Packages whose exceptions are a provider's (what generate()/agenerate() map).
PROVIDER_PACKAGES = frozenset(
    {"openai", "anthropic", "google", "litellm", "portkey_ai"}
    | {"httpx", "httpcore", "httpx2", "httpcore2", "aiohttp"}  # what the SDKs let through
)
#: SDK class names -> rlm class, checked along the exception's MRO (most specific first).
_BY_NAME: dict[str, type[ProviderError]] = {
    "AuthenticationError": _exc.ProviderAuthenticationError,
    "PermissionDeniedError": _exc.ProviderAuthenticationError,
    "Unauthenticated": _exc.ProviderAuthenticationError,
    "PermissionDenied": _exc.ProviderAuthenticationError,
    "RateLimitError": _exc.ProviderRateLimitError,
    "ResourceExhausted": _exc.ProviderRateLimitError,
    "APITimeoutError": _exc.ProviderTimeoutError,
    "Timeout": _exc.ProviderTimeoutError,
    "TimeoutException": _exc.ProviderTimeoutError,
    "DeadlineExceeded": _exc.ProviderTimeoutError,
    "APIConnectionError": _exc.ProviderConnectionError,
    "ConnectError": _exc.ProviderConnectionError,
    "TransportError": _exc.ProviderConnectionError,
    "ServiceUnavailableError": _exc.ProviderServerError,
    "InternalServerError": _exc.ProviderServerError,
    "BadRequestError": _exc.ProviderBadRequestError,
    "NotFoundError": _exc.ProviderBadRequestError,
    "UnprocessableEntityError": _exc.ProviderBadRequestError,
}
_combined: dict[tuple[type, type], type] = {}


def _status_of(exc: BaseException) -> int | None:
    for value in (
        getattr(exc, "status_code", None),
        getattr(exc, "code", None),  # google-genai's APIError
        getattr(getattr(exc, "response", None), "status_code", None),
    ):
        if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
            return value
    return None


def _rlm_class(exc: BaseException, status: int | None) -> type[ProviderError]:
    # A connection failure deeper in the chain wins (LiteLLM reports one as a 500).
    cause, depth = exc.__cause__ or exc.__context__, 0
    while cause is not None and depth < 8:
        for klass in type(cause).__mro__:
            found = _BY_NAME.get(klass.__name__)
            if found is not None and issubclass(found, _exc.ProviderConnectionError):
                return found
        cause, depth = cause.__cause__ or cause.__context__, depth + 1
    for klass in type(exc).__mro__:
        if klass.__name__ in _BY_NAME:
            return _BY_NAME[klass.__name__]
    if status in (401, 403):
        return _exc.ProviderAuthenticationError
    if status == 429:
        return _exc.ProviderRateLimitError
    if status == 408:
        return _exc.ProviderTimeoutError
    if status is not None and status >= 500:
        return _exc.ProviderServerError
    if status is not None and status >= 400:
        return _exc.ProviderBadRequestError
    return ProviderError


def _own_message(exc: BaseException) -> str:
    """The provider's own words in an SDK's exception: the error object's ``message``,
    ``code`` and ``type`` (OpenAI's and Anthropic's ``body``, Gemini's ``message``), not
    the whole text, which may echo the request (and a REPL output quoting an earlier
    refusal); ``str(exc)`` for an SDK that keeps no such fields."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            return " ".join(str(error.get(key) or "") for key in ("message", "code", "type"))
        if isinstance(error, str):
            return error
    message = getattr(exc, "message", None)
    if isinstance(message, str) and type(exc).__module__.startswith("google"):
        return message
    return str(exc)


def refusal_overflow(exc: BaseException, status: int | None = None) -> tuple[bool, int | None]:
    """Whether a provider SDK's exception refuses the prompt as too long for the model's
    window (:func:`rlm.utils.exceptions.context_overflow` of its own message; never for
    HTTP 404 or 422), and the window it names. Clients that fall back from streaming on
    a bad request re-raise these: the same prompt would be refused again."""
    if type(exc).__name__ == "ContextWindowExceededError":  # LiteLLM's
        return True, _exc.context_overflow(str(exc))[1]
    status = _status_of(exc) if status is None else status
    if status in (404, 422):
        return False, None
    return _exc.context_overflow(_own_message(exc))


def map_provider_error(exc: BaseException, model: str | None = None) -> ProviderError | None:
    """The rlm error for an exception a provider SDK raised, or None (not a provider's).

    The result is an instance of a class made from the rlm class *and* the SDK's class,
    with the SDK exception's attributes, so both ``except ProviderRateLimitError`` and
    ``except openai.RateLimitError`` catch it; its message is one line. Raise it
    ``from exc`` (:class:`ProviderErrors` does)."""
    if isinstance(exc, ProviderError):
        return None
    package = type(exc).__module__.split(".")[0]
    if package not in PROVIDER_PACKAGES:
        return None
    status = _status_of(exc)
    rlm_cls = _rlm_class(exc, status)
    overflow, window = refusal_overflow(exc, status)
    if overflow and issubclass(rlm_cls, _exc.ProviderBadRequestError):
        rlm_cls = _exc.ProviderContextLengthError
    detail = " ".join(str(exc).split())
    if len(detail) > 300:
        detail = detail[:300] + "..."
    where = [f"model {model}"] if model else []
    where += [f"HTTP {status}"] if status else []
    message = f"{package}: {rlm_cls.kind}" + (f" ({', '.join(where)})" if where else "")
    message += f": {detail}" if detail else ""
    key = (rlm_cls, type(exc))
    klass = _combined.get(key)
    if klass is None:
        try:
            klass = type(rlm_cls.__name__, (rlm_cls, type(exc)), {"__module__": rlm_cls.__module__})
        except TypeError:  # an SDK class that cannot be combined (a C layout): ours alone
            klass = rlm_cls
        _combined[key] = klass
    error = klass.__new__(klass)
    error.__dict__.update(getattr(exc, "__dict__", {}))
    error.args = (message,)
    error.provider, error.model, error.status_code, error.original = package, model, status, exc
    if isinstance(error, _exc.ContextOverflowError):
        error.window = window
    return error


class ProviderErrors:
    """``with ProviderErrors(model):`` re-raises a provider SDK's exception as its rlm
    error (:func:`map_provider_error`), the original as ``__cause__``; others pass."""

    __slots__ = ("model",)

    def __init__(self, model: str | None) -> None:
        self.model = model

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> bool:
        if isinstance(exc, Exception):
            mapped = map_provider_error(exc, self.model)
            if mapped is not None:
                raise mapped from exc
        return False


def _legacy_generation(client: Any, text: str) -> Generation:
    try:
        usage = client.get_last_usage()
    except Exception:
        usage = None
    name = str(getattr(client, "model_name", None) or "unknown")
    if not isinstance(usage, ModelUsageSummary):
        return Generation(text=text, model=name)
    return Generation.from_usage(text, name, usage)


def with_stop(sampling: dict[str, Any], stop: list[str] | None) -> dict[str, Any]:
    """``sampling`` with ``stop`` added to its own ``stop`` (a string or a list), for one
    call; ``sampling`` itself when ``stop`` is empty."""
    if not stop:
        return sampling
    own = sampling.get("stop")
    own = [own] if isinstance(own, str) else list(own or [])
    return {**sampling, "stop": own + [s for s in stop if s not in own]}


def call_client(
    client: Any, prompt: Any, on_token: OnToken | None = None, stop: list[str] | None = None
) -> Generation:
    """One call on any client: new-style clients report their own usage; for the others
    (0.1.x-style subclasses, duck-typed objects) the text comes from ``completion()``
    and the usage from ``get_last_usage()``. With ``on_token``, a client that streams is
    streamed."""
    if reports_usage_per_call(client):
        if on_token is not None:
            return client.generate_stream(prompt, on_token, **({"stop": stop} if stop else {}))
        return client.generate(prompt, **({"stop": stop} if stop else {}))
    return _legacy_generation(client, client.completion(prompt))


async def acall_client(client: Any, prompt: Any) -> Generation:
    """The async form of :func:`call_client`."""
    if reports_usage_per_call(client):
        return await client.agenerate(prompt)
    return _legacy_generation(client, await client.acompletion(prompt))


def reports_usage_per_call(client: Any) -> bool:
    """True for clients whose ``generate()`` returns text and usage together.

    Anything else (a 0.1.x-style subclass, a duck-typed object, a test double)
    is driven through ``completion()`` and ``get_last_usage()``.
    """
    return isinstance(client, BaseLM) and type(client).implements_generate() is True


# ---------------------------------------------------------------------------
# Construction helpers shared by the provider clients
# ---------------------------------------------------------------------------


def require_model_name(client: str, model_name: str | None, example: str, meaning: str = "") -> str:
    """``model_name``, or a ConfigurationError showing an example (``meaning``: what the
    name is, for the message)."""
    if not model_name:
        raise ConfigurationError(
            f"{client} needs model_name{meaning} (e.g. backend_kwargs={{'model_name': {example!r}}})"
        )
    return model_name


def setting_from(value: str | None, *env_vars: str, default: str | None = None) -> str | None:
    """The explicit value, else the first of ``env_vars`` that is set, else ``default``."""
    if value:
        return value
    for var in env_vars:
        found = os.environ.get(var)
        if found:
            return found
    return default


def missing_setting(
    client: str,
    *env_vars: str,
    what: str = "API key",
    option: str = "api_key",
    example: str = "...",
    alternative: str = "",
) -> ConfigurationError:
    """The error for a client constructed without a setting it needs (by default its key):
    it names the ``backend_kwargs`` option (``alternative``: another way to give it) and
    the environment variables read."""
    names = " (or ".join(env_vars) + ")" * (len(env_vars) - 1)
    return ConfigurationError(
        f"No {what} for the {client} client: pass backend_kwargs={{{option!r}: {example}}}"
        f"{alternative} or set the {names} environment variable"
    )


def required_setting(
    value: str | None,
    client: str,
    *env_vars: str,
    default: str | None = None,
    **message: str,
) -> str:
    """:func:`setting_from`, or the :func:`missing_setting` error (``message``: its
    ``what``, ``option`` and ``example``) when nothing gives the setting."""
    found = setting_from(value, *env_vars, default=default)
    if not found:
        raise missing_setting(client, *env_vars, **message)
    return found


#: Names that belong in ``sampling_args`` (a common mistake is to put them in backend_kwargs).
SAMPLING_OPTION_NAMES = frozenset(
    {
        "temperature",
        "top_p",
        "top_k",
        "max_tokens",
        "max_completion_tokens",
        "max_output_tokens",
        "stop",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "reasoning_effort",
    }
)


def check_sdk_options(client: str, options: dict[str, Any], sdk: Any, own: str) -> None:
    """Reject ``options`` that the SDK constructor ``sdk`` would refuse, now rather than at
    the first call. ``own`` lists the client's own arguments, for the message."""
    import inspect

    accepted = set(inspect.signature(sdk.__init__).parameters) - {"self", "kwargs"}
    unknown = sorted(set(options) - accepted)
    sampling = [name for name in unknown if name in SAMPLING_OPTION_NAMES]
    if sampling:
        given = ", ".join(f"{name!r}: {options[name]!r}" for name in sampling)
        raise ConfigurationError(
            f"{', '.join(sampling)}: a sampling argument, not an option of the {client} client; "
            f"pass it as backend_kwargs={{'sampling_args': {{{given}}}}} (or RLM(..., "
            f"sampling_args={{{given}}}) for the root model)"
        )
    public = sorted(name for name in accepted if not name.startswith("_"))
    if unknown:
        raise ConfigurationError(
            f"Unknown backend_kwargs for the {client} client: {unknown}. Besides {own}, it "
            f"accepts the options of {sdk.__module__.split('.')[0]}.{sdk.__name__}: {public}"
        )


# ---------------------------------------------------------------------------
# SDK clients and streamed answers, shared by the provider clients
# ---------------------------------------------------------------------------


#: The SDK clients that built an async client on each event loop, for
#: :func:`close_loop_clients` (weak both ways: nothing here keeps a loop or client alive).
_LOOP_USERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, weakref.WeakSet[SDKClients]]
_LOOP_USERS = weakref.WeakKeyDictionary()
_LOOP_USERS_LOCK = threading.Lock()


async def close_loop_clients() -> None:
    """Close the async SDK clients built on the running event loop: the loop that owns
    them is about to close. Left open, each one's connection pool is collected later,
    on whatever loop then runs, where closing it fails ("Event loop is closed")."""
    loop = asyncio.get_running_loop()
    with _LOOP_USERS_LOCK:
        users = list(_LOOP_USERS.pop(loop, ()))
    for clients in users:
        try:
            await clients.aclose_loop(loop)
        except Exception:  # a pool that fails to close must not stop the others closing
            continue


class SDKClients:
    """A provider SDK's clients, built on first use from one set of arguments (``args``):
    one sync client, and one async client per event loop (an SDK's async client belongs to
    the loop it first ran on). The batch loop's client is closed when that loop ends
    (:func:`close_loop_clients`); one built on a loop of the caller's
    (``asyncio.run(client.acompletion(...))``) stays, with its connection pool, until
    :meth:`close`. ``factories`` are the (sync, async) SDK classes, looked up when the client
    is constructed, so a patch of the SDK active then is the one used. ``client`` and
    ``async_client`` (:class:`SDKClientAttribute`) read and replace them."""

    def __init__(
        self,
        client: str,
        own: str,
        factories: tuple[Any, Any],
        options: dict[str, Any],
        **args: Any,
    ) -> None:
        check_sdk_options(client, options, factories[0], own)
        self.factories = factories
        self.args: dict[str, Any] = {**args, **options}
        self.sync: Any = None
        self.async_override: Any = None  # an async client the user assigned
        # Keyed by the loop itself, not its id: a new loop can reuse a closed one's id. (A
        # client's open connections refer to their loop, so that loop lives as long.)
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any]
        self._async = weakref.WeakKeyDictionary()
        self._no_loop: Any = None  # built outside any running loop
        self._lock = threading.Lock()

    def get_sync(self) -> Any:
        """The SDK's sync client, built on first use (one per instance)."""
        if self.sync is None:
            with self._lock:
                if self.sync is None:
                    self.sync = self.factories[0](**self.args)
        return self.sync

    def get_async(self) -> Any:
        """The async client the user assigned, else one built per running event loop
        (an async SDK client is bound to the loop it was made on)."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        with self._lock:
            if self.async_override is not None:
                return self.async_override
            if loop is None:
                if self._no_loop is None:
                    self._no_loop = self.factories[1](**self.args)
                return self._no_loop
            client = self._async.get(loop)
            if client is None:
                client = self._async[loop] = self.factories[1](**self.args)
                with _LOOP_USERS_LOCK:
                    _LOOP_USERS.setdefault(loop, weakref.WeakSet()).add(self)
        return client

    async def aclose_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Close and forget the async client built on ``loop`` (the running one)."""
        with self._lock:
            client = self._async.pop(loop, None)
        close = getattr(client, "close", None)
        if close is not None:
            result = close()
            if inspect.isawaitable(result):
                await result

    def close(self) -> None:
        """Close the sync client and forget the async ones (built again when needed)."""
        sync, self.sync = self.sync, None
        if sync is not None and hasattr(sync, "close"):
            sync.close()
        with self._lock:
            self._async.clear()
            self._no_loop = None


class SDKClientAttribute:
    """rlms' ``client`` / ``async_client`` attributes of a client that keeps its SDK
    clients in ``_clients`` (:class:`SDKClients`): built on first read, assignable."""

    def __init__(self, asynchronous: bool) -> None:
        self.asynchronous = asynchronous

    def __set_name__(self, owner: type, name: str) -> None:
        kind = "async client of the running event loop" if self.asynchronous else "client"
        self.__doc__ = f"The SDK's {kind} the calls go through (assignable)."

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        clients: SDKClients = obj._clients
        return clients.get_async() if self.asynchronous else clients.get_sync()

    def __set__(self, obj: Any, value: Any) -> None:
        clients: SDKClients = obj._clients
        if self.asynchronous:
            clients.async_override = value
        else:
            clients.sync = value


def relay_stream(
    chunks: Any,
    on_token: OnToken,
    texts: Callable[[Any], Any],
    usage: Callable[[Any], Any],
    closing: Any = None,
) -> tuple[str, Any]:
    """Read a streamed answer: ``texts(chunk)`` are its pieces, each sent to ``on_token``
    as it arrives; returns the whole text and the last non-None ``usage(chunk)``. The
    stream (or ``closing``, the object that holds the response) is closed at the end, also
    when ``on_token`` raises (a cancelled run)."""
    pieces: list[str] = []
    last = None
    try:
        for chunk in chunks:
            found = usage(chunk)
            if found is not None:
                last = found
            for text in texts(chunk):
                if text:
                    pieces.append(text)
                    on_token(text)
    finally:
        close = getattr(chunks if closing is None else closing, "close", None)
        if close is not None:
            close()
    return "".join(pieces), last
