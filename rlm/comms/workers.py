"""Reusable worker threads for calls that must not block their caller.

``submit(fn)`` runs ``fn()`` on an idle thread of one process-wide pool, or on a new
thread when none is idle, and returns a :class:`concurrent.futures.Future`; ``call(fn,
timeout)`` runs it there and waits for its result (at most ``timeout`` s) without a
future (the hand-off of every ``llm_query`` answered in process). The pool has no cap:
a call its caller gave up on (a deadline, a cancelled run) keeps its thread until it
returns and never delays anyone else's call. A thread idle for :data:`IDLE_SECONDS`
ends, so a quiet process holds none.

A hand-off wakes a thread through its :class:`Wake`: on POSIX a descriptor of that
thread's own (an eventfd on Linux, else a pipe), whose write and blocking read are
system calls made without the GIL. On a busy machine the scheduler often runs the
woken thread at once, on the waker's core; woken through a lock (a futex, under the
GIL), it would then wait for the waker to be scheduled again and release the GIL. A
round trip through descriptors costs about half as much on this project's two-core
test machine under load.

The loop's root-model calls (so that a run can abandon one at ``max_timeout`` or on
cancellation), ``acompletion()``, ``stream()`` and the async calls of clients without a
native async SDK run here (:func:`in_worker` is ``asyncio.to_thread`` without the cap
of the event loop's default executor, ``min(32, CPUs + 4)`` threads): a tree of runs
and many concurrent completions reuse the same few threads instead of starting one
per call.
"""

from __future__ import annotations

import _thread
import asyncio
import contextvars
import functools
import os
import select
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")

#: Seconds a worker waits for the next call before its thread ends.
IDLE_SECONDS = 30.0

#: Wake-ups through a descriptor where poll() exists (an eventfd on Linux, else a pipe).
_FDS = os.name == "posix" and hasattr(select, "poll")
_EVENTFD = _FDS and hasattr(os, "eventfd")
#: At most this many wake-ups hold descriptors at once (one each, two for a pipe); the
#: rest use a raw lock, so thousands of concurrent workers cannot run a process out of
#: descriptors. The hot paths (a loop's thread, its cell's, a few workers) use few.
MAX_FD_WAKES = 32
#: The longest poll() (ms); a longer wait wakes, finds nothing and waits again.
_MAX_MS = float(2**31 - 1)

_fd_wakes = 0
_fd_wakes_lock = threading.Lock()
#: Forks so far in this process's line: a wake made before a fork gives no slot back.
_generation = 0


def _take_fd_slot() -> int | None:
    """A descriptor slot (the generation it counts in), or None when all are in use."""
    global _fd_wakes
    with _fd_wakes_lock:
        if _fd_wakes >= MAX_FD_WAKES:
            return None
        _fd_wakes += 1
        return _generation


def _give_fd_slot(generation: int) -> None:
    global _fd_wakes
    with _fd_wakes_lock:
        if generation == _generation:
            _fd_wakes -= 1


