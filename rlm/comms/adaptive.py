"""Adaptive concurrency for ``llm_query_batched``: AIMD per provider.

A batch starts wide (``START`` calls in flight) and adapts to what the provider
accepts. Every success adds ``1 / limit`` to the limit (one more call per
round-trip, the additive increase); a rate-limit answer (HTTP 429, a
``RateLimitError``, ``ResourceExhausted``, "rate limit" in the message) halves it
(the multiplicative decrease) at most once per round-trip, remembers a ceiling one
below the level that was refused, and puts the refused prompt back in the queue
after the provider's ``Retry-After`` (or a short exponential backoff). The
ceiling is forgotten after ``CEILING_TTL`` seconds without a rate-limit answer,
so a passing spike does not cap the provider forever.

One :class:`AdaptiveLimit` is shared by every handler that calls the same
provider (same client class, base URL and model) in this process, so a batch of
RLM runs that each call ``llm_query_batched`` share one view of the provider's
limit. Clients without a base URL (the scripted LM, in-process models) get one
per client object.

The provider SDK's own retries run first: the OpenAI client retries a 429
``max_retries`` times (4 by default) before the error reaches this layer. Set
``max_retries=0`` in ``backend_kwargs`` to let the batch adapt at the first 429.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

from rlm.comms.limiter import SlotWaiters

#: Calls in flight when a provider is first seen.
START = 64
#: The most calls in flight per provider, however well it answers.
MAXIMUM = 256
#: Seconds after the last rate-limit answer before the learned ceiling is dropped.
CEILING_TTL = 60.0
#: Times one prompt is put back after a rate-limit answer before its error is returned.
MAX_RATE_LIMIT_RETRIES = 8
#: Longest wait honoured from a Retry-After header (seconds).
MAX_RETRY_AFTER = 30.0


class AdaptiveLimit:
    """A concurrency limit that grows additively and shrinks multiplicatively.

    Thread-safe and usable from any number of event loops at once: waiters are
    woken with ``call_soon_threadsafe`` on their own loop.
    """

    def __init__(
        self,
        start: int = START,
        minimum: int = 1,
        maximum: int = MAXIMUM,
        decrease: float = 0.5,
        ceiling_ttl: float = CEILING_TTL,
    ):
        if not 1 <= minimum <= start <= maximum:
            raise ValueError("need 1 <= minimum <= start <= maximum")
        if not 0 < decrease < 1:
            raise ValueError("decrease must be in (0, 1)")
        self.minimum = minimum
        self.maximum = maximum
        self.decrease = decrease
        self.ceiling_ttl = ceiling_ttl
        self._limit = float(start)
        self._ceiling = maximum
        self._last_cut = 0.0  # monotonic time of the last decrease
        self._last_rate_limit = 0.0
        self._active = 0
        self._lock = threading.Lock()
        self._waiters = SlotWaiters(self._lock, lambda: self.release(None, ok=False))
        #: Counters for tests, benchmarks and diagnostics.
        self.peak = 0
        self.rate_limited = 0
        self.decreases = 0

    @property
    def limit(self) -> int:
        """Calls allowed in flight now."""
        return max(self.minimum, int(self._limit))

    @property
    def ceiling(self) -> int:
        return self._ceiling

    @property
    def active(self) -> int:
        return self._active

    # -- slots ------------------------------------------------------------------

    def _expire_ceiling(self, now: float) -> None:
        if self._ceiling < self.maximum and now - self._last_rate_limit > self.ceiling_ttl:
            self._ceiling = self.maximum

    async def acquire(self) -> float:
        """Wait for a slot; returns the monotonic start time to pass to :meth:`release`."""
        await self._waiters.wait_async(self._take_free)
        return time.monotonic()

    def _take_free(self) -> bool:
        if self._active < self.limit and not self._waiters:
            self._take()
            return True
        return False

    def _take(self) -> None:
        self._active += 1
        self.peak = max(self.peak, self._active)

    def release(self, started: float | None, ok: bool = True, rate_limited: bool = False) -> None:
        """Give a slot back. ``ok``: the call succeeded (additive increase);
        ``rate_limited``: the provider refused it for rate (multiplicative decrease)."""
        now = time.monotonic()
        with self._lock:
            self._active -= 1
            self._expire_ceiling(now)
            if rate_limited:
                self.rate_limited += 1
                self._last_rate_limit = now
                # One cut per round-trip: calls already in flight at the last cut carry
                # no news about the new limit.
                if started is None or started >= self._last_cut:
                    refused_at = min(self.limit, self._active + 1)  # calls in flight, this one too
                    self._ceiling = max(self.minimum, min(self._ceiling, refused_at - 1))
                    self._limit = max(float(self.minimum), refused_at * self.decrease)
                    self._last_cut = now
                    self.decreases += 1
            elif ok:
                self._limit = min(
                    float(min(self._ceiling, self.maximum)), self._limit + 1.0 / self._limit
                )
            self._wake()

    def _wake(self) -> None:
        while self._active < self.limit and self._waiters.hand_over():
            self._take()  # the slot handed over


def is_rate_limit(exc: BaseException) -> bool:
    """True when ``exc`` says the provider refused the call for rate (429 and friends)."""
    for attr in ("status_code", "status", "code", "http_status"):
        if getattr(exc, attr, None) == 429:
            return True
    response = getattr(exc, "response", None)
    if getattr(response, "status_code", None) == 429:
        return True
    names = {cls.__name__ for cls in type(exc).__mro__}
    if any("RateLimit" in name or name == "ResourceExhausted" for name in names):
        return True
    text = str(exc).lower()
    return "rate limit" in text or "rate_limit" in text or "too many requests" in text


def retry_after(exc: BaseException) -> float | None:
    """Seconds from the error's ``Retry-After`` / ``retry-after-ms`` header, if it has one."""
    headers = getattr(getattr(exc, "response", None), "headers", None)
    if headers is None:
        return None
    try:
        if headers.get("retry-after-ms") is not None:
            return min(MAX_RETRY_AFTER, max(0.0, float(headers["retry-after-ms"]) / 1000))
        if headers.get("retry-after") is not None:
            return min(MAX_RETRY_AFTER, max(0.0, float(headers["retry-after"])))
    except (TypeError, ValueError):
        return None  # an HTTP date: fall back to our own backoff
    return None


