"""The sandbox worker: one REPL namespace behind one framed channel.

This program runs inside every isolated environment (a subprocess, a Docker
container, a cloud sandbox). It imports only the standard library, ``repl_core``
and ``rlm_frames`` (the frame codec, :mod:`rlm.comms.frames`), both shipped next to
it, so any ``python3`` can run it; nothing is installed at start. The host side is ``rlm.environments.isolated``.

The channel is the process's stdin (host -> worker) and stdout (worker ->
host), carrying frames of a 4-byte big-endian length followed by UTF-8 JSON
(the LM handler's format). At start the worker moves the channel to private
file descriptors and points fd 0 at /dev/null and fd 1 at stderr, so nothing
model code prints can corrupt the channel. The worker needs no socket: model
calls and custom tools are served by the host, by remote call.

Host -> worker messages (``type``):

* ``init``      ``{max_output_chars, depth, tools: {name: {"callable": bool, "value": v}},
                compaction, ipython}`` (``ipython``: cells are IPython syntax, see
                :class:`IPythonCells`; needs IPython in the sandbox's Python)
* ``context``   ``{index, stream}``: bind ``context_<index>`` (and ``context`` for 0) to the
                value of the streamed transfer that follows (``rlm_frames``); sent once
* ``history``   ``{index, value}``: bind ``history_<index>`` (and ``history`` for 0)
* ``compaction_entry`` ``{value}``: append to the compaction ``history`` list
* ``exec``      ``{id, code, timeout}``: run a cell; answered by ``result``
* ``resolve``   ``{id, name}``: a variable as text (``FINAL_VAR(name)`` lines); answered by
                ``resolved``
* ``reply``     ``{id, value}`` or ``{id, error}``: the answer to one of our ``call`` frames
* ``interrupt`` ``{id}``: stop cell ``id`` (an ``exec``'s id; ids grow from cell to cell).
                One that comes before its cell has started is kept, and that cell is not
                run (its result says ``Interrupted``); one for a cell that has ended is
                ignored, so it never stops the next cell. Without ``id``: the cell that runs
                now, if any
* ``shutdown``  exit

Worker -> host messages: ``ready`` (once, at start), ``result``, ``resolved``,
and ``call`` ``{id, op, args, kwargs}`` where ``op`` is ``llm_query``,
``llm_query_batched``, ``rlm_query``, ``rlm_query_batched`` or ``tool`` (then
``name`` says which host callable).
"""

from __future__ import annotations

import functools
import itertools
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

try:  # inside a sandbox: shipped next to this file
    import repl_core  # type: ignore[import-not-found]
    import rlm_frames  # type: ignore[import-not-found]
except ImportError:  # imported from the installed package (tests, tools)
    from rlm.comms import frames as rlm_frames
    from rlm.environments import repl_core

MAX_FRAME_BYTES = rlm_frames.MAX_FRAME_BYTES
#: The host reads at most this much per frame (rlm.environments.isolated.MAX_WORKER_FRAME_BYTES).
MAX_SEND_BYTES = 128 * 1024 * 1024
SUMMARY_CHARS = 200
#: Longest slice of a sleep in IPython cells: how late a cell that sleeps past its limit
#: is stopped (see :func:`interruptible_sleep`).
SLEEP_SLICE_SECONDS = 0.05
#: How often an interruption is asked again until its cell ends: the first may come
#: while the engine is still setting the cell up, when it would not land (see
#: :meth:`Worker._press`).
PRESS_SECONDS = 0.05
#: The error of a cell whose interruption came before it started (it did not run).
INTERRUPTED_BEFORE_START = "Interrupted: the cell was cancelled before it started."


