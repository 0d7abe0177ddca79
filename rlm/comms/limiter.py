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
from typing import Any


class CallLimiter:
    """A fair counting semaphore with a blocking ``acquire`` and an awaitable ``aacquire``."""

    def __init__(self, limit: int):
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self.limit = limit
        self._active = 0
        self._lock = threading.Lock()
        self._waiters: deque[Any] = deque()

    def _take(self) -> bool:
        if self._active < self.limit and not self._waiters:
            self._active += 1
            return True
        return False

    def acquire(self) -> None:
        with self._lock:
            if self._take():
                return
            event = threading.Event()
            self._waiters.append(event)
        try:
            event.wait()
        except BaseException:
            with self._lock:
                try:
                    self._waiters.remove(event)
                    return_slot = False
                except ValueError:
                    return_slot = True  # the slot was handed to us as we were interrupted
            if return_slot:
                self.release()
            raise

    async def aacquire(self) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._take():
                return
            future: asyncio.Future[None] = loop.create_future()
            self._waiters.append((loop, future))
        try:
            await future
        except asyncio.CancelledError:
            with self._lock:
                try:
                    self._waiters.remove((loop, future))
                    return_slot = False
                except ValueError:
                    return_slot = future.done() and not future.cancelled()
            if return_slot:
                self.release()
            raise

    def release(self) -> None:
        with self._lock:
            while self._waiters:
                waiter = self._waiters.popleft()
                if isinstance(waiter, threading.Event):
                    waiter.set()  # the slot passes to this thread; _active is unchanged
                    return
                loop, future = waiter
                if future.cancelled() or loop.is_closed():
                    continue
                loop.call_soon_threadsafe(self._hand_over, future)
                return
            self._active -= 1

    def _hand_over(self, future: asyncio.Future[None]) -> None:
        if future.cancelled():
            self.release()  # the waiter gave up after the slot was sent: pass it on
        else:
            future.set_result(None)

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
