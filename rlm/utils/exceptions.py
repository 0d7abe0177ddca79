"""Exceptions raised by :class:`rlm.RLM`.

Every exception derives from :class:`RLMError`. The limit errors keep the
constructor signatures of the public ``rlms`` package and all carry
``partial_answer``: the best answer the run had produced when it stopped.
"""

from __future__ import annotations


class RLMError(Exception):
    """Root of every error this library raises on purpose."""

    partial_answer: str | None = None


class LimitExceededError(RLMError):
    """A configured limit stopped the run."""


class BudgetExceededError(LimitExceededError):
    """The run spent more than ``max_budget`` USD."""

    def __init__(
        self,
        spent: float,
        budget: float,
        message: str | None = None,
        partial_answer: str | None = None,
    ):
        self.spent = spent
        self.budget = budget
        self.partial_answer = partial_answer
        super().__init__(message or f"Budget exceeded: spent ${spent:.6f} of ${budget:.6f} budget")


class TimeoutExceededError(LimitExceededError):
    """The run took longer than ``max_timeout`` seconds."""

    def __init__(
        self,
        elapsed: float,
        timeout: float,
        partial_answer: str | None = None,
        message: str | None = None,
    ):
        self.elapsed = elapsed
        self.timeout = timeout
        self.partial_answer = partial_answer
        super().__init__(message or f"Timeout exceeded: {elapsed:.1f}s of {timeout:.1f}s limit")


class TokenLimitExceededError(LimitExceededError):
    """The run used more than ``max_tokens`` input + output tokens."""

    def __init__(
        self,
        tokens_used: int,
        token_limit: int,
        partial_answer: str | None = None,
        message: str | None = None,
    ):
        self.tokens_used = tokens_used
        self.token_limit = token_limit
        self.partial_answer = partial_answer
        super().__init__(
            message or f"Token limit exceeded: {tokens_used:,} of {token_limit:,} tokens"
        )


class ErrorThresholdExceededError(LimitExceededError):
    """``max_errors`` consecutive iterations ended with an error in their code."""

    def __init__(
        self,
        error_count: int,
        threshold: int,
        last_error: str | None = None,
        partial_answer: str | None = None,
        message: str | None = None,
    ):
        self.error_count = error_count
        self.threshold = threshold
        self.last_error = last_error
        self.partial_answer = partial_answer
        super().__init__(
            message
            or f"Error threshold exceeded: {error_count} consecutive errors (limit: {threshold})"
        )


class CancellationError(RLMError):
    """The run was cancelled (Ctrl-C, or the awaiting task of ``acompletion`` was cancelled)."""

    def __init__(self, partial_answer: str | None = None, message: str | None = None):
        self.partial_answer = partial_answer
        super().__init__(message or "Execution cancelled by user")


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


__all__ = [
    "RLMError",
    "LimitExceededError",
    "BudgetExceededError",
    "TimeoutExceededError",
    "TokenLimitExceededError",
    "ErrorThresholdExceededError",
    "CancellationError",
    "ProtocolError",
    "ConfigurationError",
    "MissingBaseURLError",
]
