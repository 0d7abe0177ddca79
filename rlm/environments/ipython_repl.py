"""environment="ipython": cells written in IPython syntax (``%time``, ``%%writefile``, ``!ls``).

:class:`IPythonREPL` is one class with two modes, chosen by ``kernel_mode``
(rlms' spelling: ``"in_process"``, default, or ``"subprocess"``; our older
``mode="inprocess"``/``"kernel"`` means the same):

* ``"in_process"``: like ``local`` (same process, **not a security boundary**).
  IPython's own input transformer turns each cell into plain Python (magics
  become ``get_ipython().run_line_magic(...)``), which the shared engine
  runs: the same names, final-answer forms, output bounds and cell time
  limits as ``local``. ``get_ipython()`` is an ``InteractiveShell`` over the
  REPL's namespace, whose module has a name of its own in ``sys.modules``
  (never ``__main__``), removed by ``cleanup()``.
* ``"subprocess"`` (kernel mode): the same, inside the ``subprocess``
  environment's worker (scrubbed environment, resource limits, no network,
  and hard cell timeouts: a cell stuck in native code gets the worker killed
  and restarted). Needs IPython importable by the worker's Python
  (``python=`` option; default this interpreter). It does not use
  ``jupyter_client``/``ipykernel``.

In both modes ``time.sleep`` called by the model's code wakes every 50 ms,
so a cell sleeping past its limit is stopped at the limit (in the kernel,
without killing the worker); ``input()`` raises; cells of one REPL run one at
a time (concurrent callers queue); and a cell, a custom tool or a
``subcall_fn`` that calls ``execute_code`` on the REPL it is running in gets
a ``RuntimeError`` ("Reentrant ...") instead of a deadlock.
"""

from __future__ import annotations

import atexit
import sys
import threading
import time
import types
import uuid
from collections.abc import Callable
from typing import Any

from rlm.comms import frames
from rlm.datatypes import REPLResult
from rlm.environments import repl_core
from rlm.environments.base_env import BaseEnv, accepted_init_kwargs
from rlm.environments.isolated import DEFAULT_START_TIMEOUT
from rlm.environments.local_repl import (
    DEFAULT_CELL_TIMEOUT,
    LocalREPL,
    ReplHost,
    user_subcall_fn,
)
from rlm.environments.repl_core import DEFAULT_MAX_OUTPUT_CHARS
from rlm.environments.subprocess_repl import SubprocessREPL
from rlm.environments.worker import IPythonCells, interruptible_sleep
from rlm.utils.exceptions import ConfigurationError

#: Accepted spellings of the two modes -> rlms' names (what ``kernel_mode`` reports).
_MODES = {
    "in_process": "in_process",
    "inprocess": "in_process",
    "subprocess": "subprocess",
    "kernel": "subprocess",
}
MODES = ("in_process", "subprocess")

_REENTRANT = (
    "Reentrant execute_code on the same IPythonREPL is not supported: {where} called "
    "execute_code on the REPL that is running it, which would wait for itself. Use a "
    "separate REPL for nested execution."
)


def _require_ipython() -> None:
    try:
        import IPython  # noqa: F401
    except ImportError as exc:
        raise ConfigurationError(
            f'environment="ipython" needs IPython ({exc}). Install it with: pip install "rlm[ipython]"'
        ) from exc


class _TimeModule(types.ModuleType):
    """What ``import time`` gives in-process cells: the real module with an interruptible
    ``sleep`` (only the REPL's code sees it; the rest of the process keeps ``time.sleep``)."""

    def __init__(self) -> None:
        super().__init__("time", time.__doc__)
        self.sleep = interruptible_sleep(time.sleep)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def __dir__(self) -> list[str]:
        return dir(time)


#: Run once in each kernel worker: fails unless the worker has IPython (it reports why).
_KERNEL_PROBE = "get_ipython"


def _disabled_input(*_args: Any, **_kwargs: Any) -> str:
    raise RuntimeError("input() is disabled in the REPL: there is no one to type")


