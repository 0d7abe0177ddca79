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
* a per-cell time limit: the cell runs in its own thread, the caller waits at
  most ``timeout`` seconds, the cell is interrupted by an asynchronous
  exception and, if it sits in native code, abandoned so the caller is never
  held;
* the final-answer protocols: ``answer["content"]``/``answer["ready"]``
  (also ``answer.update(...)`` and rebinding ``answer``), and ``FINAL_VAR``;
* containment of ``sys.exit()``, ``SystemExit`` and ``KeyboardInterrupt``
  raised by model code.
"""

from __future__ import annotations

import ast
import builtins
import ctypes
import io
import linecache
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

DEFAULT_MAX_OUTPUT_CHARS = 4_000_000
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
    """A text sink that keeps the first ``limit`` characters and counts the rest."""

    def __init__(self, limit: int = DEFAULT_MAX_OUTPUT_CHARS):
        super().__init__()
        self.limit = limit
        self._chunks: list[str] = []
        self._size = 0
        self.dropped = 0
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        with self._lock:
            room = self.limit - self._size
            if room >= len(s):
                self._chunks.append(s)
                self._size += len(s)
            else:
                if room > 0:
                    self._chunks.append(s[:room])
                    self._size += room
                self.dropped += len(s) - max(room, 0)
        return len(s)

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

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)


_capture = threading.local()
_router_lock = threading.Lock()


def install_router() -> None:
    """Put the routers in place (again, if someone replaced ``sys.stdout`` since)."""
    with _router_lock:
        if not isinstance(sys.stdout, _Router):
            sys.stdout = _Router(sys.stdout, "out")
        if not isinstance(sys.stderr, _Router):
            sys.stderr = _Router(sys.stderr, "err")


# ---------------------------------------------------------------------------
# Thread interruption
# ---------------------------------------------------------------------------


def _raise_in_thread(thread: threading.Thread, exc_type: type[BaseException]) -> None:
    ident = thread.ident
    if ident is None or not thread.is_alive():
        return
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(exc_type))


def _stop_thread(
    thread: threading.Thread, done: threading.Event, exc_type: type[BaseException]
) -> bool:
    """Interrupt ``thread`` repeatedly for a short grace period. True if it stopped."""
    deadline = time.monotonic() + INTERRUPT_GRACE_SECONDS
    while not done.is_set() and time.monotonic() < deadline:
        _raise_in_thread(thread, exc_type)
        done.wait(0.05)
    return done.is_set()


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
# The engine
# ---------------------------------------------------------------------------


class CellOutcome:
    """What one cell did."""

    __slots__ = ("stdout", "stderr", "error", "final_answer", "execution_time", "timed_out")

    def __init__(self) -> None:
        self.stdout = ""
        self.stderr = ""
        self.error: str | None = None
        self.final_answer: str | None = None
        self.execution_time = 0.0
        self.timed_out = False


class ReplCore:
    """A persistent namespace that runs cells.

    ``helpers`` maps REPL names (``llm_query``...) to callables; they are put
    in the namespace and restored after every cell, as are ``context`` (to
    ``context_0``), ``history`` and a fresh ``answer`` dict.
    """

    def __init__(
        self,
        helpers: dict[str, Callable[..., Any]] | None = None,
        max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS,
    ):
        self.max_output_chars = max_output_chars
        self._helpers: dict[str, Any] = dict(helpers or {})
        self._cell_lock = threading.Lock()
        self._cell_counter = 0
        self._out: BoundedBuffer | None = None
        self._err: BoundedBuffer | None = None
        self._pending_final: str | None = None
        # Set when the running cell ends or is interrupted; None between cells.
        self._wake: threading.Event | None = None
        self.fixed: dict[str, Any] = {}  # names restored after every cell (context, history...)
        self._builtins_table = self._builtins()
        self.ns: dict[str, Any] = {"__name__": "__main__", "__builtins__": self._builtins_table}
        self._helpers["SHOW_VARS"] = self._make_show_vars()
        self._helpers["FINAL_VAR"] = self._make_final_var()
        self.ns["answer"] = {"content": "", "ready": False}
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
            if file is None or file is sys.stdout:
                file = core._out or sys.stdout
            elif file is sys.stderr:
                file = core._err or sys.stderr
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

    def user_variables(self) -> dict[str, Any]:
        """Names the model created or was given, without the scaffold and private names."""
        return {
            k: v
            for k, v in self.ns.items()
            if not k.startswith("_") and k not in self._helpers and k != "answer"
        }

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
            core._pending_final = answer
            return answer

        return FINAL_VAR

    def resolve_final_var(self, name: str) -> str | None:
        """Value of variable ``name`` as text, or None if it does not exist."""
        name = name.strip().strip("\"'")
        if name in self.ns and _is_identifier(name):
            return str(self.ns[name])
        return None

    def _take_final_answer(self) -> str | None:
        final, self._pending_final = self._pending_final, None
        current = self.ns.get("answer")
        if isinstance(current, dict) and current.get("ready"):
            if final is None:
                final = str(current.get("content", ""))
            self.ns["answer"] = {"content": "", "ready": False}
        elif not isinstance(current, dict):
            self.ns["answer"] = {"content": "", "ready": False}
        return final

    # -- running cells -----------------------------------------------------------

    def _compile(self, code: str) -> tuple[Any, Any]:
        self._cell_counter += 1
        filename = f"<cell {self._cell_counter}>"
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        tree = ast.parse(code, filename=filename, mode="exec")
        last_expr = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = tree.body.pop()
            last_expr = compile(ast.Expression(last.value), filename, "eval")
        return compile(tree, filename, "exec"), last_expr

    def _execute(
        self, code: str, outcome: CellOutcome, done: threading.Event, wake: threading.Event
    ) -> None:
        _capture.out, _capture.err = self._out, self._err
        start = time.perf_counter()
        try:
            try:
                body, last_expr = self._compile(code)
            except SyntaxError as exc:
                outcome.error = f"SyntaxError: {exc.msg} (line {exc.lineno})"
                self._err.write(format_exception(exc, skip_frames=99))  # type: ignore[union-attr]
                return
            exec(body, self.ns)
            if last_expr is not None:
                value = eval(last_expr, self.ns)
                if value is not None:
                    self._out.write(bounded_repr(value) + "\n")  # type: ignore[union-attr]
        except CellTimeout:
            outcome.timed_out = True
        except CellInterrupted:
            outcome.error = "Interrupted"
        except SystemExit as exc:
            outcome.error = f"SystemExit: {exc.code!r} (exiting is not allowed in the REPL; the REPL keeps running)"
            self._err.write(outcome.error + "\n")  # type: ignore[union-attr]
        except BaseException as exc:  # model code may raise anything, KeyboardInterrupt included
            outcome.error = f"{type(exc).__name__}: {exc}"
            self._err.write(format_exception(exc))  # type: ignore[union-attr]
        finally:
            outcome.execution_time = time.perf_counter() - start
            _capture.out = _capture.err = None
            done.set()
            wake.set()

    def interrupt(self) -> None:
        """Stop the cell that is running now (from any thread; returns at once).

        The cell ends as if its caller had pressed Ctrl-C: its result reports
        ``Interrupted`` and the namespace stays usable. No-op between cells.
        """
        wake = self._wake
        if wake is not None:
            wake.set()

    def run_cell(self, code: str, timeout: float | None = None) -> CellOutcome:
        """Run ``code``; return at most ``timeout`` (+ a short grace) seconds later.

        Raises ``KeyboardInterrupt`` to the caller if the caller is interrupted while
        waiting (the cell is stopped first). Nothing the cell does escapes.
        """
        install_router()
        outcome = CellOutcome()
        done = threading.Event()
        wake = threading.Event()
        with self._cell_lock:
            self._out = BoundedBuffer(self.max_output_chars)
            self._err = BoundedBuffer(self.max_output_chars)
            out, err = self._out, self._err
            thread = threading.Thread(
                target=self._execute,
                args=(code, outcome, done, wake),
                name="rlm-cell",
                daemon=True,
            )
            start = time.perf_counter()
            self._wake = wake
            try:
                # start() is inside the try: a Ctrl-C landing while the thread starts
                # must stop the cell too, or it would run on (and hold the GIL) forever.
                thread.start()
                finished = wake.wait(timeout)
            except BaseException:
                _stop_thread(thread, done, CellInterrupted)
                self._out = self._err = self._wake = None
                raise
            self._wake = None
            if finished and not done.is_set():  # interrupt() was called
                stopped = _stop_thread(thread, done, CellInterrupted)
                note = (
                    "Interrupted: the cell was stopped because the run was cancelled."
                    if stopped
                    else "Interrupted: the run was cancelled; the cell is blocked in native code "
                    "and was abandoned (its later output is discarded)."
                )
                err.write(note + "\n")
                outcome.error = note
                outcome.execution_time = time.perf_counter() - start
            elif not finished:
                stopped = _stop_thread(thread, done, CellTimeout)
                outcome.timed_out = True
                note = (
                    f"TimeoutError: the cell ran longer than its limit of {timeout:g} s and was stopped."
                    if stopped
                    else f"TimeoutError: the cell ran longer than its limit of {timeout:g} s; it is "
                    "blocked in native code and was abandoned (its later output is discarded)."
                )
                err.write(note + "\n")
                outcome.error = note
                outcome.execution_time = time.perf_counter() - start
            self._out = self._err = None
            outcome.stdout = out.getvalue()
            outcome.stderr = err.getvalue()
            self.restore_scaffold()
            outcome.final_answer = self._take_final_answer()
            return outcome
