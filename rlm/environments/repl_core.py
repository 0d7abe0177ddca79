"""The REPL engine shared by every environment.

This module imports nothing but the standard library, so the isolated
environments can ship this very file into a sandbox and run the same engine
there. It provides:

* a namespace with notebook semantics: one dict is the cell's globals, so
  assignments made before an exception survive and functions see names
  defined by later cells; the value of a trailing expression is shown;
* output capture that is per REPL and per thread (a process-wide router on
  ``sys.stdout``/``sys.stderr`` plus a namespace-local ``print``), bounded in
  memory (the first ``max_output_chars`` are kept and the cut is announced);
* a per-cell time limit: cells run on the REPL's one cell thread (started at
  the first cell, stopped by :meth:`ReplCore.close`), the caller waits at most
  ``timeout`` seconds, the cell is interrupted by an asynchronous exception
  and, if it sits in native code, abandoned with its thread (the next cell
  gets a fresh one) so the caller is never held; a cell asked for from a
  thread that runs a cell already (a child RLM's) runs inline in that thread,
  with its own limit, interruption and output (see "Running cells" below);
* the final-answer protocols: ``answer["content"]``/``answer["ready"]``
  (also ``answer.update(...)`` and rebinding ``answer`` to a dict), ``FINAL_VAR``
  and ``FINAL`` called in code (``FINAL_VAR`` wins over ``FINAL``); ``answer``
  rebound to something that is not a dict is an ordinary variable (0.1.1 code);
* containment of ``sys.exit()``, ``SystemExit`` and ``KeyboardInterrupt``
  raised by model code;
* optionally a working directory for cells (:func:`enter_workdir`), code-string
  custom tools (:func:`code_tool_source`) and bounded, JSON-able renderings of
  REPL variables for logs (:func:`loggable`).
"""

from __future__ import annotations

import ast
import builtins
import collections
import contextlib
import ctypes
import functools
import io
import linecache
import os
import sys
import textwrap
import threading
import time
import traceback
import types
import weakref
from collections.abc import Callable, Iterator
from typing import Any

DEFAULT_MAX_OUTPUT_CHARS = 4_000_000
#: How often a running cell's new output goes to ``run_cell``'s ``on_output`` (seconds).
LIVE_OUTPUT_SECONDS = 0.1
DISPLAY_REPR_CHARS = 20_000
INTERRUPT_GRACE_SECONDS = 2.0

#: Names the REPL provides and restores after every cell.
SCAFFOLD_NAMES = frozenset(
    {
        "llm_query",
        "llm_query_batched",
        "rlm_query",
        "rlm_query_batched",
        "SHOW_VARS",
        "FINAL_VAR",
        "FINAL",
        "answer",
        "context",
        "history",
    }
)


class CellTimeout(BaseException):
    """Raised inside a cell that ran past its time limit (not an ``Exception``: plain
    ``except Exception`` in model code cannot swallow it)."""


class CellInterrupted(BaseException):
    """Raised inside a cell when its caller was interrupted (Ctrl-C, cancellation)."""


# ---------------------------------------------------------------------------
# Output capture
# ---------------------------------------------------------------------------


class BoundedBuffer(io.TextIOBase):
    """A text sink that keeps the first ``limit`` characters and counts the rest. With
    ``live``, what it keeps is also queued for :meth:`take_live`, in the same order."""

    def __init__(self, limit: int = DEFAULT_MAX_OUTPUT_CHARS, live: bool = False):
        super().__init__()
        self.limit = limit
        self._chunks: list[str] = []
        self._size = 0
        self.dropped = 0
        self._lock = threading.Lock()
        self._live: list[str] | None = [] if live else None

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        with self._lock:
            room = self.limit - self._size
            kept = s if room >= len(s) else s[: max(room, 0)]
            if kept:
                self._chunks.append(kept)
                self._size += len(kept)
                if self._live is not None:
                    self._live.append(kept)
            self.dropped += len(s) - len(kept)
        return len(s)

    def take_live(self) -> str:
        """What was kept since the last call (the whole text so far, in order, across
        calls); empty without ``live``."""
        with self._lock:
            if not self._live:
                return ""
            text = "".join(self._live)
            self._live = []
        return text

    def getvalue(self) -> str:
        with self._lock:
            text = "".join(self._chunks)
            self._chunks = [text] if text else []
            dropped = self.dropped
        if dropped:
            text += f"\n[output truncated: {dropped:,} more characters were cut]\n"
        return text


class _Router(io.TextIOBase):
    """Stands in for ``sys.stdout``/``sys.stderr``: writes from a thread that is running a
    cell go to that cell's buffer; every other write goes to the original stream."""

    def __init__(self, original: Any, slot: str):
        super().__init__()
        self._original = original
        self._slot = slot

    def _target(self) -> Any:
        return getattr(_capture, self._slot, None) or self._original

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        return self._target().write(s)

    def flush(self) -> None:
        target = self._target()
        if hasattr(target, "flush"):
            target.flush()

    def isatty(self) -> bool:
        return getattr(_capture, self._slot, None) is None and self._original.isatty()

    def fileno(self) -> int:
        return self._original.fileno()

    # io.TextIOBase defines these as None; callers of sys.stdout read the real stream's.
    @property
    def encoding(self) -> Any:  # type: ignore[override]
        return getattr(self._original, "encoding", None)

    @property
    def errors(self) -> Any:  # type: ignore[override]
        return getattr(self._original, "errors", None)

    @property
    def newlines(self) -> Any:  # type: ignore[override]
        return getattr(self._original, "newlines", None)

    def __getattr__(self, name: str) -> Any:
        if name in ("_original", "_slot"):  # not set yet: never recurse
            raise AttributeError(name)
        return getattr(self._original, name)


_capture = threading.local()


@contextlib.contextmanager
def uncaptured() -> Iterator[None]:
    """This thread's prints go to the real streams meanwhile, not to the cell that runs on
    it: for work a cell waits on in its own thread (a child run), whose subscribers,
    warnings and log lines are not the cell's output."""
    saved = getattr(_capture, "out", None), getattr(_capture, "err", None)
    _capture.out = _capture.err = None
    try:
        yield
    finally:
        _capture.out, _capture.err = saved


_router_lock = threading.Lock()
_router_users = 0
# Every router ever put in place, by the stream it stands in for, kept alive for good.
# CPython's print() holds sys.stdout as a *borrowed* reference while it writes; if another
# thread swapped the router out and it were freed meanwhile, that print would use freed
# memory (seen as a RecursionError or a segfault). One router per stream, reused.
_routers: dict[tuple[int, str], _Router] = {}


def _router_for(stream: Any, slot: str) -> _Router:
    key = (id(stream), slot)
    router = _routers.get(key)
    if router is None or router._original is not stream:
        router = _routers[key] = _Router(stream, slot)
    return router