class Wake:
    """One thread's wake-up: :meth:`set` from any thread, :meth:`wait` in the owner.

    Through a descriptor (see the module docstring), or a raw lock where there is no
    poll() or :data:`MAX_FD_WAKES` are in use. A wait may also return for a ``set`` meant
    for an earlier wait that gave up (a timeout, an interrupt): waiters check their own
    condition and wait again. The descriptors are closed when the last reference goes (a
    call that outlives its caller's thread still holds its caller's wake)."""

    __slots__ = ("_read", "_write", "_poll", "_lock", "_slot")

    def __init__(self) -> None:
        self._lock: Any = None
        self._poll: Any = None
        self._read = self._write = -1
        self._slot = _take_fd_slot() if _FDS else None
        if self._slot is not None:
            try:
                if _EVENTFD:
                    self._read = self._write = os.eventfd(0)
                else:
                    self._read, self._write = os.pipe()
                    os.set_blocking(self._write, False)  # a full pipe wakes its reader anyway
                self._poll = select.poll()
                self._poll.register(self._read, select.POLLIN)
                return
            except OSError:  # out of descriptors: a lock will do
                self._close()
        self._lock = _thread.allocate_lock()
        self._lock.acquire()

    def set(self) -> None:
        if self._lock is None:
            try:
                if _EVENTFD:
                    os.eventfd_write(self._write, 1)
                else:
                    os.write(self._write, b"\0")
            except BlockingIOError:
                pass
        elif self._lock.locked():
            try:
                self._lock.release()
            except RuntimeError:  # set twice at once: one wake-up is enough
                pass

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a ``set`` (at most ``timeout`` s); False when none came in time."""
        if self._lock is not None:
            if timeout is None:
                return self._lock.acquire()
            return self._lock.acquire(True, min(max(0.0, timeout), threading.TIMEOUT_MAX))
        if timeout is not None and not self._poll.poll(min(max(0.0, timeout) * 1e3, _MAX_MS)):
            return False
        if _EVENTFD:
            os.eventfd_read(self._read)  # this wake-up and any left over
        else:
            os.read(self._read, 4096)
        return True

    def _close(self) -> None:
        fds = {self._read, self._write} - {-1}
        self._read = self._write = -1
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass
        if self._lock is None and self._slot is not None:
            _give_fd_slot(self._slot)
            self._slot = None

    def __del__(self) -> None:
        if self._lock is None:
            try:
                self._close()
            except Exception:  # at interpreter exit, when the module is already torn down
                pass


_local = threading.local()


def in_pool() -> bool:
    """Whether the calling thread is a worker of a :class:`Workers` pool (what runs there,
    such as a run of ``stream()`` or ``acompletion()``, can be given up by its caller)."""
    return getattr(_local, "pool", False)


def thread_wake() -> Wake:
    """The calling thread's :class:`Wake` (made at its first use, closed with the thread)."""
    wake = getattr(_local, "wake", None)
    if wake is None:
        wake = _local.wake = Wake()
    return wake


def _forget_thread_wakes() -> None:
    """In a forked child: the threads' descriptors are shared with the parent; make new
    ones (the child's copies are closed as the old wakes go)."""
    global _local, _fd_wakes_lock, _fd_wakes, _generation
    _local = threading.local()
    _fd_wakes_lock = threading.Lock()
    _fd_wakes, _generation = 0, _generation + 1  # the parent's wakes count no more


os.register_at_fork(after_in_child=_forget_thread_wakes)


class _Worker:
    """One worker thread: its wake-up and the job handed to it (None while it waits)."""

    __slots__ = ("wake", "job")

    def __init__(self, job: Callable[[], Callable[[], None]]):
        self.wake = Wake()
        self.job: Callable[[], Callable[[], None]] | None = job


class Workers:
    """An elastic pool of daemon threads: see the module docstring."""

    def __init__(self, name: str = "rlm-worker", idle_seconds: float = IDLE_SECONDS):
        self.name = name
        self.idle_seconds = idle_seconds
        self._lock = threading.Lock()
        # Jobs are argument-free callables that never raise (_run, _Call.run); each returns
        # what tells its caller it is done, called once its worker is back among these:
        # workers waiting for a job, the one idle longest first (the last is reused first,
        # so the others can reach their idle timeout).
        self._waiting: list[_Worker] = []
        self._threads = 0
        self._started = 0

    @property
    def threads(self) -> int:
        """Worker threads alive now (busy or idle)."""
        return self._threads

    @property
    def idle(self) -> int:
        """Worker threads waiting for a call now."""
        return len(self._waiting)

    def submit(self, fn: Callable[[], T], copy_context: bool = False) -> Future[T]:
        """Run ``fn()`` on a worker; its result or exception comes back in the future.
        ``copy_context``: run it in a copy of the caller's ``contextvars`` context."""
        future: Future[T] = _Future()
        if copy_context:
            fn = _in_context(contextvars.copy_context(), fn)
        self._start(functools.partial(_run, future, fn))
        return future

    def call(self, fn: Callable[[], T], timeout: float | None = None) -> T:
        """``fn()`` run on a worker while this thread waits, at most ``timeout`` seconds
        (``None``: as long as it takes); then ``TimeoutError``, the call going on where it
        runs. Its exception is raised here. What can interrupt this thread (Ctrl-C in the
        main thread) interrupts only the wait, as with ``submit(fn).result(timeout)``."""
        job = _Call(fn, thread_wake())
        self._start(job.run)
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while not job.finished:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError
            job.wake.wait(left)
        error = job.error
        if error is not None:
            try:
                raise error
            finally:  # no cycle through the traceback's frames
                error = job.error = None
        return job.value  # type: ignore[return-value]

    def _start(self, job: Callable[[], Callable[[], None]]) -> None:
        """Hand ``job`` to a waiting worker, or to a new thread when none waits."""
        with self._lock:
            worker = self._waiting.pop() if self._waiting else None
            if worker is not None:
                worker.job = job
            else:
                self._threads += 1
                self._started += 1
                number = self._started
        if worker is not None:
            worker.wake.set()
            return
        try:
            threading.Thread(
                target=self._work, args=(_Worker(job),), name=f"{self.name}-{number}", daemon=True
            ).start()
        except BaseException:
            with self._lock:
                self._threads -= 1
            raise

    def _work(self, worker: _Worker) -> None:
        _local.pool = True
        while True:
            job, worker.job = worker.job, None
            if job is not None:
                finish = job()
                job = None  # nothing of the call outlives it here
                with self._lock:
                    self._waiting.append(worker)
                # Only now is its caller told: a caller that gets the GIL first and asks
                # again at once finds this worker waiting instead of starting a thread.
                finish()
                del finish
            if worker.job is None and not worker.wake.wait(self.idle_seconds):
                with self._lock:
                    if worker.job is None:  # nobody handed it a job in time: end
                        self._waiting.remove(worker)
                        self._threads -= 1
                        return

    def _forget(self) -> None:
        """In a forked child: the parent's worker threads are not there."""
        self.__init__(self.name, self.idle_seconds)  # type: ignore[misc]


