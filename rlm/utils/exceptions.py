"""Exceptions raised by :class:`rlm.RLM`.

Every exception derives from :class:`RLMError`. The limit errors keep the
constructor signatures of the public ``rlms`` package and all carry
``partial_answer``: the best answer the run had produced when it stopped.
"""

from __future__ import annotations

import re
from dataclasses import InitVar, dataclass
from typing import Any, ClassVar


def _restore(cls: type[BaseException], args: tuple[Any, ...]) -> BaseException:
    error = cls.__new__(cls)
    error.args = args
    return error


class RLMError(Exception):
    """Root of every error this library raises on purpose."""

    partial_answer: str | None = None
    #: The message of an error constructed without one (the dataclass errors below),
    #: formatted with the error's attributes.
    _template: ClassVar[str] = ""

    def __post_init__(self, message: str | None) -> None:
        super().__init__(message or self._template.format(**vars(self)))

    def __reduce__(self) -> tuple[Any, ...]:
        # The message and the attributes, without calling __init__ again: the errors whose
        # constructors take other arguments than the message pickle too.
        return (_restore, (type(self), self.args), self.__dict__)


# The errors that carry figures are dataclasses: their constructor is the fields in order
# (rlms' signatures), ``message`` is the message (else ``_template``), and each field is
# an attribute. eq=False and repr=False keep an exception's identity and repr.


class LimitExceededError(RLMError):
    """A configured limit stopped the run."""


@dataclass(eq=False, repr=False)
class BudgetExceededError(LimitExceededError):
    """The run spent more than ``max_budget`` USD."""

    _template = "Budget exceeded: spent ${spent:.6f} of ${budget:.6f} budget"
    spent: float
    budget: float
    message: InitVar[str | None] = None
    partial_answer: str | None = None


@dataclass(eq=False, repr=False)
class TimeoutExceededError(LimitExceededError):
    """The run took longer than ``max_timeout`` seconds."""

    _template = "Timeout exceeded: {elapsed:.1f}s of {timeout:.1f}s limit"
    elapsed: float
    timeout: float
    partial_answer: str | None = None
    message: InitVar[str | None] = None


@dataclass(eq=False, repr=False)
class TokenLimitExceededError(LimitExceededError):
    """The run used more than ``max_tokens`` input + output tokens."""

    _template = "Token limit exceeded: {tokens_used:,} of {token_limit:,} tokens"
    tokens_used: int
    token_limit: int
    partial_answer: str | None = None
    message: InitVar[str | None] = None


@dataclass(eq=False, repr=False)
class ErrorThresholdExceededError(LimitExceededError):
    """``max_errors`` consecutive iterations ended with an error in their code."""

    _template = "Error threshold exceeded: {error_count} consecutive errors (limit: {threshold})"
    error_count: int
    threshold: int
    last_error: str | None = None
    partial_answer: str | None = None
    message: InitVar[str | None] = None


@dataclass(eq=False, repr=False)
class CancellationError(RLMError):
    """The run was cancelled (Ctrl-C, or the awaiting task of ``acompletion`` was cancelled)."""

    _template = "Execution cancelled by user"
    partial_answer: str | None = None
    message: InitVar[str | None] = None


@dataclass(eq=False, repr=False)
class StructuredOutputError(RLMError, ValueError):
    """The answer never matched ``response_format``: every try allowed by
    ``response_format_retries`` was rejected (or the answer forced after
    ``max_iterations`` was invalid).

    Attributes: ``attempt`` (the last answer the model submitted, as text; also
    ``partial_answer``), ``validation_error`` (why it was rejected) and ``attempts`` (how
    many answers were rejected). A ``ValueError``, like a failed parse.
    """

    _template = "the answer did not match response_format: {validation_error}"
    attempt: str
    validation_error: str
    attempts: int = 1
    message: InitVar[str | None] = None

    def __post_init__(self, message: str | None) -> None:
        self.partial_answer = self.attempt
        super().__post_init__(message)


class ProtocolError(RLMError, ValueError):
    """A frame (on the LM handler socket or a worker channel) was malformed, too large,
    or cut short. Also a ``ValueError``, as the worker channel's errors always were."""


class ConfigurationError(RLMError, ValueError):
    """The RLM, a client or an environment was configured wrongly.

    Raised where rlms raised: unknown names and malformed options at construction, a
    missing API key when the client is first built (the first completion). A subclass of
    ``ValueError``, which is what rlms raised, so existing ``except`` clauses catch it.
    """


class MissingBaseURLError(ConfigurationError, AssertionError):
    """``backend="vllm"`` without ``base_url``; also an ``AssertionError``, as in rlms."""


# ---------------------------------------------------------------------------
# Provider errors: what a model provider's SDK raised, mapped once at the client seam
# (rlm.clients.base_lm.map_provider_error). The exception raised is also an instance of
# the SDK's own class (a class made from both), so ``except openai.RateLimitError`` and
# ``except openai.APIError``, which rlms users wrote, still catch it; the SDK's
# exception is ``__cause__`` (and ``original``), its attributes (``status_code``,
# ``response``, ``body``...) are kept.
# ---------------------------------------------------------------------------


