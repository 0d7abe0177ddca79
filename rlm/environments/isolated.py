"""The host side of every isolated environment.

``IsolatedREPL`` drives the worker program (``rlm/environments/worker.py``)
over one framed channel. What differs between sandboxes lives in a small
*transport*: ``start()`` returns a channel to a freshly started ``python3``
that runs :data:`BOOTSTRAP`, ``stop()`` tears everything down, and
``isolation`` says which protection layers are active. A transport for a new
sandbox only starts a process, moves bytes and stops it.

The driver

* ships ``frames.py`` (the codec), ``repl_core.py`` and ``worker.py`` as the first
  frame (the sandbox needs nothing installed: :data:`BOOTSTRAP` loads them from
  that frame);
* sends each context once, as data, streamed in chunks (no whole copy of it on
  either side but the worker's value);
* serves the worker's ``llm_query``/``llm_query_batched``/``rlm_query*`` calls
  by relaying them to the LM handler (``send_lm_request*`` attach the
  handler's token, so the worker never holds it), and runs host-side custom
  tools by remote call;
* enforces each cell's time limit on the host: the worker stops a cell at its
  limit itself; if it does not answer within a grace period (a C call
  holding the interpreter, a crash, a killed process), the worker is killed
  and started again with its contexts and histories, and the result says so.
"""

from __future__ import annotations

import collections
import copy
import itertools
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from rlm.comms import frames
from rlm.comms.frames import FrameTooLargeError, decode_payload, encode_frame, read_frame
from rlm.datatypes import REPLResult
from rlm.environments.base_env import (
    IsolatedEnv,
    accepted_init_kwargs,
    check_init_kwargs,
    parse_custom_tools,
)
from rlm.environments.local_repl import ReplHost, _make_helpers
from rlm.utils.exceptions import ConfigurationError, ProtocolError

_HERE = Path(__file__).resolve().parent

#: The most the bootstrap reads as its first frame (the sources, about 100 KB).
MAX_SOURCES_BYTES = 16 * 1024 * 1024
#: Run with ``python3 -c BOOTSTRAP``: reads the first frame (``{"rlm_frames": source,
#: "repl_core": source, "rlm_worker": source}``) from stdin, its length checked before
#: it is read, loads the three as modules and serves.
BOOTSTRAP = (
    "import sys,json,struct,types\n"
    "r=sys.stdin.buffer\n"
    "n=struct.unpack('>I',r.read(4))[0]\n"
    f"if n>{MAX_SOURCES_BYTES}:sys.exit('rlm bootstrap: first frame too large')\n"
    "m=json.loads(r.read(n))\n"
    "for k in ('rlm_frames','repl_core','rlm_worker'):\n"
    "    mod=types.ModuleType(k);mod.__file__=k+'.py';sys.modules[k]=mod\n"
    "    exec(compile(m[k],k+'.py','exec'),mod.__dict__)\n"
    "sys.modules['rlm_worker'].main()\n"
)

#: Seconds the host waits past a cell's limit for the worker's own answer (the worker
#: spends up to 2 s interrupting the cell) before it kills and restarts the worker.
HOST_GRACE_SECONDS = 5.0
DEFAULT_START_TIMEOUT = 60.0
#: The largest frame the host accepts from a worker; the length is checked before any
#: allocation, and a larger (or malformed) frame ends the channel (the worker is restarted).
MAX_WORKER_FRAME_BYTES = 128 * 1024 * 1024

_sources: dict[str, str] | None = None


def worker_sources() -> dict[str, str]:
    """The three files the sandbox runs, read once from the installed package."""
    global _sources
    if _sources is None:
        _sources = {
            "rlm_frames": Path(frames.__file__).read_text(encoding="utf-8"),
            "repl_core": (_HERE / "repl_core.py").read_text(encoding="utf-8"),
            "rlm_worker": (_HERE / "worker.py").read_text(encoding="utf-8"),
        }
    return _sources


class WorkerError(RuntimeError):
    """The worker could not be started or stopped answering."""


def _check_result(message: Any, kind: str) -> str | None:
    """Why a ``result``/``resolved`` frame is malformed, or None. Model code controls the
    worker process, so every field is checked before the host uses it."""
    if kind == "resolved":
        value = message.get("value")
        if value is not None and not isinstance(value, str):
            return f"'value' is {type(value).__name__}, not a string"
        return None
    for field in ("stdout", "stderr", "error", "final_answer"):
        value = message.get(field)
        if value is not None and not isinstance(value, str):
            return f"'{field}' is {type(value).__name__}, not a string"
    value = message.get("execution_time")
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        return f"'execution_time' is {type(value).__name__}, not a number"
    value = message.get("locals")
    if value is not None and not isinstance(value, dict):
        return f"'locals' is {type(value).__name__}, not an object"
    return None