class _Future(Future):
    """The future of :meth:`Workers.submit`: ``result()`` and ``exception()`` wait on the
    waiting thread's :class:`Wake` (a done-callback sets it), not on the condition."""

    def _wait(self, timeout: float | None) -> None:
        if self.done():
            return
        wake = thread_wake()
        self.add_done_callback(lambda _: wake.set())  # at once when it is done by now
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while not self.done():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return
            wake.wait(left)

    def result(self, timeout: float | None = None) -> Any:
        self._wait(timeout)
        return super().result(0)  # TimeoutError when it is not done

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._wait(timeout)
        return super().exception(0)


class _Call:
    """One :meth:`Workers.call`: its function, its outcome, and its caller's wake-up."""

    __slots__ = ("fn", "wake", "finished", "value", "error")

    def __init__(self, fn: Callable[[], Any], wake: Wake):
        self.fn: Callable[[], Any] | None = fn
        self.wake = wake
        self.finished = False
        self.value: Any = None
        self.error: BaseException | None = None

    def run(self) -> Callable[[], None]:
        fn, self.fn = self.fn, None
        try:
            self.value = fn()  # type: ignore[misc]
        except BaseException as exc:  # handed to the caller
            self.error = exc
        return self._finish

    def _finish(self) -> None:
        self.finished = True
        self.wake.set()


def _nothing() -> None:
    pass


def _run(future: Future[Any], fn: Callable[[], Any]) -> Callable[[], None]:
    if not future.set_running_or_notify_cancel():
        return _nothing
    try:
        result = fn()
    except BaseException as exc:  # handed to whoever waits on the future
        return functools.partial(future.set_exception, exc)
    return functools.partial(future.set_result, result)


def _in_context(context: contextvars.Context, fn: Callable[[], T]) -> Callable[[], T]:
    return lambda: context.run(fn)


#: The process-wide pool.
workers = Workers()
os.register_at_fork(after_in_child=workers._forget)


def submit(fn: Callable[[], T], copy_context: bool = False) -> Future[T]:
    """``fn()`` on the process-wide pool (see :class:`Workers`)."""
    return workers.submit(fn, copy_context)


def call(fn: Callable[[], T], timeout: float | None = None) -> T:
    """``fn()`` on the process-wide pool, waited for (see :meth:`Workers.call`)."""
    return workers.call(fn, timeout)


def in_worker(fn: Callable[..., T], /, *args: Any) -> asyncio.Future[T]:
    """``await in_worker(fn, *args)``: ``fn(*args)`` on the process-wide pool in a copy of
    the caller's context, like ``asyncio.to_thread`` but never queued behind the default
    executor's cap. Cancelling the awaiting task does not stop ``fn``. Call it in a running
    event loop."""
    return asyncio.wrap_future(submit(functools.partial(fn, *args), copy_context=True))