class ProviderError(RLMError):
    """A model provider refused or failed a call. ``str()`` is one line.

    Attributes: ``provider`` (the SDK's package, e.g. ``"openai"``), ``model``,
    ``status_code`` (the HTTP status, ``None`` without one) and ``original`` (the SDK's
    exception, also ``__cause__``).
    """

    provider: str | None = None
    model: str | None = None
    status_code: int | None = None
    original: BaseException | None = None
    #: What the message says this kind of failure is.
    kind = "failed"

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else self.kind

    def __reduce__(self) -> tuple[Any, ...]:
        # The class made from both is not importable by name: pickle as the rlm class.
        plain = next(c for c in type(self).__mro__ if globals().get(c.__name__) is c)
        window = getattr(self, "window", None)
        return (
            _rebuild_provider_error,
            (plain, str(self), self.provider, self.status_code, window),
        )


class ProviderAuthenticationError(ProviderError):
    """The provider refused the credentials (HTTP 401 or 403)."""

    kind = "authentication failed"


class ProviderRateLimitError(ProviderError):
    """The provider refused the call for rate or quota (HTTP 429)."""

    kind = "rate limited"


class ProviderConnectionError(ProviderError):
    """The provider could not be reached (refused, reset, DNS, TLS)."""

    kind = "could not connect"


class ProviderTimeoutError(ProviderConnectionError):
    """The provider did not answer within the client's ``timeout``."""

    kind = "timed out"


class ProviderBadRequestError(ProviderError):
    """The provider refused the request itself (HTTP 400-499 other than 401/403/429)."""

    kind = "bad request"


class ContextOverflowError(RLMError):
    """The prompt does not fit the model's context window.

    ``window``: the window's size in tokens, when the model or provider said it (else
    None). The RLM loop meets it by dropping the oldest turns of its history and asking
    again (see :class:`~rlm.core.events.HistoryTrimmed`); it reaches the caller when
    nothing is left to drop.
    """

    window: int | None = None


class ProviderContextLengthError(ProviderBadRequestError, ContextOverflowError):
    """The provider refused the request because the prompt does not fit the model's
    window (the wordings :func:`context_overflow` knows, and LiteLLM's own class:
    :func:`rlm.clients.base_lm.refusal_overflow`). ``window`` is the size the message
    gives."""

    kind = "prompt too long for the model's context window"


class ProviderServerError(ProviderError):
    """The provider failed (HTTP 500 and above)."""

    kind = "server error"


#: How providers say that a prompt does not fit; the group, when there is one, is the
#: window in tokens (a number, not "128k"). OpenAI, vLLM and llama-cpp-python's server;
#: llama.cpp's own server; llama.cpp itself and OpenAI's newer wording; Anthropic (two
#: wordings); Gemini; Mistral; the error codes alone.
_OVERFLOW = [
    re.compile(p, re.IGNORECASE)
    for p in (
        r"maximum context length is (\d[\d,]*)\b tokens",
        r"exceeds the available context size(?: \((\d[\d,]*)\b tokens\))?",
        r"exceeds? (?:the )?context window(?: of (\d[\d,]*)\b)?",
        r"prompt is too long: [\d,]+ tokens > (\d[\d,]*)\b",
        r"exceed context limit: [\d,]+ \+ [\d,]+ > (\d[\d,]*)\b",
        r"exceeds the maximum number of tokens allowed \((\d[\d,]*)\b\)",
        r"too large for model with (\d[\d,]*)\b maximum context length",
        r"context_length_exceeded|exceed_context_size_error",
    )
]


def context_overflow(text: str) -> tuple[bool, int | None]:
    """Whether a provider's error message ``text`` says the prompt does not fit the
    model's context window, and the window (tokens) when it gives one."""
    for pattern in _OVERFLOW:
        match = pattern.search(text)
        if match is not None:
            size = match.group(1) if match.groups() else None
            return True, int(size.replace(",", "")) if size else None
    return False, None


def _rebuild_provider_error(
    cls: type[ProviderError],
    message: str,
    provider: str | None,
    status: int | None,
    window: int | None = None,
) -> ProviderError:
    error = cls(message)
    error.provider, error.status_code = provider, status
    if isinstance(error, ContextOverflowError):
        error.window = window
    return error


__all__ = [
    "RLMError",
    "LimitExceededError",
    "BudgetExceededError",
    "TimeoutExceededError",
    "TokenLimitExceededError",
    "ErrorThresholdExceededError",
    "CancellationError",
    "StructuredOutputError",
    "ProtocolError",
    "ConfigurationError",
    "MissingBaseURLError",
    "ProviderError",
    "ProviderAuthenticationError",
    "ProviderRateLimitError",
    "ProviderConnectionError",
    "ProviderTimeoutError",
    "ProviderBadRequestError",
    "ProviderContextLengthError",
    "ContextOverflowError",
    "ProviderServerError",
]