# ---------------------------------------------------------------------------
# Channels and transports
# ---------------------------------------------------------------------------


class Channel(Protocol):
    """Bytes to and from the worker."""

    def read_exact(self, n: int) -> bytes | None: ...  # None at a clean end of stream

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...


class Transport(Protocol):
    """Starts the worker somewhere and tears it down (see the module docstring)."""

    name: str

    def start(self) -> Channel: ...

    def stop(self) -> None: ...

    def exit_status(self) -> str | None: ...  # how the worker ended, for error messages

    def stderr_tail(self) -> str: ...

    @property
    def isolation(self) -> dict[str, Any]: ...


class StderrTail:
    """The last ``keep`` bytes of a worker's stderr, for error messages."""

    def __init__(self, keep: int = 8192):
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._keep = keep

    def add(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._size += len(chunk)
        while self._size > self._keep and len(self._chunks) > 1:
            self._size -= len(self._chunks.popleft())

    def text(self) -> str:
        return b"".join(self._chunks)[-self._keep :].decode("utf-8", "replace")


class ProcessChannel:
    """A channel over a child process's stdin/stdout pipes; keeps the tail of its stderr."""

    def __init__(self, proc: Any, stderr_keep: int = 8192):
        self.proc = proc
        self._in = proc.stdout
        self._out = proc.stdin
        self._tail = StderrTail(stderr_keep)
        if proc.stderr is not None:
            threading.Thread(target=self._drain, name="rlm-worker-stderr", daemon=True).start()

    def _drain(self) -> None:
        stream = self.proc.stderr
        try:
            while True:
                chunk = stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536)
                if not chunk:
                    break
                self._tail.add(chunk)
        except (OSError, ValueError):
            pass

    def stderr_tail(self) -> str:
        return self._tail.text()

    def read_exact(self, n: int) -> bytes | bytearray | None:
        return frames.stream_read_exact(self._in, n)

    def write(self, data: bytes) -> None:
        self._out.write(data)
        self._out.flush()

    def close(self) -> None:
        for stream in (self._out, self._in):
            try:
                stream.close()
            except (OSError, ValueError):
                pass


def take_exact(buf: bytearray, n: int, what: str) -> bytes | None:
    """Remove and return the first ``n`` bytes of ``buf``, a channel's buffer at the end of
    its stream or holding ``n`` bytes: None for an empty one (a clean end), else a
    ``ConnectionError`` saying that ``what`` ended mid-frame."""
    if len(buf) < n:
        if not buf:
            return None
        raise ConnectionError(f"{what} ended after {len(buf)} of {n} bytes")
    data = bytes(buf[:n])
    del buf[:n]
    return data


def describe_returncode(code: int | None) -> str | None:
    if code is None:
        return None
    if code < 0:
        import signal

        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    if code == 137:
        return "killed (exit status 137: SIGKILL, e.g. out of memory)"
    return f"exit status {code}"


class ProcessTransport:
    """What the transports that run the worker as a local process share: the process,
    its channel, its exit status and its stderr. Subclasses start it and stop it."""

    #: How long exit_status() waits for the process to finish exiting.
    exit_wait = 1.0

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.channel: ProcessChannel | None = None

    def exit_status(self) -> str | None:
        if self.proc is None:
            return None
        try:
            code = self.proc.wait(timeout=self.exit_wait)
        except subprocess.TimeoutExpired:
            return None
        return describe_returncode(code)

    def stderr_tail(self) -> str:
        return self.channel.stderr_tail() if self.channel is not None else ""


# ---------------------------------------------------------------------------
# Cell results
# ---------------------------------------------------------------------------


def _unanswered_cell(dead: str | None, limit: float | None) -> str:
    """The error of a cell the worker never answered: it died, or it hung past the limit."""
    if dead is not None or limit is None:
        cause = dead or "it closed the channel"
        return f"WorkerDied: the worker stopped while running this cell: {cause}."
    return (
        f"TimeoutError: the cell ran longer than its limit of {limit:g} s and the "
        "worker did not stop it (it was blocked outside Python); the worker was killed."
    )


