"""The public entry points of an RLM: ``completion``, ``acompletion``, ``stream`` and
``astream`` (each with an optional ``response_format``), and rlms' private seams.

:class:`CompletionAPI` is a base class of :class:`rlm.core.rlm.RLM`; each entry point
starts a run and hands it to the loop (``RLM._completion``), in this thread, on a worker
thread (``acompletion``; :mod:`rlm.comms.workers`), or on a worker thread whose events feed
an iterator (``stream``).
"""

from __future__ import annotations

import asyncio
import queue
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent import futures
from concurrent.futures import Future
from typing import Any, TypeVar, overload

from rlm.comms import workers
from rlm.core import events as ev
from rlm.core import ledger
from rlm.core.run import Run
from rlm.datatypes import RLMChatCompletion, RLMIteration, StructuredCompletion
from rlm.utils.structured import StructuredAnswer

#: The Pydantic model class of a ``response_format`` (for the typed result).
_ModelT = TypeVar("_ModelT")


#: What ``response_format`` accepts: a Pydantic model class, a JSON Schema, or None.
ResponseFormat = type[Any] | dict[str, Any] | None


class CompletionAPI:
    """``completion()`` and its siblings; the loop they run is ``RLM._completion``."""

    #: How many answers that do not match ``response_format`` go back to the model (with
    #: the validation message) before the run ends with ``StructuredOutputError``; the
    #: ``response_format_retries`` keyword of ``completion()`` overrides it for one call.
    response_format_retries: int = 2

    def _check_timeout(self, iteration: int, time_start: float) -> None:
        """rlms' seam: raise TimeoutExceededError when ``max_timeout`` has passed since
        ``time_start`` (a ``time.perf_counter()`` value)."""
        if self.max_timeout is None:
            return
        run = self._new_run()
        run.start, run.deadline = time_start, time_start + self.max_timeout
        ledger.check_time(run, f"after iteration {iteration}")

    def _check_iteration_limits(
        self, iteration: RLMIteration, iteration_num: int, lm_handler: Any
    ) -> None:
        """rlms' seam: the after-iteration checks (errors, budget, tokens) with the state
        kept on this RLM; ``iteration_num`` is 0-based as in rlms."""
        if self._compat_run is None:
            self._compat_run = self._new_run()
        ledger.check_after_iteration(self._compat_run, iteration, iteration_num + 1, lm_handler)

    @property
    def _consecutive_errors(self) -> int:
        return self._compat_run.consecutive_errors if self._compat_run is not None else 0

    @overload
    def completion(
        self,
        prompt: Any,
        root_prompt: str | None = None,
        *,
        response_format: type[_ModelT],
        response_format_retries: int | None = None,
    ) -> StructuredCompletion[_ModelT]: ...

    @overload
    def completion(
        self,
        prompt: Any,
        root_prompt: str | None,
        response_format: type[_ModelT],
        *,
        response_format_retries: int | None = None,
    ) -> StructuredCompletion[_ModelT]: ...

    @overload
    def completion(
        self,
        prompt: Any,
        root_prompt: str | None = None,
        *,
        response_format: dict[str, Any],
        response_format_retries: int | None = None,
    ) -> StructuredCompletion[dict[str, Any]]: ...

    @overload
    def completion(
        self,
        prompt: Any,
        root_prompt: str | None,
        response_format: dict[str, Any],
        *,
        response_format_retries: int | None = None,
    ) -> StructuredCompletion[dict[str, Any]]: ...

    @overload
    def completion(
        self,
        prompt: Any,
        root_prompt: str | None = None,
        response_format: None = None,
        *,
        response_format_retries: int | None = None,
    ) -> RLMChatCompletion: ...

    def completion(
        self,
        prompt: Any,
        root_prompt: str | None = None,
        response_format: ResponseFormat = None,
        *,
        response_format_retries: int | None = None,
    ) -> RLMChatCompletion:
        """Answer ``prompt`` (any size; str, list, dict...) by running the RLM loop.

        ``root_prompt`` is an optional short question the root model sees
        directly (the context itself is only reachable through the REPL).
        ``response_format`` (a Pydantic model class or a JSON Schema dict) asks for a
        structured answer: the model is told the schema, its answer is validated and sent
        back with the validation message when invalid (at most
        ``response_format_retries`` times, default ``RLM.response_format_retries`` = 2),
        and the result is a ``StructuredCompletion`` whose ``parsed`` is the validated
        object (``response`` stays the JSON text).
        Raises a limit error (with ``partial_answer``) when a limit stops the
        run, ``CancellationError`` on Ctrl-C, ``StructuredOutputError`` when the answer
        never matched ``response_format``, and ``ConfigurationError`` for a
        ``response_format`` that is neither a model class nor a schema.
        """
        structured = self._structured(response_format, response_format_retries)
        run = self._new_run()
        self._completion_start_time = run.start
        return self._completion(prompt, root_prompt, run, structured=structured)

    @overload
    async def acompletion(
        self,
        prompt: Any,
        root_prompt: str | None = None,
        *,
        response_format: type[_ModelT],
        response_format_retries: int | None = None,
    ) -> StructuredCompletion[_ModelT]: ...

    @overload
    async def acompletion(
        self,
        prompt: Any,
        root_prompt: str | None,
        response_format: type[_ModelT],
        *,
        response_format_retries: int | None = None,
    ) -> StructuredCompletion[_ModelT]: ...

    @overload
    async def acompletion(
        self,
        prompt: Any,
        root_prompt: str | None = None,
        *,
        response_format: dict[str, Any],
        response_format_retries: int | None = None,
    ) -> StructuredCompletion[dict[str, Any]]: ...

    @overload
    async def acompletion(
        self,
        prompt: Any,
        root_prompt: str | None,
        response_format: dict[str, Any],
        *,
        response_format_retries: int | None = None,
    ) -> StructuredCompletion[dict[str, Any]]: ...

    @overload
    async def acompletion(
        self,
        prompt: Any,
        root_prompt: str | None = None,
        response_format: None = None,
        *,
        response_format_retries: int | None = None,
    ) -> RLMChatCompletion: ...

    async def acompletion(
        self,
        prompt: Any,
        root_prompt: str | None = None,
        response_format: ResponseFormat = None,
        *,
        response_format_retries: int | None = None,
    ) -> RLMChatCompletion:
        """``completion()`` without blocking the event loop; cancelling the task cancels the run."""
        structured = self._structured(response_format, response_format_retries)
        run = self._new_run()
        self._completion_start_time = run.start
        # On a reused worker thread, not the event loop's default executor (whose
        # min(32, CPUs + 4) threads would cap how many completions run at once).
        done = workers.submit(
            lambda: self._completion(prompt, root_prompt, run, structured=structured),
            copy_context=True,
        )
        task = asyncio.wrap_future(done)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            run.cancel()
            # The run ends with CancellationError in its thread; nobody awaits it any more.
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            # asyncio.run() still returns only once the run has ended, as it did when the run
            # was on the default executor: one of its threads waits for it (cancelled runs).
            asyncio.get_running_loop().run_in_executor(None, futures.wait, [done])
            raise

    def stream(
        self,
        prompt: Any,
        root_prompt: str | None = None,
        response_format: ResponseFormat = None,
        *,
        response_format_retries: int | None = None,
    ) -> Iterator[ev.Event]:
        """The run of ``completion(prompt, root_prompt)`` as its events (``rlm.core.events``),
        children's included, in order. The last is the root's ``RunFinished``, whose
        ``result`` is the ``RLMChatCompletion``; a run stopped by a limit yields
        ``LimitStopped`` and ``RunFinished(error=...)`` and then raises what ``completion()``
        raises. Closing the iterator early cancels the run. ``response_format`` works as in
        ``completion()``."""
        structured = self._structured(response_format, response_format_retries)
        events: queue.SimpleQueue[Any] = queue.SimpleQueue()
        run, done = self._start_streamed(prompt, root_prompt, events.put, structured)
        try:
            while True:
                item = events.get()
                if item is _END:
                    break
                yield item
        finally:
            if not done.done():
                run.cancel()
        done.result()  # the run's exception, if it raised

    async def astream(
        self,
        prompt: Any,
        root_prompt: str | None = None,
        response_format: ResponseFormat = None,
        *,
        response_format_retries: int | None = None,
    ) -> AsyncIterator[ev.Event]:
        """``stream()`` as an async iterator; cancelling or closing it cancels the run."""
        structured = self._structured(response_format, response_format_retries)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Any] = asyncio.Queue()

        def put(item: Any) -> None:
            loop.call_soon_threadsafe(events.put_nowait, item)

        run, done = self._start_streamed(prompt, root_prompt, put, structured)
        try:
            while True:
                item = await events.get()
                if item is _END:
                    break
                yield item
        finally:
            if not done.done():
                run.cancel()
        await asyncio.wrap_future(done)  # the run's exception, if it raised

    def _start_streamed(
        self,
        prompt: Any,
        root_prompt: str | None,
        put: Callable[[Any], None],
        structured: StructuredAnswer | None = None,
    ) -> tuple[Run, Future[RLMChatCompletion]]:
        """Start a run on a worker thread whose every event (and then ``_END``) goes to
        ``put``; the future is done (with the result or the run's exception) after ``_END``."""
        run = self._new_run()
        run.tree.subscribers.append(_QueueSubscriber(put))
        self._completion_start_time = run.start

        def work() -> RLMChatCompletion:
            try:
                return self._completion(prompt, root_prompt, run, structured=structured)
            finally:
                put(_END)

        return run, workers.submit(work, copy_context=True)

    def _structured(
        self, response_format: ResponseFormat, retries: int | None
    ) -> StructuredAnswer | None:
        """One call's ``response_format`` (checked now: ConfigurationError), or None."""
        if response_format is None:
            return None
        if retries is None:
            retries = self.response_format_retries
        return StructuredAnswer(response_format, retries)

    def batch(self, items: Any, output: Any = None, **kwargs: Any) -> Any:
        """Run this RLM's settings over a dataset (``rlm.batch.batch``): ``items`` is a
        JSON-lines path or an iterable of item dicts, ``output`` a JSON-lines path that makes
        it resumable; returns the ``BatchSummary``. See docs/batch.md."""
        from rlm.batch import batch

        return batch(items, output, rlm=self, **kwargs)

    async def abatch(self, items: Any, output: Any = None, **kwargs: Any) -> Any:
        """``batch()`` as a coroutine (``rlm.batch.abatch``)."""
        from rlm.batch import abatch

        return await abatch(items, output, rlm=self, **kwargs)


#: The end of a streamed run (after its last event).
_END = object()


def _with_parsed(result: RLMChatCompletion, parsed: Any) -> StructuredCompletion[Any]:
    """``result`` as a ``StructuredCompletion`` carrying ``parsed``."""
    fields = {name: getattr(result, name) for name in result.__dataclass_fields__}
    fields["parsed"] = parsed
    return StructuredCompletion(**fields)


def _structured_result(
    structured: StructuredAnswer, result: RLMChatCompletion
) -> StructuredCompletion[Any]:
    """A plain call's answer (an RLM at its depth cap) checked against ``response_format``."""
    parsed, text = structured.last_chance(result.response)
    result.response = text
    return _with_parsed(result, parsed)


class _QueueSubscriber:
    """Feeds a stream's queue; wants root tokens and a running cell's output."""

    wants_tokens = True
    wants_live_output = True

    def __init__(self, put: Callable[[Any], None]):
        self.put = put

    def __call__(self, event: ev.Event) -> None:
        self.put(event)