def _put_routers() -> None:
    """With ``_router_lock`` held: the routers stand in for ``sys.stdout``/``sys.stderr``."""
    if not isinstance(sys.stdout, _Router):
        sys.stdout = _router_for(sys.stdout, "out")
    if not isinstance(sys.stderr, _Router):
        sys.stderr = _router_for(sys.stderr, "err")


def install_router() -> None:
    """Put the routers in place (again, if someone replaced ``sys.stdout`` since)."""
    with _router_lock:
        _put_routers()


def _acquire_router() -> None:
    """One more running cell: the routers stand in for ``sys.stdout``/``sys.stderr``."""
    global _router_users
    with _router_lock:
        _router_users += 1
        _put_routers()


def _release_router() -> None:
    """One cell fewer; when none runs, the original streams are put back (unless
    someone replaced the routers meanwhile: then their streams stay)."""
    global _router_users
    with _router_lock:
        _router_users = max(0, _router_users - 1)
        if _router_users:
            return
        if isinstance(sys.stdout, _Router):
            sys.stdout = sys.stdout._original
        if isinstance(sys.stderr, _Router):
            sys.stderr = sys.stderr._original


# ---------------------------------------------------------------------------
# Working directory
# ---------------------------------------------------------------------------

# The working directory is one per process. While cells run, it is the directory
# of the cell that started last (a stack: a child run's cell inside its parent's
# cell, then back to the parent's); when no cell runs, the host's directory again.
_cwd_lock = threading.Lock()
_cwd_stack: list[list[Any]] = []  # [token, directory] per running cell, oldest first
_cwd_home: list[str | None] = [None]


def _getcwd() -> str | None:
    try:
        return os.getcwd()
    except OSError:  # the directory was removed
        return None


def _chdir(path: str | None) -> None:
    if path:
        try:
            os.chdir(path)
        except OSError:
            pass


def enter_workdir(path: str) -> object:
    """Make ``path`` the working directory for a cell; returns a token for
    :func:`leave_workdir`. The first cell remembers the host's directory."""
    token = object()
    with _cwd_lock:
        here = _getcwd()
        if not _cwd_stack:
            _cwd_home[0] = here
        else:  # the covered cell resumes where its code had moved to
            _cwd_stack[-1][1] = here or _cwd_stack[-1][1]
        _cwd_stack.append([token, path])
        _chdir(path)
    return token


def leave_workdir(token: object) -> None:
    """The cell of ``token`` ended: back to the directory of the cell below it, or to
    the host's directory when it was the last one (whatever the cell's code did)."""
    with _cwd_lock:
        was_top = bool(_cwd_stack) and _cwd_stack[-1][0] is token
        _cwd_stack[:] = [entry for entry in _cwd_stack if entry[0] is not token]
        if not was_top:
            return
        _chdir(_cwd_stack[-1][1] if _cwd_stack else _cwd_home[0])
        if not _cwd_stack:
            _cwd_home[0] = None


# ---------------------------------------------------------------------------
# Running cells: lanes, cell threads and their supervisors
# ---------------------------------------------------------------------------
#
# A cell runs on a cell thread (the REPL's, started at its first such cell) while its
# caller waits, or *inline*, in the calling thread itself, when that thread is running a
# cell already: a child RLM's cell, asked for by ``rlm_query`` from its parent's cell, or
# from a thread that cell lent to ``rlm_query_batched`` (:func:`lend_thread`). That
# thread would only wait, so a tree of runs holds one cell thread, not one per run.
#
# Every thread that runs cells has a lane: the jobs running on it, outermost first. An
# interruption is an asynchronous exception, raised into a lane only while its top job's
# code runs, never while the engine sets a cell up or tears it down. Stopping a job stops
# what runs on top of it: the exception lands in the innermost cell (and in the threads
# the job's cells lent), and an inline cell that ends while a job under it is being
# stopped raises that job's exception on to its caller, so the stack unwinds into the
# stopped job's code, where the engine catches it.
#
# The thread that waits for a cell thread's job supervises, meanwhile, the inline cells
# nested in it: their time limits, interruptions and live output. It waits anyway, so an
# inline cell costs no watchdog thread.

# A job's states; changed only with _lane_lock held.
_PENDING, _RUNNING, _FINISHED, _CANCELLED = range(4)
#: How often a cell that is being stopped gets its exception again (seconds).
STOP_REPEAT_SECONDS = 0.05

_lane_lock = threading.Lock()