def _failed_cell(error: str, note: str, pending: list[Any], start: float) -> REPLResult:
    """The result of a cell that has no result from the worker: ``error``, then ``note``."""
    return REPLResult(
        stdout="",
        stderr=f"{error}\n" + (f"{note}\n" if note else ""),
        locals={},
        execution_time=time.perf_counter() - start,
        rlm_calls=list(pending),
        final_answer=None,
        error=error,
    )


def _cell_result(
    message: dict[str, Any],
    note: str,
    pending: list[Any],
    limit: float | None,
    restart: Callable[[], str],
) -> REPLResult:
    """A checked ``result`` frame as the cell's result (``note`` first in its stderr). A cell
    the worker could not stop (``abandoned``) gets the worker killed: ``restart()``."""
    stderr = message.get("stderr") or ""
    error = message.get("error")
    if note:
        stderr = note + "\n" + stderr
    abandoned = message.get("abandoned") is True
    if abandoned:
        # The cell did not stop at its limit (it caught the interruption, or sits in
        # native code): a thread would go on burning CPU in the worker. Kill it.
        if str(error).startswith("Interrupted"):
            error = "Interrupted: the cell did not stop when cancelled; the worker was killed."
        else:
            error = (
                f"TimeoutError: the cell ran longer than its limit of {limit or 0:g} s and "
                "did not stop (it caught the interruption or was blocked outside Python); "
                "the worker was killed."
            )
        stderr += f"{error}\n{restart()}\n"
    result = REPLResult(
        stdout=message.get("stdout") or "",
        stderr=stderr,
        locals={} if abandoned else (message.get("locals") or {}),
        execution_time=float(message.get("execution_time") or 0.0),
        rlm_calls=list(pending),
        final_answer=message.get("final_answer"),
        error=error,
    )
    kind = message.get("final_kind")  # which protocol gave final_answer (see repl_core)
    result.final_kind = kind if kind in ("FINAL_VAR", "answer", "FINAL") else None
    return result


# ---------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------


