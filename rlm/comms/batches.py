"""How :class:`rlm.comms.lm_handler.LMHandler` runs a batch (``llm_query_batched``).

The prompts run on the handler's long-lived event loop with the clients' async API, at
most ``batch_max_concurrent`` at a time when it is given, else under the provider's
adaptive limit (AIMD, :mod:`rlm.comms.adaptive`), and always under the tree's
:class:`~rlm.comms.limiter.CallLimiter`. A failed item fails only itself; a rate-limited
one is put back after a backoff.

A batch is served by as many worker coroutines as may run at once (the fixed cap, or
the adaptive limit's maximum), each taking the next prompt, not by one task per prompt:
the per-prompt cost is the call itself, its slot and its record.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from rlm.clients.base_lm import Generation, acall_client, close_loop_clients
from rlm.comms import adaptive
from rlm.comms.protocol import LMRequest
from rlm.datatypes import RLMChatCompletion, UsageSummary


def describe(exc: BaseException) -> str:
    """``"Type: message"``, the error text of a failed call."""
    return f"{type(exc).__name__}: {exc}"


def failed(prompt: Any, model: str | None, error: str) -> RLMChatCompletion:
    """The record of a batch item that did not get an answer."""
    return RLMChatCompletion(
        root_model=model or "unknown",
        prompt=prompt,
        response="",
        usage_summary=UsageSummary(),
        execution_time=0.0,
        error=error,
    )


class BatchRunner:
    """The batch side of :class:`~rlm.comms.lm_handler.LMHandler` (a base class of it)."""

    if TYPE_CHECKING:  # LMHandler's attributes
        _loop: asyncio.AbstractEventLoop | None
        _loop_lock: threading.Lock
        _running: bool

        def __getattr__(self, name: str) -> Any: ...

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        with self._loop_lock:
            if not self._running:
                raise RuntimeError("the LM handler is stopped")
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=_run_loop, args=(loop,), name="rlm-lm-batches", daemon=True
                )
                thread.start()
                self._loop, self._loop_thread = loop, thread
            return self._loop

    async def _acall(self, prompt: Any, model: str | None, depth: int) -> RLMChatCompletion:
        client = self.get_client(model, depth)
        limiter = self.limiter
        if limiter is not None:
            await limiter.aacquire()
        try:
            start = time.perf_counter()
            generation: Generation = await acall_client(client, prompt)
        finally:
            if limiter is not None:
                limiter.release()
        return self._completed(prompt, generation, start)

    def _run_batch(self, request: LMRequest, wait: float | None = None) -> list[RLMChatCompletion]:
        """The records of ``request.prompts``, in order. After ``wait`` seconds the batch
        is cancelled and what finished is kept: each prompt still unanswered gets a
        failed record of its own."""
        future, results = self._start_batch(request)
        try:
            return future.result(wait)
        except TimeoutError:
            if future.done():
                raise
            future.cancel()
        error = (
            f"TimeoutError: not answered within the {wait:g} s the caller waits; the "
            "batch's other answers are kept"
        )
        prompts = request.prompts or []
        return [
            record if record is not None else failed(prompt, request.model, error)
            for prompt, record in zip(prompts, list(results), strict=True)
        ]

    def _start_batch(
        self, request: LMRequest
    ) -> tuple[Future[list[RLMChatCompletion]], list[RLMChatCompletion | None]]:
        """The batch started on the batch loop, and the list its records land in."""
        prompts = list(request.prompts or [])
        model, depth = request.model, request.depth
        fixed = self.batch_max_concurrent
        shared = None
        if fixed is None:
            shared = self.batch_limit or adaptive.limit_for(self.get_client(model, depth))
        results: list[RLMChatCompletion | None] = [None] * len(prompts)
        attempt = self._attempt(model, depth)

        async def fixed_worker(items: Iterator[tuple[int, Any]]) -> None:
            for i, prompt in items:
                try:
                    results[i] = await attempt(prompt)
                except Exception as exc:
                    results[i] = failed(prompt, model, describe(exc))

        async def adaptive_worker(items: Iterator[tuple[int, Any]]) -> None:
            assert shared is not None
            for i, prompt in items:
                tries = 0
                while True:
                    started = await shared.acquire()
                    try:
                        result = await attempt(prompt)
                    except Exception as exc:
                        limited = adaptive.is_rate_limit(exc)
                        shared.release(started, ok=False, rate_limited=limited)
                        if limited and tries < adaptive.MAX_RATE_LIMIT_RETRIES:
                            await asyncio.sleep(adaptive.backoff(tries, exc))
                            tries += 1
                            continue
                        results[i] = failed(prompt, model, describe(exc))
                        break
                    except BaseException:
                        shared.release(started, ok=False)
                        raise
                    shared.release(started, ok=result.error is None)
                    results[i] = result
                    break

        async def run_all() -> list[RLMChatCompletion]:
            items = enumerate(prompts)  # shared: each worker takes the next prompt
            width = fixed if fixed is not None else shared.maximum  # type: ignore[union-attr]
            worker = fixed_worker if fixed is not None else adaptive_worker
            count = max(1, min(width, len(prompts)))
            if count == 1:
                await worker(items)
            else:
                await asyncio.gather(*(worker(items) for _ in range(count)))
            return results  # type: ignore[return-value]

        loop = self._event_loop()  # raises first if the handler is stopped
        return asyncio.run_coroutine_threadsafe(run_all(), loop), results

    def _attempt(self, model: str | None, depth: int) -> Callable[[Any], Any]:
        """One batch item: the guard, the call, and its observer (when there is one)."""
        guard = self.guard
        observe = self.call_observer

        async def attempt(prompt: Any) -> RLMChatCompletion:
            if guard is not None:
                refusal = guard(LMRequest(prompt=prompt, model=model, depth=depth))
                if refusal:
                    return failed(prompt, model, refusal)
            if observe is None:
                return await self._acall(prompt, model, depth)
            finished = observe("llm_batch_item", prompt, model)
            try:
                record = await self._acall(prompt, model, depth)
            except Exception as exc:
                finished(None, describe(exc))
                raise
            finished(record)
            return record

        return attempt


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Run the batch loop until stop(); then cancel what is left (waking the serving
    threads waiting on those batches with an error) and close the loop."""
    try:
        loop.run_forever()
    finally:
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(close_loop_clients())  # while their loop still runs
        loop.close()