def _raise_in(ident: int, exc_type: type[BaseException]) -> None:
    """Raise ``exc_type`` in thread ``ident`` at its next check for pending events."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(exc_type))


def _checkpoint() -> None:
    """Nothing; a call to it is where Python delivers an exception pending for this thread.
    (Clearing one with ``PyThreadState_SetAsyncExc(id, NULL)`` would leave the
    interpreter's eval breaker set for good on 3.11: every thread slows down.)"""


_latch_guard = threading.Lock()


class _Latch:
    """A one-shot event (``set``, ``is_set``, ``wait``) on one raw lock: a cell's hand-off
    costs less than with ``threading.Event``, whose every wait allocates a lock."""

    __slots__ = ("_lock", "fired")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self.fired = False

    def set(self) -> None:
        with _latch_guard:  # set() may come from two threads
            if self.fired:
                return
            self.fired = True
        self._lock.release()

    def is_set(self) -> bool:
        return self.fired

    def wait(self, timeout: float | None = None) -> bool:
        """True once set; False when ``timeout`` seconds passed first (Ctrl-C interrupts)."""
        if self.fired:
            return True
        if _acquire(self._lock, timeout):
            self._lock.release()  # stays set for every later wait
            return True
        return self.fired


def _acquire(lock: Any, timeout: float | None) -> bool:
    if timeout is None or timeout > threading.TIMEOUT_MAX:
        return bool(lock.acquire())
    if timeout > 0:
        return bool(lock.acquire(True, timeout))
    return bool(lock.acquire(False))


class _Bell:
    """A wake-up call that rings again and again: ``set`` from any thread, ``wait`` in
    the one thread that waits on it (a ring while nobody waits is kept for the next wait).

    The default wake-up of the cell threads and their supervisors; a host can give
    :class:`ReplCore` a cheaper one of the same two methods (``LocalREPL`` gives
    ``rlm.comms.workers.Wake``, a descriptor on Linux)."""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()

    def set(self) -> None:
        try:
            self._lock.release()
        except RuntimeError:  # rung already, not yet heard
            pass

    def wait(self, timeout: float | None = None) -> bool:
        return _acquire(self._lock, timeout)


#: What makes a wake-up: ``set()`` from any thread, ``wait(timeout)`` in one.
WakeFactory = Callable[[], Any]


class _Lane:
    """The jobs running on one thread (outermost first), who supervises them, and the job
    whose cell lent this thread (:func:`lend_thread`), if any."""

    __slots__ = ("ident", "jobs", "supervisor", "lender")

    def __init__(self) -> None:
        self.ident = threading.get_ident()
        self.jobs: list[_Job] = []
        self.supervisor: _Supervisor | None = None
        self.lender: _Job | None = None


_lanes = threading.local()


def _this_lane() -> _Lane:
    lane = getattr(_lanes, "lane", None)
    if lane is None:
        lane = _lanes.lane = _Lane()
    return lane


class _Job:
    """One cell: what to run, its state, the exception it is being stopped with, its lane
    and the lanes its code lent; ``done`` is set when the code is over."""

    __slots__ = ("run", "done", "sup", "state", "stop", "lane", "lent")

    def __init__(self, run: Callable[[], None] | None, sup: _Supervisor):
        self.run = run
        self.done = _Latch()
        self.sup = sup
        self.state = _PENDING
        self.stop: type[BaseException] | None = None
        self.lane: _Lane | None = None
        self.lent: list[_Lane] = []


def _stop(job: _Job, exc_type: type[BaseException]) -> None:
    """With ``_lane_lock`` held: cancel ``job`` if it has not started, else raise
    ``exc_type`` in what runs on top of it (and in the lanes its cells lent)."""
    if job.state == _PENDING:
        job.state = _CANCELLED
        job.stop = exc_type
    elif job.state == _RUNNING and job.lane is not None:
        job.stop = job.stop or exc_type
        _raise_above(job.lane, job.lane.jobs.index(job), exc_type)


def _raise_above(lane: _Lane, start: int, exc_type: type[BaseException]) -> None:
    jobs = lane.jobs
    if jobs and jobs[-1].state == _RUNNING:  # a cell's code runs, not the engine around it
        _raise_in(lane.ident, exc_type)
    for job in jobs[start:]:
        for lent in job.lent:
            _raise_above(lent, 0, exc_type)


def _stop_below(lane: _Lane, index: int) -> type[BaseException] | None:
    """With ``_lane_lock`` held: the exception of the nearest job under position ``index``
    of ``lane`` (then under the lanes' lenders) that is being stopped, or None."""
    while True:
        for job in reversed(lane.jobs[:index]):
            if job.stop is not None and job.state == _RUNNING:
                return job.stop
        lender = lane.lender
        if lender is None or lender.lane is None or lender not in lender.lane.jobs:
            return None
        lane, index = lender.lane, lender.lane.jobs.index(lender) + 1


def _run_job(job: _Job, lane: _Lane, alone: bool = False) -> None:
    """Run ``job``'s code on top of ``lane`` (``alone``: as its only job, on a cell thread),
    once; nothing escapes, and no interruption meant for it is pending when this returns."""
    try:
        with _lane_lock:
            start = job.state == _PENDING
            if start:
                if alone:
                    job.lane, lane.jobs, lane.supervisor = lane, [job], job.sup
                else:  # not when a cell under it is being stopped
                    start = _stop_below(lane, lane.jobs.index(job)) is None
                job.state = _RUNNING if start else _CANCELLED
        if start:
            job.run()  # type: ignore[misc]
    except BaseException:  # an interruption landing in the engine's own lines
        pass
    job.run = None
    while True:
        try:
            with _lane_lock:
                if job.state == _RUNNING:
                    job.state = _FINISHED
                if alone:
                    lane.jobs, lane.supervisor = [], None
            _checkpoint()  # none can be raised from now on; a pending one lands here
            return
        except BaseException:
            pass


class _CellThread:
    """The long-lived thread that runs a :class:`ReplCore`'s cells, one job at a time.

    The thread holds no reference to the core between jobs.
    """

    def __init__(self, wake: WakeFactory = _Bell) -> None:
        self._jobs: collections.deque[_Job | None] = collections.deque()
        self._wake = wake()
        self.thread = threading.Thread(target=self._serve, name="rlm-cell", daemon=True)

    def submit(self, job: _Job) -> None:
        self._jobs.append(job)
        self._wake.set()

    def stop(self) -> None:
        """Exit after the job that runs now, if any (safe to call twice)."""
        self._jobs.append(None)
        self._wake.set()

    def _serve(self) -> None:
        jobs, wake = self._jobs, self._wake
        lane = _this_lane()
        while True:
            while not jobs:
                wake.wait(None)  # may return early (a set meant for an earlier wait)
            job = jobs.popleft()
            if job is None:
                return
            while not job.done.is_set():
                try:
                    self._run(job, lane)  # again after a stray interruption: runs once
                except BaseException:
                    pass
            job = None  # nothing of the cell (nor its core) is held while idle

    @staticmethod
    def _run(job: _Job, lane: _Lane) -> None:
        _run_job(job, lane, alone=True)
        _capture.out = _capture.err = None
        job.done.set()
        job.sup.bell.set()

    @staticmethod
    def stop_job(job: _Job, exc_type: type[BaseException]) -> bool:
        """Interrupt ``job`` repeatedly for a short grace period. True if it stopped (or
        never started)."""
        deadline = time.monotonic() + INTERRUPT_GRACE_SECONDS
        while not job.done.is_set() and time.monotonic() < deadline:
            with _lane_lock:
                _stop(job, exc_type)
            if job.state == _CANCELLED:
                return True
            job.done.wait(STOP_REPEAT_SECONDS)
        return job.done.is_set() or job.state == _CANCELLED


class _CellThreads:
    """A core's cell thread (started at its first cell, and again after a cell it could
    not stop kept the last one) and the threads of such cells."""

    def __init__(self, wake: WakeFactory = _Bell) -> None:
        self._wake = wake
        self._current: _CellThread | None = None
        self._finalizer: Any = None
        self._abandoned: list[threading.Thread] = []
        self._closed = False

    def current(self) -> _CellThread:
        executor = self._current
        if executor is None:
            if self._closed:
                raise RuntimeError("this REPL engine was closed")
            executor = self._current = _CellThread(self._wake)
            # Dropped without close() (its core collected), it still ends its thread.
            self._finalizer = weakref.finalize(self, executor.stop)
            executor.thread.start()
        return executor

    def retire(self, executor: _CellThread) -> None:
        """``executor`` is held by a cell that did not stop: it exits when (if ever) that
        cell ends, and the next cell gets a fresh thread."""
        if self._current is executor:
            self._current = None
            self._finalizer.detach()
        executor.stop()
        self._abandoned.append(executor.thread)

    def still_running(self, wait: float) -> bool:
        alive = []
        for thread in self._abandoned:
            thread.join(wait)
            if thread.is_alive():
                alive.append(thread)
        self._abandoned = alive
        return bool(alive)

    def close(self, wait: float, join: bool) -> None:
        self._closed = True
        executor, self._current = self._current, None
        if executor is None:
            return
        self._finalizer.detach()
        executor.stop()
        if join and executor.thread is not threading.current_thread():
            executor.thread.join(wait)


class _Watch:
    """What a supervisor knows of one cell: its job, its deadline, the stop asked for
    (since when, and when to raise it again) and its live output."""

    __slots__ = (
        "job", "deadline", "stop", "since", "again", "out", "err", "on_output", "next_live",
        "lock", "closed",
    )  # fmt: skip

    def __init__(self, job: _Job) -> None:
        self.job = job
        self.deadline: float | None = None
        self.stop: type[BaseException] | None = None
        self.since = self.again = 0.0
        self.out: BoundedBuffer | None = None
        self.err: BoundedBuffer | None = None
        self.on_output: Callable[[str, str], Any] | None = None
        self.next_live = 0.0
        self.lock = threading.Lock()  # held while on_output runs
        self.closed = False

    def arm(
        self,
        timeout: float | None,
        out: BoundedBuffer,
        err: BoundedBuffer,
        on_output: Callable[[str, str], Any] | None,
    ) -> None:
        now = time.monotonic()
        self.deadline = None if timeout is None else now + timeout
        self.out, self.err, self.on_output = out, err, on_output
        self.next_live = now + LIVE_OUTPUT_SECONDS

    def ask(self, exc_type: type[BaseException], now: float) -> None:
        if self.stop is None:
            self.stop, self.since, self.again = exc_type, now, now

    def service(self, now: float) -> float | None:
        """Raise the stop when it is due; returns when to look again (None: no need)."""
        wake = None
        if self.stop is None and self.deadline is not None:
            if now >= self.deadline:
                self.ask(CellTimeout, now)
            else:
                wake = self.deadline
        if self.stop is not None and self.again:
            if now >= self.again:
                with _lane_lock:
                    _stop(self.job, self.stop)
                    live = self.job.state == _RUNNING
                more = live and now - self.since < INTERRUPT_GRACE_SECONDS
                self.again = now + STOP_REPEAT_SECONDS if more else 0.0
            if self.again:
                wake = self.again if wake is None else min(wake, self.again)
        if self.on_output is not None:
            if now >= self.next_live:
                self.deliver()
                self.next_live = now + LIVE_OUTPUT_SECONDS
            if self.on_output is not None:
                wake = self.next_live if wake is None else min(wake, self.next_live)
        return wake

    def deliver(self) -> None:
        """Hand the output kept since the last call to ``on_output``."""
        with self.lock:
            for stream, buffer in (("stdout", self.out), ("stderr", self.err)):
                text = buffer.take_live() if buffer is not None else ""
                if text and self.on_output is not None and not self.closed:
                    try:
                        self.on_output(stream, text)
                    except Exception:
                        self.on_output = None  # not called again for this cell


class _Supervisor:
    """Watches a cell thread's job from the thread that waits for it, and the inline cells
    nested in that job (:meth:`watch`). When that thread leaves with inline cells still
    running (their cell was abandoned), a thread of its own takes over until they end."""

    def __init__(self, wake: WakeFactory = _Bell) -> None:
        self.bell = wake()
        self.interrupted: _Job | None = None  # the own job, when interrupt() was called
        self._lock = threading.Lock()
        self._watches: list[_Watch] = []
        self._serving = True

    def watch(self, job: _Job) -> _Watch | None:
        """Watch an inline cell; None when nobody supervises any longer."""
        with self._lock:
            if not self._serving:
                return None
            watch = _Watch(job)
            self._watches.append(watch)
        return watch

    def unwatch(self, watch: _Watch) -> None:
        with watch.lock:  # no on_output call is in flight after this
            watch.closed = True
        with self._lock:
            self._watches.remove(watch)
        self.bell.set()  # a thread serving orphans ends when none is left

    def interrupt(self, target: _Job | _Watch) -> None:
        """Stop the own job (``target``, if it is still the one waited for) or the inline
        cell of watch ``target``; returns at once."""
        if isinstance(target, _Job):
            self.interrupted = target
        else:
            with self._lock:
                target.ask(CellInterrupted, time.monotonic())
        self.bell.set()

    def wait(self, job: _Job, timeout: float | None, own: _Watch | None) -> str:
        """Wait for ``job`` ("done"), ``interrupt()`` ("interrupted") or ``timeout``
        seconds ("timeout"), serving the watched cells and ``own``'s live output."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if job.done.is_set():
                return "done"
            if self.interrupted is job:
                return "interrupted"
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return "timeout"
            wake = self._service(now, own)
            if deadline is not None and (wake is None or deadline < wake):
                wake = deadline
            self.bell.wait(None if wake is None else wake - time.monotonic())

    def _service(self, now: float, own: _Watch | None = None) -> float | None:
        if not self._watches and own is None:
            return None
        with self._lock:
            watches = list(self._watches)
        if own is not None:
            watches.append(own)
        wakes = [w for w in (watch.service(now) for watch in watches) if w is not None]
        return min(wakes) if wakes else None

    def leave(self, keep: bool) -> bool:
        """The waiting thread is done with this supervisor. True when it may serve the same
        core's next cell (``keep``: its cell ended, and no inline cell runs); inline cells
        still running (their cell was abandoned) get a thread that serves them until they
        end."""
        with self._lock:
            if not self._watches:
                self.interrupted = None
                self._serving = keep  # else an abandoned cell's later cells get a thread
                return keep
        threading.Thread(target=self._serve_orphans, name="rlm-cell-watch", daemon=True).start()
        return False

    def _serve_orphans(self) -> None:
        while True:
            with self._lock:
                if not self._watches:
                    self._serving = False
                    return
            wake = self._service(time.monotonic())
            self.bell.wait(None if wake is None else wake - time.monotonic())


def lend_thread() -> Callable[[Callable[[], Any]], Callable[[], Any]]:
    """Called from a running cell: a wrapper for work that the cell hands to other threads
    and waits for (``rlm_query_batched``'s children). Cells that work runs (a child's) run
    inline in those threads, supervised with this cell, and stopping this cell stops
    them. Outside a cell, the work is unchanged."""
    lane = _this_lane()
    sup = lane.supervisor
    lender = lane.jobs[-1] if lane.jobs else None
    if sup is None or lender is None:
        return lambda fn: fn

    def wrap(fn: Callable[[], Any]) -> Callable[[], Any]:
        def lent() -> Any:
            mine = _this_lane()
            with _lane_lock:
                mine.lender, mine.supervisor = lender, sup
                lender.lent.append(mine)
            try:
                return fn()
            finally:
                with _lane_lock:
                    lender.lent.remove(mine)
                    mine.lender = mine.supervisor = None

        return lent

    return wrap


def _stopped_note(
    outcome: CellOutcome,
    err: BoundedBuffer,
    how: str,
    timeout: Any,
    stopped: bool,
    late: float | None = None,
) -> None:
    """The text and error of a cell stopped at its limit (``how``: "timeout") or by an
    interruption; ``stopped``: whether it stopped (else it was abandoned); ``late``: the
    seconds an inline cell went on after the stop was raised, past the grace."""
    if how == "timeout":
        outcome.timed_out = True
        note = (
            f"TimeoutError: the cell ran longer than its limit of {timeout:g} s and was stopped."
            if stopped and late is None
            else f"TimeoutError: the cell ran longer than its limit of {timeout:g} s and "
            f"ended {late:.1f} s after it was told to stop (it caught the interruption or sat "
            "in native code)."
            if stopped
            else f"TimeoutError: the cell ran longer than its limit of {timeout:g} s and "
            "did not stop (it caught the interruption or sits in native code); it may still "
            "run in this process, and its later output is discarded."
        )
    else:
        note = (
            "Interrupted: the cell was stopped because the run was cancelled."
            if stopped and late is None
            else "Interrupted: the run was cancelled; the cell ended "
            f"{late:.1f} s after it was told to stop (it caught the interruption or sat in "
            "native code)."
            if stopped
            else "Interrupted: the run was cancelled; the cell did not stop (it caught the "
            "interruption or sits in native code) and may still run in this process; its "
            "later output is discarded."
        )
    err.write(note + "\n")
    outcome.error = note


# ---------------------------------------------------------------------------
# Display helpers
# ---------------------------------------------------------------------------


def bounded_repr(value: Any, limit: int = DISPLAY_REPR_CHARS) -> str:
    """``repr(value)`` without materialising a huge string for huge str/bytes values."""
    if isinstance(value, (str, bytes, bytearray)) and len(value) > limit:
        return f"{value[:limit]!r}... [{len(value) - limit:,} more characters]"
    try:
        text = repr(value)
    except Exception as exc:
        text = f"<unrepresentable {type(value).__name__}: {exc}>"
    if len(text) > limit:
        text = f"{text[:limit]}... [{len(text) - limit:,} more characters]"
    return text


#: Cells whose code objects are kept for a cell of the same text, and the longest text kept.
COMPILED_CACHE_CELLS = 64
COMPILED_CACHE_CHARS = 20_000


def _renamed(code: Any, filename: str) -> Any:
    """``code`` (and the code objects nested in it) with ``co_filename`` ``filename``."""
    if code is None:
        return None
    consts = code.co_consts
    if any(isinstance(c, types.CodeType) for c in consts):
        consts = tuple(
            _renamed(c, filename) if isinstance(c, types.CodeType) else c for c in consts
        )
    return code.replace(co_filename=filename, co_consts=consts)


def format_exception(exc: BaseException, skip_frames: int = 1) -> str:
    """Traceback text without the engine's own frames."""
    tb = exc.__traceback__
    for _ in range(skip_frames):
        if tb is not None:
            tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _is_identifier(text: str) -> bool:
    return text.isidentifier()


# ---------------------------------------------------------------------------
# REPL variables in logs
# ---------------------------------------------------------------------------

#: A variable whose JSON form fits in this many characters is logged as its value.
LOG_VALUE_CHARS = 4_000
#: Nesting deeper than this is not walked: the variable is summarised instead.
LOG_VALUE_DEPTH = 12


class _TooBig(Exception):
    pass


def _leaf_label(value: Any) -> str:
    """rlms' text for values JSON has no form for: modules, callables, other objects."""
    if isinstance(value, type(sys)):
        return f"<module '{value.__name__}'>"
    if callable(value):
        return f"<{type(value).__name__} '{getattr(value, '__name__', '?')}'>"
    return bounded_repr(value, 200)


def _as_json(value: Any, budget: list[int], depth: int) -> Any:
    """A JSON-able copy of ``value``; raises _TooBig once ``budget`` characters are spent."""
    if value is None or isinstance(value, bool):
        budget[0] -= 5
        out: Any = value
    elif isinstance(value, (int, float)):
        try:
            budget[0] -= len(repr(value))
        except ValueError:  # an int too long to print
            raise _TooBig from None
        out = value
    elif isinstance(value, str):
        budget[0] -= len(value) + 2
        out = value
    elif isinstance(value, (dict, list, tuple)):
        if depth >= LOG_VALUE_DEPTH:
            raise _TooBig
        budget[0] -= 2
        if isinstance(value, dict):
            out = {}
            for key, item in value.items():
                if budget[0] < 0:
                    raise _TooBig
                name = key if isinstance(key, str) else str(key)
                budget[0] -= len(name) + 4
                out[name] = _as_json(item, budget, depth + 1)
        else:
            out = []
            for item in value:
                if budget[0] < 0:
                    raise _TooBig
                budget[0] -= 2
                out.append(_as_json(item, budget, depth + 1))
    else:
        out = _leaf_label(value)
        budget[0] -= len(out) + 2
    if budget[0] < 0:
        raise _TooBig
    return out


def loggable(value: Any, limit: int = LOG_VALUE_CHARS) -> Any:
    """How a REPL variable is written to a log: its value when it is JSON data of at most
    about ``limit`` characters (dicts, lists, numbers, strings; tuples become lists, and
    values JSON cannot hold inside them become text, as rlms writes them), else a short
    summary string. Never walks more than ``limit`` items of a large value."""
    if isinstance(value, (str, bytes, bytearray)) and len(value) > limit:
        return f"{value[:200]!r}... [{type(value).__name__} of {len(value):,} characters]"
    try:
        return _as_json(value, [limit], 0)
    except _TooBig:
        pass
    except Exception:  # a container whose iteration fails
        return _leaf_label(value)
    try:
        size = f"{len(value):,} items"
    except Exception:
        size = "large"
    return f"<{type(value).__name__} of {size}>"


# ---------------------------------------------------------------------------
# Custom tools
# ---------------------------------------------------------------------------


def code_tool_source(name: str, value: Any) -> str | None:
    """The source that defines custom tool ``name``, when ``value`` is a code string.

    rlms runs a string tool as code when it looks like code: it starts with ``def``,
    ``class`` or ``lambda``, or spans several lines. Here such a string counts as code
    only if it also parses and binds ``name`` at top level (``def``/``class``/an
    assignment of that name, or one ``lambda`` expression); any other string (a
    multi-line prompt template, say) stays a string value.
    """
    if not isinstance(value, str):
        return None
    text = textwrap.dedent(value).strip()
    if not (text.startswith(("def ", "async def ", "class ", "lambda")) or "\n" in text):
        return None
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return None
    body = tree.body
    if len(body) == 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Lambda):
        return f"{name} = (\n{text}\n)"
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name == name:
                return text
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return text
    return None