class IsolatedREPL(ReplHost, IsolatedEnv):
    """A REPL whose namespace lives in a worker process reached through a transport.

    Subclasses set ``TRANSPORT`` (or implement ``_make_transport()``); the keyword options
    of the transport's ``__init__`` are options of the REPL too, passed through. Their own
    ``__init__`` takes their other options and passes ``**kwargs`` on to this one (which is
    how options are checked).
    """

    #: Extra fields of the worker's ``init`` message (e.g. ``{"ipython": True}``).
    _WORKER_INIT: dict[str, Any] = {}
    #: What the default ``_make_transport()`` builds, from the options its ``__init__``
    #: declares (less those in ``_TRANSPORT_SUPPLIED``, which the REPL fills in).
    TRANSPORT: Any = None
    _TRANSPORT_SUPPLIED = frozenset({"client", "sdk"})

    @classmethod
    def transport_options(cls) -> set[str]:
        """The options of ``TRANSPORT`` that users pass to this REPL."""
        if cls.TRANSPORT is None:
            return set()
        return accepted_init_kwargs(cls.TRANSPORT) - cls._TRANSPORT_SUPPLIED

    @classmethod
    def check_kwargs(cls, kwargs: dict[str, Any]) -> None:
        """Reject environment_kwargs this environment does not take (at RLM construction)."""
        check_init_kwargs(cls, kwargs, also=cls.transport_options())

    def __init__(self, *, start_timeout: float = DEFAULT_START_TIMEOUT, **kwargs: Any):
        for name, value in (
            ("cell_timeout", kwargs.get("cell_timeout")),
            ("start_timeout", start_timeout),
        ):
            if value is not None and not (isinstance(value, (int, float)) and value > 0):
                raise ConfigurationError(f"{name} must be a positive number, got {value!r}")
        self.start_timeout = start_timeout
        options = self.transport_options()
        self._transport_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in options}
        super().__init__(**kwargs)

    def _open(self) -> None:
        self._helpers = _make_helpers(self._channel)
        self._tools = {t.name: t for t in parse_custom_tools(self.custom_tools)}
        self._contexts: dict[int, Any] = {}
        self._histories: dict[int, Any] = {}
        self._compaction_entries: list[Any] = []
        self._ids = itertools.count(1)
        self._write_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._waiting: dict[int, list[Any]] = {}  # request id -> [event, message]
        self._cell_id: int | None = None  # the exec id of the cell execute_code runs now
        self._interrupted_id: int | None = None  # the last cell interrupt() was called for
        self._pool = ThreadPoolExecutor(
            max_workers=max(4, self.max_concurrent_subcalls) + 2, thread_name_prefix="rlm-isolated"
        )
        self._chan: Channel | None = None
        self._dead: str | None = None  # why the current worker stopped, once it has
        self._ready = threading.Event()
        self.restarts = 0
        self.transport: Transport = self._make_transport()

    # -- to implement ------------------------------------------------------------------

    def _make_transport(self) -> Transport:
        if self.TRANSPORT is None:
            raise NotImplementedError(f"{type(self).__name__} names no TRANSPORT")
        return self.TRANSPORT(**self._transport_kwargs)

    # -- worker lifecycle ------------------------------------------------------------------

    @property
    def isolation(self) -> dict[str, Any]:
        """Which protection layers are active (names -> True/False or a value)."""
        return dict(self.transport.isolation)

    def setup(self) -> None:
        """Start the worker and give it its tools (contexts are sent by ``load_context``)."""
        self._start_worker()

    def _start_worker(self) -> None:
        self._dead = None
        self._ready = threading.Event()
        chan = self.transport.start()
        self._chan = chan
        threading.Thread(
            target=self._reader, args=(chan,), name="rlm-isolated-reader", daemon=True
        ).start()
        self._send(worker_sources())
        if not self._ready.wait(self.start_timeout) or self._dead is not None:
            why = self._dead or f"no answer within {self.start_timeout:g} s"
            tail = self.transport.stderr_tail().strip()
            self.transport.stop()
            raise WorkerError(
                f"The {self.transport.name} worker did not start: {why}"
                + (f"\nworker stderr:\n{tail[-2000:]}" if tail else "")
            )
        tools: dict[str, Any] = {}
        for name, tool in self._tools.items():
            if tool.is_callable:
                tools[name] = {"callable": True}
            else:
                tools[name] = {"callable": False, "value": tool.value}
        self._send(
            {
                "type": "init",
                "depth": self.depth,
                "max_output_chars": self.max_output_chars,
                "tools": tools,
                "compaction": bool(self.compaction),
                **self._WORKER_INIT,
            }
        )
        for index, payload in sorted(self._contexts.items()):
            self._send_context(index, payload)
        for index, payload in sorted(self._histories.items()):
            self._send({"type": "history", "index": index, "value": payload})
        for entry in self._compaction_entries:
            self._send({"type": "compaction_entry", "value": entry})

    def _restart(self) -> str:
        """Kill the worker and start a fresh one; returns a note for the cell's stderr."""
        self._chan = None  # the old reader sees it is stale and leaves the new worker's state alone
        self.transport.stop()
        self.restarts += 1
        try:
            self._start_worker()
        except Exception as exc:
            return f"The worker could not be restarted: {exc}"
        return (
            "The worker was restarted with its contexts and histories; "
            "variables and files created by earlier cells were lost."
        )

    def _send(self, message: dict[str, Any]) -> None:
        self._send_bytes(encode_frame(message))  # the worker reads up to MAX_FRAME_BYTES

    def _send_context(self, index: int, payload: Any) -> None:
        """Send a context as a streamed transfer (:mod:`rlm.comms.frames`): a str is
        encoded to the channel slice by slice, a list or a dict item by item, so no whole
        copy of it is made here. Its size is checked against the worker's cap first."""
        fmt, pieces = frames.stream_pieces(payload)
        total = frames.stream_size(pieces)
        if total > frames.MAX_FRAME_BYTES:  # what the worker reads
            raise FrameTooLargeError(total, frames.MAX_FRAME_BYTES)
        head = encode_frame(
            {"type": "context", "index": index, "stream": {"format": fmt, "bytes": total}}
        )
        chan = self._chan
        if chan is None:
            raise WorkerError("the worker is not running")
        with self._write_lock:  # the chunks follow their header, nothing in between
            chan.write(head)
            try:
                frames.write_stream(chan.write, pieces(), total)
            except ProtocolError as exc:
                # The worker still waits for the declared bytes: the channel is lost.
                self._chan = None
                self.transport.stop()
                raise WorkerError(
                    f"context {index} could not be sent, so the worker was stopped: {exc}"
                ) from exc

    def _send_bytes(self, data: bytes) -> None:
        chan = self._chan
        if chan is None:
            raise WorkerError("the worker is not running")
        with self._write_lock:
            chan.write(data)

    def _try_send(self, message: dict[str, Any]) -> bool:
        try:
            self._send(message)
            return True
        except (OSError, ValueError, WorkerError):  # ValueError: a ProtocolError too
            return False

    def _try_send_bytes(self, data: bytes) -> bool:
        try:
            self._send_bytes(data)
            return True
        except (OSError, ValueError, WorkerError):
            return False

    def _reader(self, chan: Channel) -> None:
        why = "the worker closed its channel"
        try:
            while True:
                # The length is checked before anything is allocated.
                payload = read_frame(chan.read_exact, MAX_WORKER_FRAME_BYTES, "the limit")
                if payload is None:
                    break
                message = decode_payload(payload)
                if not isinstance(message, dict):
                    raise ProtocolError(f"a frame holds a JSON {type(message).__name__}")
                kind = message.get("type")
                if kind == "ready":
                    self._ready.set()
                elif kind == "call":
                    self._pool.submit(self._serve_call, message)
                elif kind in ("result", "resolved"):
                    request_id = message.get("id")
                    if not isinstance(request_id, int) or isinstance(request_id, bool):
                        continue  # not an answer to anything we asked
                    problem = _check_result(message, kind)
                    if problem is not None:
                        message = {"type": kind, "malformed": problem}
                    with self._state_lock:
                        slot = self._waiting.get(request_id)
                    if slot is not None:
                        slot[1] = message
                        slot[0].set()
        except Exception as exc:  # a broken frame or a closed pipe: the worker is unusable
            why = f"the worker channel failed: {type(exc).__name__}: {exc}"
        if self._chan is not chan:
            return  # an old worker's reader, after a restart
        status = self.transport.exit_status()
        self._dead = why + (f" ({status})" if status else "")
        self._ready.set()
        with self._state_lock:
            for slot in self._waiting.values():
                slot[0].set()

    def _serve_call(self, message: dict[str, Any]) -> None:
        op = message.get("op")
        args = message.get("args") or []
        kwargs = message.get("kwargs") or {}
        reply: dict[str, Any] = {"type": "reply", "id": message.get("id")}
        try:
            if not isinstance(args, list) or not isinstance(kwargs, dict):
                raise TypeError("a call needs a list of args and an object of kwargs")
            if op == "tool":
                tool = self._tools.get(str(message.get("name")))
                if tool is None or not tool.is_callable:
                    raise LookupError(f"no host tool named {message.get('name')!r}")
                reply["value"] = tool.value(*args, **kwargs)
            elif op in self._helpers:
                reply["value"] = self._helpers[op](*args, **kwargs)
            else:
                raise LookupError(f"unknown operation {op!r}")
        except Exception as exc:  # becomes an "Error: ..." string in the cell
            label = f"tool {message.get('name')}" if op == "tool" else op
            reply = {
                "type": "reply",
                "id": message.get("id"),
                "error": f"{label} failed: {type(exc).__name__}: {exc}",
            }
        try:
            json.dumps(reply.get("value"))
        except (TypeError, ValueError):
            reply["value"] = repr(reply.get("value"))
        try:
            data = encode_frame(reply)
        except FrameTooLargeError as exc:  # the worker would refuse it: say so instead
            label = f"tool {message.get('name')}" if op == "tool" else op
            data = encode_frame({**reply, "value": None, "error": f"{label} failed: {exc}"})
        self._try_send_bytes(data)

    def _request(
        self, message: dict[str, Any], wait: float | None, request_id: int | None = None
    ) -> dict[str, Any] | None:
        """Send a request with ``request_id`` (default: a fresh id); its answer, or None
        (no answer in time, or dead)."""
        if request_id is None:
            request_id = next(self._ids)
        slot: list[Any] = [threading.Event(), None]
        with self._state_lock:
            self._waiting[request_id] = slot
        try:
            if self._dead is None and self._try_send({**message, "id": request_id}):
                if message.get("type") == "exec":
                    self._resend_interrupt(request_id)
                slot[0].wait(wait)
            return slot[1]
        finally:
            with self._state_lock:
                self._waiting.pop(request_id, None)

    # -- contexts and histories ---------------------------------------------------------------

    def load_context(self, context_payload: Any) -> None:
        self.add_context(context_payload, 0)

    def add_context(self, context_payload: Any, context_index: int | None = None) -> int:
        """Send the payload once, as data, streamed (a str as itself; anything else as
        JSON: tuples become lists, other objects their repr)."""
        index = len(self._contexts) if context_index is None else context_index
        self._contexts[index] = context_payload
        self._send_context(index, context_payload)
        return index

    def get_context_count(self) -> int:
        return len(self._contexts)

    def add_history(
        self, message_history: list[dict[str, Any]], history_index: int | None = None
    ) -> int:
        index = len(self._histories) if history_index is None else history_index
        snapshot = copy.deepcopy(message_history)
        self._histories[index] = snapshot
        self._send({"type": "history", "index": index, "value": snapshot})
        return index

    def get_history_count(self) -> int:
        return len(self._histories)

    def append_compaction_entry(self, entry: Any) -> None:
        if self.compaction:
            entry = copy.deepcopy(entry)
            self._compaction_entries.append(entry)
            self._send({"type": "compaction_entry", "value": entry})

    # -- execution ----------------------------------------------------------------------------

    def execute_code(self, code: str, timeout: float | None = None) -> REPLResult:
        """Run one cell in the worker. ``timeout`` (seconds) overrides ``cell_timeout``."""
        limit, pending = self._begin_cell(timeout)
        cell_id = next(self._ids)
        with self._state_lock:  # from here on, interrupt() stops this cell
            self._cell_id = cell_id
        try:
            return self._execute(code, limit, pending, cell_id)
        finally:
            with self._state_lock:
                self._cell_id = None

    def _execute(
        self, code: str, limit: float | None, pending: list[Any], cell_id: int
    ) -> REPLResult:
        start = time.perf_counter()
        note = ""
        if self._dead is not None:
            note = f"The worker had stopped ({self._dead}). " + self._restart()
        wait = None if limit is None else limit + HOST_GRACE_SECONDS
        message = self._request({"type": "exec", "code": code, "timeout": limit}, wait, cell_id)
        if message is None:
            error = _unanswered_cell(self._dead, limit)
            note = (note + "\n" if note else "") + self._restart()
            return _failed_cell(error, note, pending, start)
        if "malformed" in message:
            error = (
                f"WorkerProtocolError: the worker sent a malformed result ({message['malformed']})"
            )
            return _failed_cell(error, note, pending, start)
        return _cell_result(message, note, pending, limit, self._restart)

    def resolve_final_var(self, name: str) -> str | None:
        if self._closed or self._dead is not None:
            return None
        message = self._request({"type": "resolve", "name": name}, 30.0)
        return None if message is None else message.get("value")  # checked: str or None

    def interrupt(self) -> None:
        """Stop the running cell, if any (from any thread; returns at once).

        The interrupt names the cell (its exec id), so it stops that cell whenever it
        reaches the worker: before the cell has started there (the worker keeps it and
        does not run the cell), while it runs, and never a later cell. It is sent by a
        thread of its own, so it may overtake the exec frame, or go to a worker that is
        being replaced: execute_code sends it again after the exec frame
        (:meth:`_resend_interrupt`)."""
        if self._closed:
            return
        with self._state_lock:
            cell_id = self._cell_id
            if cell_id is None:
                return  # between cells: nothing to stop
            self._interrupted_id = cell_id
        message = {"type": "interrupt", "id": cell_id}
        threading.Thread(target=self._try_send, args=(message,), daemon=True).start()

    def _resend_interrupt(self, cell_id: int) -> None:
        """Right after cell ``cell_id``'s exec frame was sent: if interrupt() was called for
        it already, say so again on this channel (after the exec; the worker takes a cell's
        interrupt once). An interrupt() after this check is sent after the exec frame."""
        with self._state_lock:
            interrupted = self._interrupted_id == cell_id
        if interrupted:
            self._try_send({"type": "interrupt", "id": cell_id})

    def cleanup(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._chan is not None and self._dead is None:
            self._try_send({"type": "shutdown"})
        self._chan = None
        try:
            self.transport.stop()
        finally:
            self._chan = None
            self._pool.shutdown(wait=False, cancel_futures=True)
            with self._state_lock:
                for slot in self._waiting.values():
                    slot[0].set()


def scrubbed_env(home: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """PATH, LANG and HOME only: no API keys or tokens reach the worker."""
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "HOME": home,
        "PYTHONIOENCODING": "utf-8",
    }
    env.update(extra or {})
    return env