# ---------------------------------------------------------------------------
# The two engines
# ---------------------------------------------------------------------------


class IPythonInProcessREPL(LocalREPL):
    """IPython cells in this process: ``LocalREPL`` plus IPython's input transformer."""

    def setup(self) -> None:
        """Start the in-process IPython shell and its helpers."""
        _require_ipython()
        super().setup()
        core = self._core
        # IPython puts its user module into sys.modules under the namespace's __name__:
        # a name of our own, so that the host's __main__ is never replaced.
        self.module_name = f"_rlm_ipython_{uuid.uuid4().hex[:12]}"
        core.ns["__name__"] = self.module_name
        self._ipython = IPythonCells(core, ipython_dir=self.temp_dir)
        self.user_module = self._ipython.shell.user_module
        core.set_helper("input", _disabled_input)
        # ``import time`` in a cell gets an interruptible sleep (this REPL's code only).
        real_import = core._builtins_table["__import__"]
        time_module = _TimeModule()

        def repl_import(name, globals=None, locals=None, fromlist=(), level=0):  # noqa: A002
            module = real_import(name, globals, locals, fromlist, level)
            return time_module if module is time else module

        core._builtins_table["__import__"] = repl_import

    @property
    def shell(self) -> Any:
        """The ``InteractiveShell`` behind ``get_ipython()`` (None after cleanup)."""
        ipython = getattr(self, "_ipython", None)
        return None if ipython is None else ipython.shell

    def in_cell(self) -> bool:
        """True on a thread that is running one of this REPL's cells right now."""
        out = getattr(getattr(repl_core, "_capture", None), "out", None)
        return out is not None and out is getattr(self._core, "_out", None)

    def execute_code(self, code: str, timeout: float | None = None) -> REPLResult:
        """Run one cell with IPython's syntax (magics, top-level await) and report it."""
        if self._closed:
            raise RuntimeError("This IPythonREPL was cleaned up; create a new one")
        return super().execute_code(self._ipython.transform(code), timeout)

    def cleanup(self) -> None:
        """Release the shell; safe to call twice."""
        ipython = getattr(self, "_ipython", None)
        if ipython is not None:
            shell = ipython.shell
            # InteractiveShell registers atexit_operations, and its %%script magics their
            # kill_bg_processes: strong references to the shell (and through it the
            # namespace) for the life of the process. Background scripts end now.
            atexit.unregister(shell.atexit_operations)
            for magics in list(getattr(shell.magics_manager, "registry", {}).values()):
                kill = getattr(magics, "kill_bg_processes", None)
                if kill is not None:
                    try:
                        kill()
                    except Exception:
                        pass
                    atexit.unregister(kill)
            sys.modules.pop(getattr(self, "module_name", ""), None)
            self._ipython = None
        super().cleanup()


class IPythonKernelREPL(SubprocessREPL):
    """IPython cells in a confined worker process (the ``subprocess`` environment's)."""

    _WORKER_INIT = {"ipython": True}

    def __init__(self, **kwargs: Any):
        self.serving_threads: set[int] = set()
        self._serving_lock = threading.Lock()
        super().__init__(**kwargs)

    def _start_worker(self) -> None:
        super()._start_worker()
        wait = self.start_timeout
        message = self._request({"type": "exec", "code": _KERNEL_PROBE, "timeout": wait}, wait)
        problem = "no answer" if message is None else message.get("error")
        if problem is not None:
            self.transport.stop()
            raise ConfigurationError(
                f'environment="ipython", kernel mode: {problem}. Install IPython for the '
                "worker's Python or pass python= pointing at one that has it."
            )

    def _serve_call(self, message: dict[str, Any]) -> None:
        me = threading.get_ident()
        with self._serving_lock:
            self.serving_threads.add(me)
        try:
            super()._serve_call(message)
        finally:
            with self._serving_lock:
                self.serving_threads.discard(me)