class Channel:
    """Frames over two file descriptors; writes from many threads are serialised."""

    def __init__(self, fd_in: int, fd_out: int):
        self._in = os.fdopen(fd_in, "rb", buffering=0)
        self._out = os.fdopen(fd_out, "wb", buffering=0)
        self._write_lock = threading.Lock()

    def _read_exact(self, n: int) -> Any:
        return rlm_frames.stream_read_exact(self._in, n)

    def recv(self) -> Any:
        """The next message, or None when the host closed the channel (between frames). A
        message that declares a streamed transfer gets its value from the chunks after it."""
        payload = rlm_frames.read_frame(self._read_exact, MAX_FRAME_BYTES)
        if payload is None:
            return None
        message = rlm_frames.decode_payload(payload)
        if isinstance(message, dict) and "stream" in message:
            del payload
            stream = message.pop("stream")
            message["value"] = rlm_frames.read_stream_value(
                self._read_exact, stream, MAX_FRAME_BYTES
            )
        return message

    def send(self, message: dict[str, Any]) -> None:
        data = rlm_frames.encode_frame(message, MAX_SEND_BYTES, "the host's limit")
        with self._write_lock:
            view = memoryview(data)
            while view:
                written = self._out.write(view)
                view = view[written:]


def summarize(value: Any) -> Any:
    """A short, cheap description of a REPL variable (never walks a large value)."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        if len(value) <= SUMMARY_CHARS:
            return value
        return value[:SUMMARY_CHARS] + f"... [{len(value) - SUMMARY_CHARS:,} more characters]"
    if isinstance(value, (list, tuple, dict, set, frozenset, bytes, bytearray)):
        return f"<{type(value).__name__} of {len(value):,} items>"
    if callable(value):
        return f"<{type(value).__name__} {getattr(value, '__name__', '?')}>"
    return f"<{type(value).__module__}.{type(value).__name__} object>"


def interruptible_sleep(real: Callable[[float], None]) -> Callable[[Any], None]:
    """``time.sleep`` in slices of at most :data:`SLEEP_SLICE_SECONDS`, so that a cell
    stopped at its time limit (by an asynchronous exception, which Python delivers only
    between bytecodes) stops within one slice instead of when the whole sleep is over.
    Same arguments and errors. IPython cells get it: in-process through their ``import
    time``, in a worker process-wide (the process is ours)."""

    @functools.wraps(real)
    def sleep(seconds: Any) -> None:
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            return real(seconds)  # the real one raises TypeError, or accepts __float__ types
        if not seconds > SLEEP_SLICE_SECONDS:  # short, negative (ValueError) or NaN
            return real(seconds)
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            real(min(left, SLEEP_SLICE_SECONDS))

    sleep._rlm_interruptible = True  # type: ignore[attr-defined]
    return sleep


class IPythonCells:
    """IPython syntax for a ``ReplCore``: magics (``%time``, ``%%writefile``...), ``!cmd``
    and ``obj?``, translated by IPython's own input transformer into plain Python that the
    shared engine then runs (same names, final-answer forms, output bounds and time
    limits). ``get_ipython()`` returns a shell whose namespace is the REPL's."""

    def __init__(self, core: Any, ipython_dir: str):
        from IPython.core.interactiveshell import InteractiveShell  # type: ignore[import-not-found]
        from traitlets.config import Config  # type: ignore[import-not-found]

        config = Config()
        config.HistoryManager.enabled = False
        before = set(core.ns)
        shell = InteractiveShell(config=config, user_ns=core.ns, ipython_dir=ipython_dir)
        for name in set(core.ns) - before:  # In, Out, exit, quit, open...: not REPL names
            del core.ns[name]
        core.ns["__builtins__"] = core._builtins_table
        shell.system = self._system
        self.shell = shell
        core.set_helper("get_ipython", lambda: shell)

    def _system(self, cmd: str) -> None:
        """``!cmd``: output into the cell's captured streams (not the process's fd 1)."""
        import subprocess

        proc = subprocess.run(cmd, shell=True, capture_output=True, text=True, errors="replace")
        sys.stdout.write(proc.stdout)
        sys.stderr.write(proc.stderr)
        self.shell.user_ns["_exit_code"] = proc.returncode

    def transform(self, code: str) -> str:
        return self.shell.transform_cell(code)

    @classmethod
    def load(cls, core: Any, ipython_dir: str) -> IPythonCells:
        """Attach IPython; where the sandbox runs ``python -S``, site-packages first."""
        try:
            import IPython  # type: ignore[import-not-found]  # noqa: F401
        except ImportError:
            import site

            site.main()
        return cls(core, ipython_dir)


