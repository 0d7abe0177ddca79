"""One cap on concurrent model calls, shared by threads and event loops alike.

Every handler in an RLM tree (the root and all its children) shares one
:class:`CallLimiter`, so a wide ``rlm_query_batched`` of wide
``llm_query_batched`` calls never has more than ``limit`` model calls in flight.
Waiters are served first come, first served; a slot is handed directly to the
next waiter on release.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from typing import Any


class SlotWaiters:
    """The queue of threads and event-loop tasks waiting for a slot of a limit, first come,
    first served. A freed slot is handed straight to the next live waiter
    (:meth:`hand_over`), so it is never up for grabs in between.

    ``lock`` is the owner's lock over its count of slots and this queue; ``give_back()``
    returns a slot that reached a waiter who had given up (interrupted, cancelled) by then.
    """

    def __init__(self, lock: threading.Lock, give_back: Callable[[], None]) -> None:
        self._lock = lock
        self._give_back = give_back
        self._queue: deque[Any] = deque()

    def __bool__(self) -> bool:
        return bool(self._queue)

    def wait(self, take: Callable[[], bool]) -> None:
        """Return once this thread has a slot: ``take()`` (called under the lock) takes a
        free one, or the thread waits for one to be handed over."""
        with self._lock:
            if take():
                return
            event = threading.Event()
            self._queue.append(event)
        try:
            event.wait()
        except BaseException:
            self._withdraw(event, handed=True)  # gone from the queue: the slot was set
            raise

    async def wait_async(self, take: Callable[[], bool]) -> None:
        """:meth:`wait` for a task of the running event loop."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if take():
                return
            future: asyncio.Future[None] = loop.create_future()
            self._queue.append((loop, future))
        try:
            await future
        except asyncio.CancelledError:
            # Gone from the queue: the slot was handed over; a cancelled future gets it
            # back from _deliver, a completed one from here.
            self._withdraw((loop, future), handed=future.done() and not future.cancelled())
            raise

    def _withdraw(self, waiter: Any, handed: bool) -> None:
        with self._lock:
            try:
                self._queue.remove(waiter)
                return
            except ValueError:
                pass
        if handed:
            self._give_back()

    def hand_over(self) -> bool:
        """Hand a freed slot to the first waiter still waiting (call with the lock held);
        False when nobody is waiting."""
        while self._queue:
            waiter = self._queue.popleft()
            if isinstance(waiter, threading.Event):
                waiter.set()  # the slot passes to this thread
                return True
            loop, future = waiter
            if future.cancelled() or loop.is_closed():
                continue
            loop.call_soon_threadsafe(self._deliver, future)
            return True
        return False

    def _deliver(self, future: asyncio.Future[None]) -> None:
        if future.cancelled():
            self._give_back()  # the waiter gave up after the slot was sent: pass it on
        else:
            future.set_result(None)


class CallLimiter:
    """A fair counting semaphore with a blocking ``acquire`` and an awaitable ``aacquire``."""

    def __init__(self, limit: int):
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self.limit = limit
        self._active = 0
        self._lock = threading.Lock()
        self._waiters = SlotWaiters(self._lock, self.release)

    def _take(self) -> bool:
        if self._active < self.limit and not self._waiters:
            self._active += 1
            return True
        return False

    def acquire(self) -> None:
        self._waiters.wait(self._take)

    async def aacquire(self) -> None:
        await self._waiters.wait_async(self._take)

    def release(self) -> None:
        with self._lock:
            if not self._waiters.hand_over():  # a handed slot stays counted in _active
                self._active -= 1

    def __enter__(self) -> CallLimiter:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    async def __aenter__(self) -> CallLimiter:
        await self.aacquire()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()
