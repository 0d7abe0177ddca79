"""Reusable worker threads for calls that must not block their caller.

``submit(fn)`` runs ``fn()`` on an idle thread of one process-wide pool, or on a new
thread when none is idle, and returns a :class:`concurrent.futures.Future`. The pool
has no cap: a call its caller gave up on (a deadline, a cancelled run) keeps its thread
until it returns and never delays anyone else's call. A thread idle for
:data:`IDLE_SECONDS` ends, so a quiet process holds none.

The loop's root-model calls (so that a run can abandon one at ``max_timeout`` or on
cancellation), ``acompletion()``, ``stream()`` and the async calls of clients without a
native async SDK run here (:func:`in_worker` is ``asyncio.to_thread``
without the cap of the event loop's default executor, ``min(32, CPUs + 4)`` threads): a tree of runs and many
concurrent completions reuse the same few threads instead of starting one per call.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")

#: Seconds a worker waits for the next call before its thread ends.
IDLE_SECONDS = 30.0


class Workers:
    """An elastic pool of daemon threads: see the module docstring."""

    def __init__(self, name: str = "rlm-worker", idle_seconds: float = IDLE_SECONDS):
        self.name = name
        self.idle_seconds = idle_seconds
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]]] = queue.SimpleQueue()
        # Waiting workers minus queued jobs: a job queued while this is > 0 has a worker.
        self._idle = 0
        self._threads = 0
        self._started = 0

    @property
    def threads(self) -> int:
        """Worker threads alive now (busy or idle)."""
        return self._threads

    @property
    def idle(self) -> int:
        """Worker threads waiting for a call now."""
        return self._idle

    def submit(self, fn: Callable[[], T], copy_context: bool = False) -> Future[T]:
        """Run ``fn()`` on a worker; its result or exception comes back in the future.
        ``copy_context``: run it in a copy of the caller's ``contextvars`` context."""
        future: Future[T] = Future()
        if copy_context:
            fn = _in_context(contextvars.copy_context(), fn)
        job = (future, fn)
        with self._lock:
            if self._idle > 0:
                self._idle -= 1
                self._jobs.put(job)
                return future
            self._threads += 1
            self._started += 1
            number = self._started
        try:
            threading.Thread(
                target=self._work, args=(job,), name=f"{self.name}-{number}", daemon=True
            ).start()
        except BaseException:
            with self._lock:
                self._threads -= 1
            raise
        return future

    def _work(self, job: tuple[Future[Any], Callable[[], Any]] | None) -> None:
        while job is not None:
            _run(*job)
            job = None  # nothing of the call outlives it here
            with self._lock:
                self._idle += 1
            try:
                job = self._jobs.get(timeout=self.idle_seconds)
            except queue.Empty:
                with self._lock:
                    try:
                        job = self._jobs.get_nowait()  # queued just as the wait ended
                    except queue.Empty:
                        self._idle -= 1
                        self._threads -= 1

    def _forget(self) -> None:
        """In a forked child: the parent's worker threads are not there."""
        self.__init__(self.name, self.idle_seconds)  # type: ignore[misc]


def _run(future: Future[Any], fn: Callable[[], Any]) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        result = fn()
    except BaseException as exc:  # handed to whoever waits on the future
        future.set_exception(exc)
    else:
        future.set_result(result)


def _in_context(context: contextvars.Context, fn: Callable[[], T]) -> Callable[[], T]:
    return lambda: context.run(fn)


#: The process-wide pool.
workers = Workers()
os.register_at_fork(after_in_child=workers._forget)


def submit(fn: Callable[[], T], copy_context: bool = False) -> Future[T]:
    """``fn()`` on the process-wide pool (see :class:`Workers`)."""
    return workers.submit(fn, copy_context)


def in_worker(fn: Callable[..., T], /, *args: Any) -> asyncio.Future[T]:
    """``await in_worker(fn, *args)``: ``fn(*args)`` on the process-wide pool in a copy of
    the caller's context, like ``asyncio.to_thread`` but never queued behind the default
    executor's cap. Cancelling the awaiting task does not stop ``fn``. Call it in a running
    event loop."""
    return asyncio.wrap_future(submit(functools.partial(fn, *args), copy_context=True))