# ---------------------------------------------------------------------------
# IPythonREPL: the class users build (and environment="ipython" returns)
# ---------------------------------------------------------------------------


def _resolve_mode(kernel_mode: Any, mode: Any) -> str:
    chosen = {_MODES.get(m, m) for m in (kernel_mode, mode) if m is not None}
    if len(chosen) > 1:
        raise ConfigurationError(
            f"kernel_mode={kernel_mode!r} and mode={mode!r} disagree; pass one of them"
        )
    value = chosen.pop() if chosen else "in_process"
    if value not in MODES:
        given = kernel_mode if kernel_mode is not None else mode
        raise ConfigurationError(
            f"kernel_mode must be 'in_process' or 'subprocess' (or mode='inprocess'/'kernel'), "
            f"got {given!r}"
        )
    return value


def _check_timeouts(startup_timeout: Any, subcall_timeout: Any) -> None:
    def positive(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0

    if not positive(startup_timeout):
        raise ConfigurationError(
            f"startup_timeout must be a positive number of seconds, got {startup_timeout!r}"
        )
    if subcall_timeout is not None and not positive(subcall_timeout):
        raise ConfigurationError(
            f"subcall_timeout must be a positive number of seconds or None (no limit), "
            f"got {subcall_timeout!r}"
        )


def _normalise_cell_timeout(value: Any) -> float | None:
    """rlms: 0 (or less) means no limit, like None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"cell_timeout must be a number of seconds or None, got {value!r}")
    return float(value) if value > 0 else None


def _check_json(payload: Any, what: str) -> None:
    """Kernel mode sends contexts as JSON (rlms raises TypeError for other objects too).
    Checked a few items at a time (the whole JSON text is never held); a str always is."""
    if isinstance(payload, str):
        return
    try:
        for _piece in frames.stream_pieces(payload, strict=True)[1]():
            pass
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"{what} must be JSON-serialisable in kernel mode (it is sent to the worker as "
            f"data): {exc}. Use kernel_mode='in_process' to pass arbitrary Python objects."
        ) from exc


#: What IPythonREPL hands its engine from its own arguments (ReplHost's options; the
#: context, setup_code and subcall_fn it handles itself).
_ENGINE_OPTIONS = frozenset(
    accepted_init_kwargs(ReplHost) - {"context_payload", "setup_code", "subcall_fn"}
)


def _engine_attribute(name: str, doc: str) -> property:
    """A read-only attribute of the engine, as IPythonREPL's own."""

    def get(self: IPythonREPL) -> Any:
        return getattr(self.engine, name)

    get.__doc__ = doc
    return property(get)


class IPythonREPL(BaseEnv):
    """A REPL whose cells are IPython syntax, in this process or in a worker (see the
    module docstring). ``IPythonREPL(kernel_mode="subprocess")`` is the kernel mode.

    Options: ``kernel_mode`` (or ``mode``), ``cell_timeout`` (seconds; default 600;
    None, 0 or less: no limit; settable later), ``startup_timeout`` (seconds to wait for
    the kernel worker), ``subcall_timeout`` (checked and kept, not used: sub-calls are
    bounded by the cell's time limit), ``max_output_chars``, ``setup_code``,
    ``subcall_fn`` (runs ``rlm_query``), and in kernel mode the ``subprocess``
    environment's options (``python``, ``sandbox``, ``memory_mb``...).
    """

    supports_cell_timeout = True
    supports_persistence = True
    supports_compaction = True

    @classmethod
    def check_kwargs(cls, kwargs: dict[str, Any]) -> None:
        """Reject environment_kwargs IPythonREPL does not take (called at RLM construction)."""
        check_kwargs(kwargs)

    def __init__(
        self,
        lm_handler_address: tuple[str, int] | None = None,
        context_payload: Any = None,
        setup_code: str | None = None,
        persistent: bool = False,
        depth: int = 1,
        subcall_fn: Callable[..., Any] | None = None,
        custom_tools: dict[str, Any] | None = None,
        custom_sub_tools: dict[str, Any] | None = None,
        kernel_mode: str | None = None,
        cell_timeout: float | None = DEFAULT_CELL_TIMEOUT,
        startup_timeout: float = DEFAULT_START_TIMEOUT,
        subcall_timeout: float | None = None,
        max_concurrent_subcalls: int = 4,
        compaction: bool = False,
        max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS,
        mode: str | None = None,
        **kernel_options: Any,
    ):
        # The engine takes ReplHost's options: those of this call, bar the ones kept here.
        self._options = {k: v for k, v in locals().items() if k in _ENGINE_OPTIONS}
        self._options["cell_timeout"] = _normalise_cell_timeout(cell_timeout)
        self.kernel_mode = _resolve_mode(kernel_mode, mode)
        _check_timeouts(startup_timeout, subcall_timeout)
        if self.kernel_mode == "in_process" and kernel_options:
            raise ConfigurationError(_unexpected(kernel_options, "in_process"))
        super().__init__(
            persistent=persistent, depth=depth, max_concurrent_subcalls=max_concurrent_subcalls
        )
        self.startup_timeout = startup_timeout
        self.subcall_timeout = subcall_timeout
        self._kernel_options = kernel_options
        self.subcall_fn = user_subcall_fn(subcall_fn)
        self._engine: Any = None
        self._lock = threading.RLock()  # one cell at a time; add_context is atomic
        self._caller_threads: set[int] = set()  # threads inside execute_code
        self._subcall_threads: dict[int, int] = {}  # threads inside subcall_fn -> depth
        self._threads_lock = threading.Lock()
        self._subcall_slots = threading.BoundedSemaphore(max(1, max_concurrent_subcalls))
        try:
            self.setup()
            if context_payload is not None:
                self.load_context(context_payload)
            if setup_code:
                result = self.execute_code(setup_code)
                if self.kernel_mode == "subprocess" and result.error:
                    raise ConfigurationError(f"setup_code failed: {result.error}")
        except BaseException:
            try:
                self.cleanup()
            except Exception:
                pass  # the original error is the one to see
            raise

    # -- construction --------------------------------------------------------------------

    def setup(self) -> None:
        """Create the namespace and its helpers (the constructor calls it)."""
        if self.kernel_mode == "in_process":
            self._setup_in_process()
        else:
            self._setup_subprocess()

    def _guarded_subcall_fn(self) -> Callable[..., Any] | None:
        """``subcall_fn`` under one cap for the whole REPL (``max_concurrent_subcalls``,
        however many batches and threads a cell starts), remembering which threads are in
        it so that a ``subcall_fn`` calling back into this REPL is refused."""
        fn = self.subcall_fn
        if fn is None:
            return None

        def subcall_fn(prompt: Any, model: str | None = None) -> Any:
            me = threading.get_ident()
            with self._subcall_slots:
                with self._threads_lock:
                    self._subcall_threads[me] = self._subcall_threads.get(me, 0) + 1
                try:
                    return fn(prompt, model)
                finally:
                    with self._threads_lock:
                        left = self._subcall_threads[me] - 1
                        if left:
                            self._subcall_threads[me] = left
                        else:
                            del self._subcall_threads[me]

        return subcall_fn

    def _setup_in_process(self) -> None:
        self._engine = IPythonInProcessREPL(subcall_fn=self._guarded_subcall_fn(), **self._options)

    def _setup_subprocess(self) -> None:
        options = dict(self._kernel_options)
        options.setdefault("start_timeout", self.startup_timeout)
        self._engine = IPythonKernelREPL(
            subcall_fn=self._guarded_subcall_fn(), **self._options, **options
        )

    # -- what the engine holds -------------------------------------------------------------

    @property
    def engine(self) -> LocalREPL | SubprocessREPL:
        """The REPL doing the work: ``IPythonInProcessREPL`` or ``IPythonKernelREPL``."""
        if self._engine is None:
            raise RuntimeError("This IPythonREPL has no engine (its setup failed)")
        return self._engine

    @property
    def cell_timeout(self) -> float | None:
        """Seconds one cell may run (None: no limit)."""
        return self.engine.cell_timeout

    @cell_timeout.setter
    def cell_timeout(self, value: float | None) -> None:
        self.engine.cell_timeout = _normalise_cell_timeout(value)

    lm_handler_address = _engine_attribute(
        "lm_handler_address", "The (host, port) of the handler the model helpers call."
    )
    custom_tools = _engine_attribute("custom_tools", "The custom tools given to this REPL.")
    custom_sub_tools = _engine_attribute(
        "custom_sub_tools", "The custom tools handed on to child runs."
    )

    @property
    def _shell(self) -> Any:
        """rlms' name for the in-process ``InteractiveShell`` (None in kernel mode and after
        cleanup)."""
        engine = self._engine
        return engine.shell if isinstance(engine, IPythonInProcessREPL) else None

    @property
    def shell(self) -> Any:
        """The ``InteractiveShell`` behind ``get_ipython()`` (in-process mode)."""
        return self._shell

    @property
    def _user_module(self) -> Any:
        """The in-process shell's user module (its own name in ``sys.modules``)."""
        engine = self._engine
        if isinstance(engine, IPythonInProcessREPL) and engine.shell is not None:
            return engine.user_module
        return None

    @property
    def locals(self) -> dict[str, Any]:
        """In-process: the namespace. Kernel mode: what the host sent it (``context_N``,
        ``history_N``); ask the worker with a cell for the rest."""
        engine = self.engine
        if isinstance(engine, IPythonInProcessREPL):
            return engine.locals
        shadow: dict[str, Any] = {}
        for index, value in sorted(engine._contexts.items()):
            shadow[f"context_{index}"] = value
        for index, value in sorted(engine._histories.items()):
            shadow[f"history_{index}"] = value
        if "context_0" in shadow:
            shadow["context"] = shadow["context_0"]
        if "history_0" in shadow:
            shadow["history"] = shadow["history_0"]
        return shadow

    @property
    def temp_dir(self) -> str:
        """A scratch directory (in kernel mode, the worker's working directory)."""
        engine = self.engine
        return engine.temp_dir if isinstance(engine, LocalREPL) else engine.workdir

    def __getattr__(self, name: str) -> Any:
        # Anything else the engine offers (isolation, restarts, globals, workdir...).
        engine = self.__dict__.get("_engine")
        if engine is None or name.startswith("__"):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(engine, name)

    # -- contexts and histories ------------------------------------------------------------

    def load_context(self, context_payload: Any) -> None:
        """Bind the prompt as ``context`` (and ``context_0``)."""
        self.add_context(context_payload, 0)

    def add_context(self, context_payload: Any, context_index: int | None = None) -> int:
        """Bind ``context_payload`` as ``context_N`` (the next N by default); returns N."""
        if self.kernel_mode == "subprocess":
            _check_json(context_payload, "context")
        with self._lock:
            return self.engine.add_context(context_payload, context_index)

    def get_context_count(self) -> int:
        """How many contexts (``context_0``...) the REPL holds."""
        return self.engine.get_context_count()

    def add_history(
        self, message_history: list[dict[str, Any]], history_index: int | None = None
    ) -> int:
        """Bind a finished call's messages as ``history_N`` (a copy); returns N."""
        with self._lock:
            return self.engine.add_history(message_history, history_index)

    def get_history_count(self) -> int:
        """How many histories (``history_0``...) the REPL holds."""
        return self.engine.get_history_count()

    def append_compaction_entry(self, entry: Any) -> None:
        """Record a compaction summary in the REPL's ``history`` (compaction mode)."""
        with self._lock:
            self.engine.append_compaction_entry(entry)

    def update_handler_address(self, address: tuple[str, int]) -> None:
        """Point the model helpers at the handler of the next completion."""
        self.engine.update_handler_address(address)

    # -- execution -------------------------------------------------------------------------

    def _reentry(self) -> str | None:
        """Who is calling back into this REPL from inside its own running cell, if anyone."""
        me = threading.get_ident()
        with self._threads_lock:
            if me in self._subcall_threads:
                return "subcall_fn"
            if me in self._caller_threads:
                return "the code of the running cell"
        engine = self._engine
        if isinstance(engine, IPythonInProcessREPL) and engine.in_cell():
            return "the code of the running cell"
        if isinstance(engine, IPythonKernelREPL) and me in engine.serving_threads:
            return "a sub-call or custom tool of the running cell"
        return None

    def execute_code(self, code: str, timeout: float | None = None) -> REPLResult:
        """Run one cell. ``timeout`` (seconds) overrides ``cell_timeout`` for this cell."""
        where = self._reentry()
        if where is not None:
            raise RuntimeError(_REENTRANT.format(where=where))
        me = threading.get_ident()
        with self._lock:
            with self._threads_lock:
                self._caller_threads.add(me)
            try:
                return self.engine.execute_code(code, timeout)
            finally:
                with self._threads_lock:
                    self._caller_threads.discard(me)

    def resolve_final_var(self, name: str) -> str | None:
        """The value of the REPL variable ``name`` as text, or None if it is not defined."""
        return self.engine.resolve_final_var(name)

    def interrupt(self) -> None:
        """Stop the running cell, if any (from any thread; returns at once)."""
        engine = self._engine
        if engine is not None:
            engine.interrupt()

    def cleanup(self) -> None:
        """Release everything the REPL holds; safe to call twice."""
        engine = self.__dict__.get("_engine")
        if engine is not None:
            engine.cleanup()

    def __enter__(self) -> IPythonREPL:
        return self


# ---------------------------------------------------------------------------
# The registry's hooks
# ---------------------------------------------------------------------------


def _own_options() -> set[str]:
    import inspect

    params = inspect.signature(IPythonREPL.__init__).parameters
    return {n for n, p in params.items() if n != "self" and p.kind is not p.VAR_KEYWORD}


def _unexpected(extra: dict[str, Any], mode: str) -> str:
    from rlm.environments.base_env import _SUPPLIED_BY_RLM

    accepted = ", ".join(sorted(_own_options() - _SUPPLIED_BY_RLM))
    return (
        f"IPythonREPL got unexpected environment_kwargs: {sorted(extra)} (kernel_mode={mode!r}; "
        "the subprocess environment's options need kernel_mode='subprocess'). "
        f"Accepted: {accepted}"
    )


def check_kwargs(kwargs: dict[str, Any]) -> None:
    """Fail now (ConfigurationError, a ValueError) on options IPythonREPL would refuse."""
    mode = _resolve_mode(kwargs.get("kernel_mode"), kwargs.get("mode"))
    _check_timeouts(
        kwargs.get("startup_timeout", DEFAULT_START_TIMEOUT), kwargs.get("subcall_timeout")
    )
    if "cell_timeout" in kwargs:
        _normalise_cell_timeout(kwargs["cell_timeout"])
    rest = {k: v for k, v in kwargs.items() if k not in _own_options()}
    if not rest:
        return
    if mode == "in_process":
        raise ConfigurationError(_unexpected(rest, mode))
    try:
        IPythonKernelREPL.check_kwargs(rest)
    except ConfigurationError:
        raise ConfigurationError(_unexpected(rest, mode)) from None


def make_ipython(**kwargs: Any) -> IPythonREPL:
    """The ``environment="ipython"`` factory."""
    return IPythonREPL(**kwargs)


__all__ = [
    "IPythonInProcessREPL",
    "IPythonKernelREPL",
    "IPythonREPL",
    "check_kwargs",
    "interruptible_sleep",
    "make_ipython",
]