def guard_tool(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a custom tool so that an exception becomes an ``Error: ...`` string for the model."""

    @functools.wraps(fn)
    def tool(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            return f"Error: tool {name}() failed: {type(exc).__name__}: {exc}"

    return tool


# ---------------------------------------------------------------------------
# The engine
# ---------------------------------------------------------------------------

_MISSING = object()


class CellOutcome:
    """What one cell did."""

    __slots__ = (
        "stdout",
        "stderr",
        "error",
        "final_answer",
        "final_kind",
        "execution_time",
        "timed_out",
    )

    def __init__(self) -> None:
        self.stdout = ""
        self.stderr = ""
        self.error: str | None = None
        self.final_answer: str | None = None
        #: Which protocol gave ``final_answer``: "FINAL_VAR", "answer" or "FINAL" (the
        #: weakest: a later FINAL_VAR in the same response wins over it, as in 0.1.1).
        self.final_kind: str | None = None
        self.execution_time = 0.0
        self.timed_out = False


#: Which final answer wins when one cell gives several (higher wins; ties: the later call).
FINAL_PRIORITY = {"FINAL": 1, "answer": 2, "FINAL_VAR": 3}


def _fresh_answer() -> dict[str, Any]:
    return {"content": "", "ready": False}


class ReplCore:
    """A persistent namespace that runs cells.

    ``helpers`` maps REPL names (``llm_query``...) to callables; they are put
    in the namespace and restored after every cell, as are ``context`` (to
    ``context_0``) and ``history``. ``answer`` starts as a fresh answer dict and
    gets a fresh one after it was submitted (or deleted). With ``workdir``, cells
    run with that directory as the process's working directory (see
    :func:`enter_workdir`). ``wake`` makes the wake-ups of its cell thread and of the
    thread that waits for it (default :class:`_Bell`, a lock).
    """

    def __init__(
        self,
        helpers: dict[str, Callable[..., Any]] | None = None,
        max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS,
        workdir: str | None = None,
        wake: WakeFactory = _Bell,
    ):
        self.max_output_chars = max_output_chars
        self.workdir = workdir
        self._helpers: dict[str, Any] = dict(helpers or {})
        self._tools: dict[str, Any] = {}  # custom tools as installed (name -> object)
        self._cell_lock = threading.Lock()
        self._cell_counter = 0
        # Code objects of the last cells by their text (see _compile), oldest first.
        self._compiled: dict[str, tuple[Any, Any]] = {}
        self._out: BoundedBuffer | None = None
        self._err: BoundedBuffer | None = None
        self._pending_final: tuple[str, str] | None = None  # (kind, text)
        self._answer_at_end: dict[str, Any] | None = None  # the answer dict as a cell left it
        # Who to ask to stop the running cell: its supervisor, and the cell's job (on a
        # cell thread) or watch (inline); None between cells.
        self._active: tuple[_Supervisor, _Job | _Watch] | None = None
        self._sup: _Supervisor | None = None  # the last cell's, when it can serve the next
        self._wake = wake
        self._threads = _CellThreads(wake)
        self.fixed: dict[str, Any] = {}  # names restored after every cell (context, history...)
        self._builtins_table = self._builtins()
        self.ns: dict[str, Any] = {"__name__": "__main__", "__builtins__": self._builtins_table}
        self._helpers["SHOW_VARS"] = self._make_show_vars()
        self._helpers["FINAL_VAR"] = self._make_final_var()
        self._helpers["FINAL"] = self._make_final()
        self.ns["answer"] = _fresh_answer()
        self.restore_scaffold()

    # -- namespace -------------------------------------------------------------

    def _builtins(self) -> dict[str, Any]:
        table = dict(vars(builtins))
        core = self

        def repl_print(
            *args: Any,
            sep: str | None = " ",
            end: str | None = "\n",
            file: Any = None,
            flush: bool = False,
        ) -> None:
            # The calling thread's cell buffers (a thread the cell started has none).
            if file is None or file is sys.stdout:
                file = getattr(_capture, "out", None) or core._out or sys.stdout
            elif file is sys.stderr:
                file = getattr(_capture, "err", None) or core._err or sys.stderr
            builtins.print(*args, sep=sep, end=end, file=file, flush=flush)

        def repl_input(prompt: Any = "") -> str:
            raise RuntimeError("input() is not available in the REPL: there is no one to type")

        table["print"] = repl_print
        table["input"] = repl_input
        return table

    def set_helper(self, name: str, value: Any) -> None:
        self._helpers[name] = value
        self.ns[name] = value

    def set_fixed(self, name: str, value: Any) -> None:
        """Bind ``name`` now and after every cell (model code cannot rebind it for good)."""
        self.fixed[name] = value
        self.ns[name] = value

    def restore_scaffold(self) -> None:
        self.ns.update(self._helpers)
        self.ns.update(self.fixed)
        # Model code that rebinds __builtins__ (even to another dict) would lose
        # print/len/... for every later cell; the REPL's own table always comes back.
        self.ns["__builtins__"] = self._builtins_table

    def install_tool(self, name: str, value: Any, guard: bool = True) -> str | None:
        """Bind custom tool ``name``: a code string (:func:`code_tool_source`) is run in the
        namespace to define it; a function is wrapped so that its exceptions become
        ``Error:`` strings (``guard``). Returns why a code string failed, or None (the
        name then holds a function that returns that error)."""
        source = code_tool_source(name, value)
        problem = None
        if source is not None:
            try:
                exec(compile(source, f"<custom tool {name}>", "exec"), self.ns)
                value = self.ns[name]
            except Exception as exc:
                problem = f"custom tool {name!r}: its code failed: {type(exc).__name__}: {exc}"
                message = f"Error: {problem}"

                def value(*args: Any, **kwargs: Any) -> str:
                    return message

                value.__name__ = value.__qualname__ = name
            self.ns["__builtins__"] = self._builtins_table
        if guard and callable(value) and not isinstance(value, type) and problem is None:
            value = guard_tool(name, value)
        self._tools[name] = value
        self.ns[name] = value
        return problem

    def _is_scaffold(self, name: str, value: Any) -> bool:
        if name in self._helpers:
            return True
        tool = self._tools.get(name, _MISSING)
        return tool is value and callable(tool)

    def user_variables(self, include_answer: bool = False) -> dict[str, Any]:
        """Names the model created or was given, without the helpers, callable tools and
        private names; ``answer`` only when it is not the answer dict (a 0.1.1 variable),
        or always with ``include_answer``."""
        # One pass with the checks of _is_scaffold inlined: it runs after every cell, over
        # a namespace that may hold thousands of names.
        helpers, tools = self._helpers, self._tools
        return {
            k: v
            for k, v in self.ns.items()
            if not k.startswith("_")
            and k not in helpers
            and (tools.get(k, _MISSING) is not v or not callable(v))
            and (include_answer or k != "answer" or not isinstance(v, dict))
        }

    def cell_locals(self) -> dict[str, Any]:
        """What a cell's result reports as its locals (rlms' ``REPLResult.locals``): the
        user variables and ``answer`` as the cell left it (before a submitted answer
        dict was replaced by a fresh one)."""
        out = self.user_variables(include_answer=True)
        if self._answer_at_end is not None and isinstance(out.get("answer"), dict):
            out["answer"] = self._answer_at_end
        return out

    def _make_show_vars(self) -> Callable[[], str]:
        core = self

        def SHOW_VARS() -> str:  # noqa: N802 - a REPL name
            """List the variables in the REPL with their types."""
            names = {k: type(v).__name__ for k, v in core.user_variables().items()}
            if not names:
                return "No variables yet. Create some in a ```repl``` block."
            return "Variables: " + ", ".join(f"{k} ({t})" for k, t in sorted(names.items()))

        return SHOW_VARS

    def _make_final_var(self) -> Callable[[Any], str]:
        core = self

        def FINAL_VAR(name_or_value: Any) -> str:  # noqa: N802 - a REPL name
            """Submit a variable (by name) or a value as the final answer."""
            if isinstance(name_or_value, str):
                name = name_or_value.strip().strip("\"'")
                if name in core.ns and _is_identifier(name):
                    answer = str(core.ns[name])
                elif _is_identifier(name):
                    known = ", ".join(sorted(core.user_variables())) or "none yet"
                    return (
                        f"Error: FINAL_VAR: no variable named {name!r}. Assign it first "
                        f"(variables: {known})."
                    )
                else:
                    answer = name_or_value  # not a variable name: the text is the answer
            else:
                answer = str(name_or_value)
            core._offer_final("FINAL_VAR", answer)
            return answer

        return FINAL_VAR

    def _make_final(self) -> Callable[[Any], str]:
        core = self

        def FINAL(answer: Any) -> str:  # noqa: N802 - a REPL name
            """Submit ``answer`` (any value, as text) as the final answer; a FINAL_VAR
            in the same cell wins over it."""
            text = str(answer)
            core._offer_final("FINAL", text)
            return text

        return FINAL

    def _offer_final(self, kind: str, text: str) -> None:
        current = self._pending_final
        if current is None or FINAL_PRIORITY[kind] >= FINAL_PRIORITY[current[0]]:
            self._pending_final = (kind, text)

    def resolve_final_var(self, name: str) -> str | None:
        """Value of variable ``name`` as text, or None if it does not exist."""
        name = name.strip().strip("\"'")
        if name in self.ns and _is_identifier(name):
            return str(self.ns[name])
        return None

    def _take_final_answer(self) -> tuple[str | None, str | None]:
        """(text, kind) of the final answer the cell submitted, if any; resets ``answer``."""
        final, self._pending_final = self._pending_final, None
        current = self.ns.get("answer", _MISSING)
        self._answer_at_end = None
        if isinstance(current, dict):
            try:
                ready = bool(current.get("ready"))
            except Exception:
                ready = False
            if ready:
                self._answer_at_end = dict(current)
                offered = ("answer", str(current.get("content", "")))
                if final is None or FINAL_PRIORITY["answer"] > FINAL_PRIORITY[final[0]]:
                    final = offered
                self.ns["answer"] = _fresh_answer()
        elif current is _MISSING:
            self.ns["answer"] = _fresh_answer()
        # Any other value is the model's own variable (0.1.1: answer = llm_query(...)).
        if final is None:
            return None, None
        return final[1], final[0]

    # -- running cells -----------------------------------------------------------

    def _compile(self, code: str) -> tuple[Any, Any]:
        """The cell's code objects: its body, and its last statement apart when that is an
        expression (its value is shown). A cell whose text was compiled before (a model
        that runs a block again) reuses those code objects under its own file name."""
        self._cell_counter += 1
        filename = f"<cell {self._cell_counter}>"
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        compiled = self._compiled.get(code)
        if compiled is not None:
            return _renamed(compiled[0], filename), _renamed(compiled[1], filename)
        tree = ast.parse(code, filename=filename, mode="exec")
        last_expr = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = tree.body.pop()
            last_expr = compile(ast.Expression(last.value), filename, "eval")
        body = compile(tree, filename, "exec")
        if len(code) <= COMPILED_CACHE_CHARS:
            if len(self._compiled) >= COMPILED_CACHE_CELLS:
                del self._compiled[next(iter(self._compiled))]  # the oldest
            self._compiled[code] = (body, last_expr)
        return body, last_expr

    def _execute(
        self, code: str, outcome: CellOutcome, out: BoundedBuffer, err: BoundedBuffer
    ) -> None:
        _capture.out, _capture.err = out, err
        start = time.perf_counter()
        try:
            try:
                body, last_expr = self._compile(code)
            except SyntaxError as exc:
                outcome.error = f"SyntaxError: {exc.msg} (line {exc.lineno})"
                err.write(format_exception(exc, skip_frames=99))
                return
            exec(body, self.ns)
            if last_expr is not None:
                value = eval(last_expr, self.ns)
                if value is not None:
                    out.write(bounded_repr(value) + "\n")
        except CellTimeout:
            outcome.timed_out = True
        except CellInterrupted:
            outcome.error = "Interrupted"
        except SystemExit as exc:
            outcome.error = f"SystemExit: {exc.code!r} (exiting is not allowed in the REPL; the REPL keeps running)"
            err.write(outcome.error + "\n")
        except BaseException as exc:  # model code may raise anything, KeyboardInterrupt included
            outcome.error = f"{type(exc).__name__}: {exc}"
            err.write(format_exception(exc))
        finally:
            outcome.execution_time = time.perf_counter() - start

    def interrupt(self) -> None:
        """Stop the cell that is running now (from any thread; returns at once).

        The cell ends as if its caller had pressed Ctrl-C: its result reports
        ``Interrupted`` and the namespace stays usable. No-op between cells.
        """
        active = self._active
        if active is not None:
            active[0].interrupt(active[1])

    def cell_still_running(self, wait: float = 0.1) -> bool:
        """True when a cell that could not be stopped still runs (it caught the
        interruption, or sits in native code); each is given ``wait`` seconds to end."""
        return self._threads.still_running(wait)

    def close(self, wait: float = 5.0) -> None:
        """Stop the cell thread (an idle one is joined, up to ``wait`` seconds); safe to call
        twice. A cell run after this raises ``RuntimeError``."""
        self._threads.close(wait, join=not self._cell_lock.locked())
        # The kept supervisor's wake-up may hold a descriptor: released now, not when a
        # garbage collection finds the core (its helpers refer back to it).
        self._sup = None

    # -- running cells -------------------------------------------------------------

    def run_cell(
        self,
        code: str,
        timeout: float | None = None,
        on_output: Callable[[str, str], Any] | None = None,
    ) -> CellOutcome:
        """Run ``code``; return at most ``timeout`` (+ a short grace) seconds later (an
        inline cell, which cannot be abandoned, returns when it ends: see below).

        Raises ``KeyboardInterrupt`` to the caller if the caller is interrupted while
        waiting (the cell is stopped first). Nothing the cell does escapes.

        Called from a thread that runs a cell already (a child's cell, asked for from its
        parent's), the cell runs inline, in that thread (see "Running cells" above);
        stopping the cell under it then raises that cell's interruption out of this call.

        ``on_output(stream, text)`` (``"stdout"``/``"stderr"``), when given, gets the
        output the cell wrote while it runs, at most every :data:`LIVE_OUTPUT_SECONDS`,
        never in the cell's thread (what it prints is not captured): in the caller's, or
        for an inline cell in the thread that supervises it; the texts of one stream add
        up to a prefix of the outcome's. What the cell wrote in its last moments is only
        in the outcome. A callback that raises is not called again for this cell.
        """
        lane = _this_lane()
        if lane.supervisor is not None:
            outcome = _inline_cell(self, code, timeout, on_output, lane, lane.supervisor)
            if outcome is not None:
                return outcome
        with self._cell_lock:
            workdir = enter_workdir(self.workdir) if self.workdir else None
            try:
                return self._run_locked(code, timeout, on_output)
            finally:
                if workdir is not None:
                    leave_workdir(workdir)

    def _run_locked(
        self, code: str, timeout: float | None, on_output: Callable[[str, str], Any] | None
    ) -> CellOutcome:
        executor = self._threads.current()
        outcome = CellOutcome()
        out, err = self._buffers(on_output is not None)
        sup, self._sup = self._sup or _Supervisor(self._wake), None
        job = _Job(functools.partial(self._execute, code, outcome, out, err), sup)
        self._active = (sup, job)
        # The routers stand in for sys.stdout/sys.stderr while this call runs. A cell
        # abandoned at its limit keeps sending print() to its discarded buffers, but what
        # it writes to sys.stdout directly after that reaches the real stream.
        _acquire_router()
        try:
            return _wait_cell(self, timeout, outcome, job, executor, on_output)
        finally:
            _release_router()

    def _buffers(self, live: bool) -> tuple[BoundedBuffer, BoundedBuffer]:
        self._out = out = BoundedBuffer(self.max_output_chars, live)
        self._err = err = BoundedBuffer(self.max_output_chars, live)
        return out, err

    def _settle(self, outcome: CellOutcome) -> CellOutcome:
        """The end of a cell: its output, the scaffold back, the final answer taken."""
        out, err = self._out, self._err
        self._out = self._err = None
        outcome.stdout = out.getvalue() if out is not None else ""
        outcome.stderr = err.getvalue() if err is not None else ""
        self.restore_scaffold()
        outcome.final_answer, outcome.final_kind = self._take_final_answer()
        return outcome


def _wait_cell(
    core: ReplCore,
    timeout: float | None,
    outcome: CellOutcome,
    job: _Job,
    executor: _CellThread,
    on_output: Callable[[str, str], Any] | None,
) -> CellOutcome:
    """Hand ``job`` to ``executor`` and wait for it (supervising the inline cells nested
    in it meanwhile); stop it at its limit or when interrupted."""
    start = time.perf_counter()
    out, err = core._out, core._err
    assert out is not None and err is not None
    sup = job.sup
    own = None
    if on_output is not None:
        own = _Watch(job)
        own.arm(None, out, err, on_output)
    try:
        # submit() is inside the try: a Ctrl-C landing right after it must stop the
        # cell too, or it would run on (and hold the GIL) forever.
        executor.submit(job)
        how = sup.wait(job, timeout, own)
    except BaseException:
        stopped = executor.stop_job(job, CellInterrupted)
        if not stopped:
            core._threads.retire(executor)
        core._out = core._err = core._active = None
        core._sup = sup if sup.leave(stopped) else None
        raise
    core._active = None
    stopped = True
    if how != "done":
        stopped = executor.stop_job(job, CellTimeout if how == "timeout" else CellInterrupted)
        _stopped_note(outcome, err, how, timeout, stopped)
        outcome.execution_time = time.perf_counter() - start
    if not stopped:
        core._threads.retire(executor)
    core._sup = sup if sup.leave(stopped) else None  # reused by the next cell
    return core._settle(outcome)


def _inline_cell(
    core: ReplCore,
    code: str,
    timeout: float | None,
    on_output: Callable[[str, str], Any] | None,
    lane: _Lane,
    sup: _Supervisor,
) -> CellOutcome | None:
    """Run a cell of ``core`` in this thread, on top of ``lane``'s jobs, supervised by
    ``sup``; None (nothing done) when ``sup`` supervises no longer."""
    job = _Job(None, sup)
    watch = sup.watch(job)
    if watch is None:
        return None
    stop = None
    try:
        with _lane_lock:
            job.lane = lane
            lane.jobs.append(job)  # from here on, nothing is raised here until it runs
        _checkpoint()  # an interruption raised before lands here, not in the set-up
        with core._cell_lock:
            workdir = enter_workdir(core.workdir) if core.workdir else None
            try:
                return _run_inline(core, code, timeout, on_output, job, watch)
            finally:
                if workdir is not None:
                    leave_workdir(workdir)
    finally:
        sup.unwatch(watch)
        with _lane_lock:
            if job in lane.jobs:
                lane.jobs.remove(job)
            stop = _stop_below(lane, len(lane.jobs))
        if stop is not None:  # a cell under this one is being stopped: on to it
            raise stop()


def _run_inline(
    core: ReplCore,
    code: str,
    timeout: float | None,
    on_output: Callable[[str, str], Any] | None,
    job: _Job,
    watch: _Watch,
) -> CellOutcome:
    outcome = CellOutcome()
    out, err = core._buffers(on_output is not None)
    job.run = functools.partial(core._execute, code, outcome, out, err)
    saved = getattr(_capture, "out", None), getattr(_capture, "err", None)
    watch.arm(timeout, out, err, on_output)
    core._active = (job.sup, watch)
    job.sup.bell.set()  # its deadline may be the next thing to watch
    _acquire_router()
    try:
        _run_job(job, job.lane)  # type: ignore[arg-type]
    finally:
        _capture.out, _capture.err = saved
        core._active = None
        _release_router()
    if job.stop is not None:
        how = "timeout" if job.stop is CellTimeout else "interrupted"
        # An inline cell cannot be abandoned: it ends when it ends, maybe past the grace.
        after = time.monotonic() - watch.since if watch.since else 0.0
        late = after if after > INTERRUPT_GRACE_SECONDS else None
        _stopped_note(outcome, err, how, timeout, True, late)
    return core._settle(outcome)
