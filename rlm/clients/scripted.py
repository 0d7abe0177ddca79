"""A deterministic, offline language model for tests (ours and yours).

``ScriptedLM`` answers from a script instead of a network:

* ``responses``: a list of strings (replayed in order, per client instance),
  an iterator (consumed across clients, so one script can span several
  ``completion()`` calls), or a callable ``fn(messages) -> str``;
* ``sub_responses``: the same, for sub-calls (``llm_query`` and friends).
  When omitted, sub-calls are answered by ``responses`` too.

A call counts as a *root* call when its first message is a system message
(the RLM loop always sends one); everything else is a sub-call. Usage is
estimated at four characters per token (a history that extends the last one
counted costs only its new messages, so a long run is not quadratic in the
accounting); set ``input_price``/``output_price``
(USD per million tokens) to give calls a cost. ``delay`` (seconds) makes each
call sleep, in the async path without blocking the event loop.

Use it through ``RLM(backend="scripted", backend_kwargs={...})``.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from itertools import repeat
from typing import Any

from rlm.clients.base_lm import BaseLM, Generation, Messages, estimate_message_tokens
from rlm.comms.workers import in_worker
from rlm.utils.token_utils import estimate_tokens

Script = list[str] | Iterator[str] | Callable[[Messages], str]


class ScriptExhaustedError(RuntimeError):
    """The script ran out of responses."""


class _Source:
    def __init__(self, script: Any, label: str):
        self.label = label
        self._lock = threading.Lock()
        self._fn: Callable[[Messages], str] | None = None
        self._iter: Iterator[str] | None = None
        if callable(script) and not isinstance(script, (list, tuple)):
            self._fn = script
        elif isinstance(script, (list, tuple)):
            self._iter = iter(list(script))
        elif isinstance(script, Iterable):
            self._iter = iter(script)
        else:
            raise TypeError(f"{label} must be a list of strings, an iterator or a callable")

    def next(self, messages: Messages) -> str:
        if self._fn is not None:
            return str(self._fn(messages))
        with self._lock:
            try:
                return str(next(self._iter))  # type: ignore[arg-type]
            except StopIteration:
                raise ScriptExhaustedError(f"the scripted LM ran out of {self.label}") from None


#: Histories shorter than this are counted whole (nothing worth remembering).
_INCREMENTAL_FROM = 8


class _InputTokens:
    """``estimate_message_tokens(messages)``, the same numbers, counted incrementally: the
    last history counted is remembered (its contents and its tokens), and a history that
    starts with the same contents (the root loop's, a turn longer each call) counts only
    the messages after them. Contents are compared by value, so a message changed in
    place is counted anew; only histories whose contents are all strings are remembered."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: tuple[list[Any], int] | None = None

    def __call__(self, messages: Messages) -> int:
        if len(messages) < _INCREMENTAL_FROM:
            return estimate_message_tokens(messages)
        try:
            contents = list(map(dict.get, messages, repeat("content"), repeat("")))
        except TypeError:  # not a list of dicts: counted as it is
            return estimate_message_tokens(messages)
        last = self._last  # read once: concurrent calls replace it whole
        start = total = 0
        if last is not None and contents[: len(last[0])] == last[0]:
            start, total = len(last[0]), last[1]
        total += estimate_message_tokens(messages[start:])
        if all(isinstance(content, str) for content in contents[start:]):
            self._last = (contents, total)
        return total


def is_root_call(messages: Messages) -> bool:
    """Whether ``messages`` is a root-model call (it starts with a system message)."""
    return bool(messages) and messages[0].get("role") == "system"


class ScriptedLM(BaseLM):
    """An LM that answers from a script; see the module docstring."""

    is_local = True

    def __init__(
        self,
        responses: Script | None = None,
        sub_responses: Script | None = None,
        model_name: str = "scripted",
        delay: float = 0.0,
        input_price: float | None = None,
        output_price: float | None = None,
        sampling_args: dict[str, Any] | None = None,
        timeout: float | None = None,
    ):
        super().__init__(model_name=model_name, timeout=timeout, sampling_args=sampling_args)
        if responses is None and sub_responses is None:
            raise TypeError("ScriptedLM needs responses= or sub_responses=")
        self._root = _Source(responses, "responses") if responses is not None else None
        self._sub = _Source(sub_responses, "sub_responses") if sub_responses is not None else None
        self.delay = float(delay)
        self.input_price = input_price
        self.output_price = output_price
        self.calls: list[Messages] = []  # every prompt received, for assertions
        self._input_tokens = _InputTokens()

    def _answer(self, messages: Messages, model: str | None) -> Generation:
        self.calls.append(messages)
        source = self._root if is_root_call(messages) else self._sub
        source = source or self._root or self._sub
        assert source is not None
        text = source.next(messages)
        input_tokens = self._input_tokens(messages)
        output_tokens = estimate_tokens(text)
        cost = None
        if self.input_price is not None or self.output_price is not None:
            cost = (
                input_tokens * (self.input_price or 0.0)
                + output_tokens * (self.output_price or 0.0)
            ) / 1_000_000
        return Generation(
            text=text,
            model=model or self.model_name,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost=cost,
        )

    def _generate(self, messages: Messages, model: str | None = None) -> Generation:
        if self.delay:
            time.sleep(self.delay)
        return self._answer(messages, model)

    def _stream(self, messages: Messages, model: str | None, on_token: Any) -> Generation:
        """The scripted answer sent in word-sized pieces (for tests of streaming)."""
        generation = self._generate(messages, model)
        for piece in re.findall(r"\S+\s*|\s+", generation.text):
            on_token(piece)
        return generation

    async def _agenerate(self, messages: Messages, model: str | None = None) -> Generation:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self._is_callable(messages):
            # A user's function may block (sleep, wait, compute): keep it off the event loop.
            return await in_worker(self._answer, messages, model)
        return self._answer(messages, model)

    def _is_callable(self, messages: Messages) -> bool:
        source = (self._root if is_root_call(messages) else self._sub) or self._root or self._sub
        return source is not None and source._fn is not None