def backoff(attempt: int, exc: BaseException) -> float:
    """How long to wait before putting a rate-limited prompt back (seconds)."""
    hinted = retry_after(exc)
    if hinted is not None:
        return hinted
    return min(2.0, 0.02 * (2**attempt)) * (0.5 + random.random())


_registry: dict[tuple[Any, ...], AdaptiveLimit] = {}
_registry_lock = threading.Lock()


def provider_key(client: Any) -> tuple[Any, ...] | None:
    """(class, base URL, model) for a client that calls a service; None for in-process ones."""
    base_url = getattr(client, "base_url", None) or getattr(client, "api_base", None)
    if not base_url:
        return None
    return (type(client).__qualname__, str(base_url), getattr(client, "model_name", None))


def limit_for(client: Any) -> AdaptiveLimit:
    """The shared :class:`AdaptiveLimit` of the provider ``client`` calls."""
    key = provider_key(client)
    with _registry_lock:
        if key is None:
            limit = getattr(client, "_rlm_adaptive_limit", None)
            if limit is None:
                limit = AdaptiveLimit()
                try:
                    client._rlm_adaptive_limit = limit
                except AttributeError:
                    pass  # a client that refuses attributes gets a fresh limit each batch
            return limit
        limit = _registry.get(key)
        if limit is None:
            limit = _registry[key] = AdaptiveLimit()
        return limit


def reset() -> None:
    """Forget every provider's learned limit (for tests)."""
    with _registry_lock:
        _registry.clear()