class Worker:
    """The REPL namespace and the message loop."""

    def __init__(self, channel: Channel):
        self.channel = channel
        self.core: repl_core.ReplCore | None = None
        self.depth = 1
        self._ids = itertools.count(1)
        self._waiting: dict[int, list[Any]] = {}  # call id -> [event, reply]
        self._waiting_lock = threading.Lock()
        self._tasks: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._compaction_history: list[Any] | None = None
        self.ipython: IPythonCells | None = None
        self.ipython_error: str | None = None
        # Interruptions: which exec runs now (its id, and an event set when it ends), the
        # highest exec id started so far, and interrupts for cells that have not started.
        self._cell_lock = threading.Lock()
        self._running_id: Any = None
        self._running_done: threading.Event | None = None
        self._pressed: threading.Event | None = None  # the cell an interrupt presses
        self._last_exec = 0
        self._early: set[int] = set()

    # -- calls to the host -----------------------------------------------------------

    def call(
        self, op: str, args: list[Any], kwargs: dict[str, Any], name: str | None = None
    ) -> Any:
        """Ask the host to run ``op``; returns its value or an ``Error:`` string."""
        call_id = next(self._ids)
        slot: list[Any] = [threading.Event(), None]
        with self._waiting_lock:
            self._waiting[call_id] = slot
        message: dict[str, Any] = {
            "type": "call",
            "id": call_id,
            "op": op,
            "args": args,
            "kwargs": kwargs,
        }
        if name is not None:
            message["name"] = name
        try:
            self.channel.send(message)
            # Short waits: a cell stopped by its time limit must see the async exception.
            while not slot[0].wait(0.05):
                pass
        except (OSError, ValueError) as exc:
            return f"Error: {op} could not reach the host: {type(exc).__name__}: {exc}"
        finally:
            with self._waiting_lock:
                self._waiting.pop(call_id, None)
        reply = slot[1] or {}
        if reply.get("error") is not None:
            return f"Error: {reply['error']}"
        return reply.get("value")

    def _helpers(self) -> dict[str, Any]:
        worker = self

        def llm_query(prompt: Any, model: str | None = None) -> str:
            """Ask a language model one question (no REPL, no recursion); returns its answer."""
            return worker.call("llm_query", [prompt], {"model": model})

        def batched(op: str, doc: str) -> Any:
            def helper(prompts: list[Any], model: str | None = None) -> list[str]:
                if isinstance(prompts, (str, bytes)) or not hasattr(prompts, "__iter__"):
                    return [f"Error: {op} expects a list of prompts, got {type(prompts).__name__}"]
                prompts = list(prompts)
                out = worker.call(op, [prompts], {"model": model})
                return out if isinstance(out, list) else [str(out)] * len(prompts)

            helper.__name__ = helper.__qualname__ = op
            helper.__doc__ = doc
            return helper

        llm_query_batched = batched(
            "llm_query_batched",
            "Ask many questions concurrently; answers come back in the same order.",
        )

        def rlm_query(prompt: Any, model: str | None = None) -> str:
            """Hand a sub-task to a child RLM with its own REPL (a plain model call at the depth cap)."""
            return worker.call("rlm_query", [prompt], {"model": model})

        rlm_query_batched = batched(
            "rlm_query_batched",
            "Run several child RLMs in parallel; answers come back in the same order.",
        )

        return {
            "llm_query": llm_query,
            "llm_query_batched": llm_query_batched,
            "rlm_query": rlm_query,
            "rlm_query_batched": rlm_query_batched,
        }

    def _tool_stub(self, name: str) -> Any:
        worker = self

        def tool(*args: Any, **kwargs: Any) -> Any:
            return worker.call("tool", list(args), kwargs, name=name)

        tool.__name__ = tool.__qualname__ = name
        tool.__doc__ = f"Custom tool {name!r} (runs on the host)."
        return tool

    # -- messages from the host ----------------------------------------------------------

    def _reader(self) -> None:
        """Route replies and interrupts at once; queue everything else for the main thread."""
        try:
            while True:
                message = self.channel.recv()
                if message is None:
                    break
                kind = message.get("type")
                if kind == "reply":
                    with self._waiting_lock:
                        slot = self._waiting.get(message.get("id"))
                    if slot is not None:
                        slot[1] = message
                        slot[0].set()
                elif kind == "interrupt":
                    self._interrupt(message.get("id"))
                else:
                    self._tasks.put(message)
        except Exception as exc:  # a broken frame: report on stderr and stop
            print(f"rlm worker: channel error: {type(exc).__name__}: {exc}", file=sys.stderr)
        finally:
            self._tasks.put(None)
            with self._waiting_lock:
                for slot in self._waiting.values():
                    slot[1] = {"error": "the host closed the channel"}
                    slot[0].set()

    # -- interruptions -----------------------------------------------------------------

    def _interrupt(self, cell_id: Any) -> None:
        """An ``interrupt`` frame (in the reader thread; returns at once): press the cell
        that runs now if it is ``cell_id`` (or ``cell_id`` is None), keep one for a cell
        not started yet, ignore one for a cell that has ended."""
        with self._cell_lock:
            done = self._running_done
            if done is None or (cell_id is not None and cell_id != self._running_id):
                if _is_id(cell_id) and cell_id > self._last_exec:
                    self._early.add(cell_id)  # its exec has not started (or not come)
                return
            if self._pressed is done:
                return  # pressed already
            self._pressed = done
        try:
            threading.Thread(
                target=self._press, args=(done,), name="rlm-worker-interrupt", daemon=True
            ).start()
        except RuntimeError:  # no thread to be had: one try, as before
            with self._cell_lock:
                if self._running_done is done and self.core is not None:
                    self.core.interrupt()

    def _press(self, done: threading.Event) -> None:
        """Interrupt the cell that ``done`` belongs to until it ends. The engine ignores an
        interruption until the cell is set up (between its exec frame and that point it
        would be lost), so it is asked again every :data:`PRESS_SECONDS`; the lock keeps
        every try on this cell, never the next one."""
        while True:
            with self._cell_lock:
                if self._running_done is not done or self.core is None:
                    return
                self.core.interrupt()
            if done.wait(PRESS_SECONDS):
                return

    def _begin_exec(self, cell_id: Any) -> threading.Event | None:
        """The main thread starts exec ``cell_id``: the event its end sets, or None when
        an interrupt for it came first (the cell is not run)."""
        with self._cell_lock:
            if _is_id(cell_id):
                self._last_exec = max(self._last_exec, cell_id)
            early = cell_id in self._early
            self._early = {i for i in self._early if i > self._last_exec}
            if early:
                return None
            self._running_id = cell_id
            self._running_done = done = threading.Event()
        return done

    def _end_exec(self, done: threading.Event) -> None:
        with self._cell_lock:
            self._running_id = self._running_done = None
        done.set()

    def _run_exec(self, message: dict[str, Any]) -> None:
        assert self.core is not None
        done = self._begin_exec(message.get("id"))
        if done is None:
            outcome = repl_core.CellOutcome()
            outcome.error = INTERRUPTED_BEFORE_START
            outcome.stderr = INTERRUPTED_BEFORE_START + "\n"
        else:
            try:
                timeout = message.get("timeout")
                code = str(message.get("code", ""))
                if self.ipython_error is not None:
                    raise RuntimeError(self.ipython_error)
                if self.ipython is not None:
                    code = self.ipython.transform(code)
                outcome = self.core.run_cell(code, timeout)
            finally:
                self._end_exec(done)
        self.channel.send(self._result(message.get("id"), outcome))

    def _init(self, message: dict[str, Any]) -> None:
        self.depth = int(message.get("depth", 1))
        core = repl_core.ReplCore(
            self._helpers(),
            max_output_chars=int(
                message.get("max_output_chars", repl_core.DEFAULT_MAX_OUTPUT_CHARS)
            ),
        )
        for name, spec in (message.get("tools") or {}).items():
            if spec.get("callable"):
                core.install_tool(name, self._tool_stub(name), guard=False)
            else:  # data, or a code string that defines the tool here
                core.install_tool(name, spec.get("value"))
        if message.get("compaction"):
            self._compaction_history = []
            core.set_fixed("history", self._compaction_history)
        self.core = core
        if message.get("ipython"):
            try:
                self.ipython = IPythonCells.load(core, os.path.join(os.getcwd(), ".ipython"))
                if not getattr(time.sleep, "_rlm_interruptible", False):
                    time.sleep = interruptible_sleep(time.sleep)
            except Exception as exc:  # reported by every cell (the host probes at start)
                self.ipython_error = (
                    f"IPython is not available in the worker: {type(exc).__name__}: {exc}"
                )

    def _result(self, call_id: Any, outcome: repl_core.CellOutcome) -> dict[str, Any]:
        assert self.core is not None
        return {
            "type": "result",
            "id": call_id,
            "stdout": outcome.stdout,
            "stderr": outcome.stderr,
            "error": outcome.error,
            "final_answer": outcome.final_answer,
            "final_kind": outcome.final_kind,
            "execution_time": outcome.execution_time,
            "timed_out": outcome.timed_out,
            "abandoned": (outcome.timed_out or str(outcome.error).startswith("Interrupted"))
            and self.core.cell_still_running(),
            "locals": {k: repl_core.loggable(v) for k, v in self.core.cell_locals().items()},
        }

    def handle(self, message: dict[str, Any]) -> bool:
        """Act on one queued message; False to stop."""
        kind = message.get("type")
        if kind == "init":
            self._init(message)
        elif self.core is None:
            raise RuntimeError(f"message {kind!r} before init")
        elif kind == "exec":
            self._run_exec(message)
        elif kind == "context":
            index = int(message["index"])
            self.core.set_fixed(f"context_{index}", message.get("value"))
            if index == 0:
                self.core.set_fixed("context", message.get("value"))
        elif kind == "history":
            index = int(message["index"])
            self.core.set_fixed(f"history_{index}", message.get("value"))
            if index == 0 and self._compaction_history is None:
                self.core.set_fixed("history", message.get("value"))
        elif kind == "compaction_entry":
            if self._compaction_history is not None:
                self._compaction_history.append(message.get("value"))
        elif kind == "resolve":
            value = self.core.resolve_final_var(str(message.get("name", "")))
            self.channel.send({"type": "resolved", "id": message.get("id"), "value": value})
        elif kind == "shutdown":
            return False
        return True

    def serve(self) -> None:
        threading.Thread(target=self._reader, name="rlm-worker-reader", daemon=True).start()
        self.channel.send({"type": "ready", "pid": os.getpid(), "python": sys.version.split()[0]})
        while True:
            message = self._tasks.get()
            if message is None:
                break
            try:
                if not self.handle(message):
                    break
            except Exception as exc:  # e.g. no thread could be started: report, keep serving
                error = f"{type(exc).__name__}: {exc}"
                if message.get("type") == "exec":
                    self.channel.send(
                        {
                            "type": "result",
                            "id": message.get("id"),
                            "stdout": "",
                            "stderr": f"The worker could not run the cell: {error}\n",
                            "error": error,
                            "final_answer": None,
                            "execution_time": 0.0,
                            "timed_out": False,
                            "locals": {},
                        }
                    )
                elif message.get("type") == "resolve":
                    self.channel.send({"type": "resolved", "id": message.get("id"), "value": None})
                else:
                    print(f"rlm worker: {error}", file=sys.stderr)


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def main() -> None:
    """Take over stdin/stdout as the channel and serve until the host says stop."""
    home = os.environ.get("HOME")
    if home and os.path.isdir(home):
        os.chdir(home)
    fd_in, fd_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(2, 1)  # anything written to fd 1 (print, a child process) lands on stderr
    os.close(devnull)
    # Programs started by model code must not inherit the channel.
    os.set_inheritable(fd_in, False)
    os.set_inheritable(fd_out, False)
    Worker(Channel(fd_in, fd_out)).serve()
    sys.stdout.flush()
    os._exit(0)  # abandoned cell threads (blocked in native code) must not keep us alive


if __name__ == "__main__":
    main()
