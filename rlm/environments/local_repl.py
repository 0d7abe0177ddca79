"""LocalREPL: model code runs in this process, in its own namespace.

Fast and convenient, and **not a security boundary**: code in the REPL runs
with the permissions of your process and can import anything, read your
files and environment, and reach every object in memory. Use an isolated
environment (``environment="subprocess"``, ``"docker"`` or a cloud sandbox)
for code you do not trust.

What it does guard: sub-calls travel over the LM handler's socket, so the
REPL's helper functions hold an address and nothing else -- no client
object, no API key, no reference back to the RLM -- and model code cannot
stop the host with ``sys.exit()`` or ``KeyboardInterrupt``.

Cells run with the REPL's temporary directory (``temp_dir``) as the working
directory, so files the model writes with relative paths land there, and the
host's working directory is put back after each cell whatever the cell's
``os.chdir`` did. The working directory belongs to the whole process: while a
cell runs, other threads of the host see the temporary directory too, and
cells of several REPLs running at once (parallel child runs) share the
directory of the one that started last. ``sys.stdout``/``sys.stderr`` are
replaced only while cells run.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

from rlm.comms.protocol import LMRequest, send_lm_request, send_lm_request_batched
from rlm.comms.workers import Wake
from rlm.datatypes import REPLResult, RLMChatCompletion
from rlm.environments.base_env import (
    BaseEnv,
    NonIsolatedEnv,
    accepted_init_kwargs,
    check_init_kwargs,
    extract_tool_value,
    user_options,
    validate_custom_tools,
)
from rlm.environments.repl_core import (
    DEFAULT_MAX_OUTPUT_CHARS,
    ReplCore,
    lend_thread,
    uncaptured,
)
from rlm.utils.exceptions import ConfigurationError

DEFAULT_CELL_TIMEOUT = 600.0
NO_HANDLER = "Error: No LM handler configured"
#: rlms' text for one failed prompt of a batch (the handler's message follows).
BATCH_SLOT_FAILED = "llm() call failed - "
#: The answer of a batched child that was never asked: its cell was stopped first.
INTERRUPTED = "Error: RLM query interrupted before it started"

_warned_keys: set[str] = set()
_warned_lock = threading.Lock()


class _Channel:
    """Everything the helper functions know: where the handler is, and what they called."""

    __slots__ = ("address", "depth", "pending", "timeout", "subcall_fn", "max_concurrent")

    def __init__(self, address: tuple[str, int] | None, depth: int, max_concurrent: int):
        self.address = tuple(address) if address else None
        self.depth = depth
        self.pending: list[RLMChatCompletion] = []
        self.timeout: float | None = None
        self.subcall_fn: Any = None
        self.max_concurrent = max(1, max_concurrent)


def user_subcall_fn(fn: Any) -> Any:
    """The ``subcall_fn`` a REPL calls for ``rlm_query``: the user's, or None for the RLM's own
    callback, which the LM handler serves with the same result (so the model's helpers hold
    nothing that reaches the RLM)."""
    return None if getattr(fn, "rlm_routed_via_handler", False) is True else fn


def _prompt_list(prompts: Any, helper: str) -> list[Any] | str:
    """The prompts of a batched helper as a list, or its ``Error:`` text for anything that
    is not a list of prompts (a single string included)."""
    if isinstance(prompts, (str, bytes)) or not hasattr(prompts, "__iter__"):
        return f"Error: {helper} expects a list of prompts, got {type(prompts).__name__}"
    return list(prompts)


def _batch_answers(responses: list[Any], pending: list[RLMChatCompletion]) -> list[str]:
    """One answer per response of a batch (rlms' text for a failed slot); the completions
    go to ``pending``."""
    out = []
    for response in responses:
        if response.success and response.chat_completion is not None:
            pending.append(response.chat_completion)
            out.append(response.chat_completion.response)
        else:
            error = str(response.error)
            if not error.startswith(BATCH_SLOT_FAILED):
                error = BATCH_SLOT_FAILED + error
            out.append(f"Error: {error}")
    return out


def _rlm_call(ch: _Channel, prompt: Any, model: str | None) -> tuple[str, RLMChatCompletion | None]:
    """One child run: the user's ``subcall_fn`` when there is one, else the handler's."""
    if ch.subcall_fn is not None:
        try:
            completion = ch.subcall_fn(prompt, model)
            answer = completion.response  # a malformed result fails this item only
        except Exception as exc:
            return f"Error: RLM query failed - {exc}", None
        return answer, completion
    if ch.address is None:
        return NO_HANDLER, None
    # A handler of this process runs the child in this thread (the cell's): what the
    # child's loop and its subscribers print is not this cell's output.
    with uncaptured():
        response = send_lm_request(
            ch.address,
            LMRequest(prompt=prompt, model=model, depth=ch.depth, kind="rlm"),
            timeout=ch.timeout,
        )
    if not response.success or response.chat_completion is None:
        return f"Error: {response.error}", None
    return response.chat_completion.response, response.chat_completion


def _rlm_calls(ch: _Channel, batch: list[Any], model: str | None) -> list[tuple[str, Any]]:
    """The child runs of ``rlm_query_batched``, at most ``max_concurrent`` at once: this
    thread takes items as well, and lends its helper threads the cell it runs
    (:func:`~rlm.environments.repl_core.lend_thread`), so the children's cells run in
    them, supervised with this one, and stop when it is stopped."""
    results: list[tuple[str, Any]] = [(INTERRUPTED, None)] * len(batch)
    items = iter(range(len(batch)))
    stopped: list[bool] = []

    def drain() -> None:
        for index in items:  # one shared iterator: each item is taken once
            if stopped:
                return
            results[index] = _rlm_call(ch, batch[index], model)

    def helper() -> None:
        try:
            drain()
        except BaseException:  # the cell that lent this thread is being stopped
            stopped.append(True)

    lend = lend_thread()
    helpers = [
        threading.Thread(target=lend(helper), name=f"rlm-subcall-{n}", daemon=True)
        for n in range(min(ch.max_concurrent, len(batch)) - 1)
    ]
    try:
        for thread in helpers:
            try:
                thread.start()
            except RuntimeError:  # no thread could be started: fewer at once
                break
        drain()
    except BaseException:
        stopped.append(True)
        raise
    finally:
        for thread in helpers:
            if thread.ident is not None:
                thread.join()
    return results


def _make_helpers(ch: _Channel) -> dict[str, Any]:
    """The REPL's sub-call functions, as closures over ``ch`` only."""

    def llm_query(prompt: Any, model: str | None = None) -> str:
        """Ask a language model one question (no REPL, no recursion); returns its answer."""
        pending = ch.pending  # this cell's list, even if the call outlives the cell
        if ch.address is None:
            return NO_HANDLER
        response = send_lm_request(
            ch.address, LMRequest(prompt=prompt, model=model, depth=ch.depth), timeout=ch.timeout
        )
        if not response.success or response.chat_completion is None:
            return f"Error: {response.error}"
        pending.append(response.chat_completion)
        return response.chat_completion.response

    def llm_query_batched(prompts: list[Any], model: str | None = None) -> list[str]:
        """Ask many questions concurrently; answers come back in the same order."""
        batch = _prompt_list(prompts, "llm_query_batched")
        if isinstance(batch, str):
            return [batch]
        pending = ch.pending
        if ch.address is None:
            return [NO_HANDLER] * len(batch)
        responses = send_lm_request_batched(
            ch.address, batch, model=model, depth=ch.depth, timeout=ch.timeout
        )
        return _batch_answers(responses, pending)

    def rlm_query(prompt: Any, model: str | None = None) -> str:
        """Hand a sub-task to a child RLM with its own REPL (a plain model call at the depth cap)."""
        pending = ch.pending
        answer, completion = _rlm_call(ch, prompt, model)
        if completion is not None:
            pending.append(completion)
        return answer

    def rlm_query_batched(prompts: list[Any], model: str | None = None) -> list[str]:
        """Run several child RLMs in parallel; answers come back in the same order."""
        batch = _prompt_list(prompts, "rlm_query_batched")
        if isinstance(batch, str):
            return [batch]
        pending = ch.pending
        results = _rlm_calls(ch, batch, model)
        pending.extend(c for _, c in results if c is not None)
        return [answer for answer, _ in results]

    return {
        "llm_query": llm_query,
        "llm_query_batched": llm_query_batched,
        "rlm_query": rlm_query,
        "rlm_query_batched": rlm_query_batched,
    }


class _Variables(MutableMapping):
    """``LocalREPL.locals``: the REPL's variables, as rlms' ``locals`` dict held them --
    the namespace without the helper functions (``llm_query``...), callable custom tools
    and private names. Reads and writes go to the live namespace."""

    def __init__(self, core: ReplCore):
        self._core = core

    def _visible(self, key: Any, value: Any) -> bool:
        return (
            isinstance(key, str)
            and not key.startswith("_")
            and not self._core._is_scaffold(key, value)
        )

    def __getitem__(self, key: str) -> Any:
        value = self._core.ns[key]
        if not self._visible(key, value):
            raise KeyError(key)
        return value

    def __setitem__(self, key: str, value: Any) -> None:
        self._core.ns[key] = value

    def __delitem__(self, key: str) -> None:
        self[key]  # noqa: B018 - KeyError for names that are not variables
        del self._core.ns[key]

    def __iter__(self) -> Iterator[str]:
        return iter([k for k, v in list(self._core.ns.items()) if self._visible(k, v)])

    def __len__(self) -> int:
        return sum(1 for k, v in list(self._core.ns.items()) if self._visible(k, v))

    def copy(self) -> dict[str, Any]:
        return dict(self.items())

    def __repr__(self) -> str:
        return repr(self.copy())


#: The options an RLM passes to its environment, in rlms' positional order (LocalREPL's).
HOST_OPTIONS = (
    "lm_handler_address",
    "context_payload",
    "setup_code",
    "persistent",
    "depth",
    "subcall_fn",
    "custom_tools",
    "custom_sub_tools",
    "compaction",
    "max_concurrent_subcalls",
)


def host_options(given: dict[str, Any]) -> dict[str, Any]:
    """The RLM's options among ``given`` (a constructor's ``locals()``), to pass on to
    :class:`ReplHost`: how an environment that takes some of them positionally, in its
    rlms order, hands them on."""
    return {name: given[name] for name in HOST_OPTIONS if name in given}


class ReplHost(BaseEnv):
    """What :class:`LocalREPL` and :class:`~rlm.environments.isolated.IsolatedREPL` share:
    the options the RLM passes (in rlms' order), the channel the model helpers call the LM
    handler through, each cell's time limit, and the construction sequence (``_open()``,
    ``setup()``, the context, ``setup_code``; ``cleanup()`` if any of it fails).

    Subclasses implement ``_open()`` (what ``setup()`` needs) and say with
    ``_STRICT_SETUP_CODE`` whether a failing ``setup_code`` raises ``ConfigurationError``
    (LocalREPL, as rlms, carries on).
    """

    supports_cell_timeout = True
    supports_persistence = True
    supports_compaction = True
    _STRICT_SETUP_CODE = True

    @classmethod
    def check_kwargs(cls, kwargs: dict[str, Any]) -> None:
        """Reject environment_kwargs this environment does not take (at RLM construction)."""
        check_init_kwargs(cls, kwargs)

    def __init__(
        self,
        lm_handler_address: tuple[str, int] | None = None,
        context_payload: Any = None,
        setup_code: str | None = None,
        persistent: bool = False,
        depth: int = 1,
        subcall_fn: Any = None,
        custom_tools: dict[str, Any] | None = None,
        custom_sub_tools: dict[str, Any] | None = None,
        compaction: bool = False,
        max_concurrent_subcalls: int = 4,
        cell_timeout: float | None = DEFAULT_CELL_TIMEOUT,
        max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS,
        **kwargs: Any,
    ):
        self.check_kwargs(kwargs)  # raises (LocalREPL: warns)
        super().__init__(
            persistent=persistent,
            depth=depth,
            max_concurrent_subcalls=max_concurrent_subcalls,
            **kwargs,  # what check_kwargs let through (LocalREPL: ignored, kept as in rlms)
        )
        validate_custom_tools(custom_tools)
        self.custom_tools = dict(custom_tools or {})
        self.custom_sub_tools = (
            dict(custom_sub_tools) if custom_sub_tools is not None else self.custom_tools
        )
        self.compaction = compaction
        self.cell_timeout = cell_timeout
        self.max_output_chars = max_output_chars
        self._channel = _Channel(lm_handler_address, depth, max_concurrent_subcalls)
        #: rlms' callback for ``rlm_query`` (None: the LM handler serves child runs).
        self.subcall_fn = self._channel.subcall_fn = user_subcall_fn(subcall_fn)
        self._closed = False
        self._open()
        try:
            self.setup()
            if context_payload is not None:
                self.load_context(context_payload)
            if setup_code:
                result = self.execute_code(setup_code)
                if self._STRICT_SETUP_CODE and result.error:
                    raise ConfigurationError(f"setup_code failed: {result.error}")
        except BaseException:
            self.cleanup()
            raise

    def _open(self) -> None:
        """Acquire what ``setup()`` needs (a directory, a transport); ``cleanup()`` frees it."""

    @property
    def lm_handler_address(self) -> tuple[str, int] | None:
        """The (host, port) of the handler the model helpers call; None without one."""
        return self._channel.address

    def update_handler_address(self, address: tuple[str, int]) -> None:
        """Point the model helpers at the handler of the next completion."""
        self._channel.address = tuple(address)

    def _begin_cell(self, timeout: float | None) -> tuple[float | None, list[RLMChatCompletion]]:
        """Start a cell: its time limit (``timeout`` capped by ``cell_timeout``; None: none)
        and the list its sub-calls' completions go to."""
        if self._closed:
            raise RuntimeError(f"This {type(self).__name__} was cleaned up; create a new one")
        limit = self.cell_timeout if timeout is None else timeout
        if self.cell_timeout is not None and timeout is not None:
            limit = min(timeout, self.cell_timeout)
        if limit is not None:
            limit = max(0.0, float(limit))
        self._channel.pending = pending = []
        self._channel.timeout = limit
        return limit, pending


class LocalREPL(ReplHost, NonIsolatedEnv):
    """A persistent Python namespace in this process (see the module docstring)."""

    _STRICT_SETUP_CODE = False  # rlms: a failing setup_code is the cell's error, not a raise
    supports_live_output = True

    @classmethod
    def check_kwargs(cls, kwargs: dict[str, Any]) -> None:
        """Warn (once per key and process) about environment_kwargs LocalREPL does not
        take; rlms ignores them, so they are accepted and ignored (called at RLM
        construction and by the constructor)."""
        unknown = sorted(set(kwargs) - accepted_init_kwargs(cls))
        for key in unknown:
            with _warned_lock:
                if key in _warned_keys:
                    continue
                _warned_keys.add(key)
            warnings.warn(
                f"LocalREPL ignores the unknown environment_kwargs key {key!r} "
                f"(it takes: {user_options(cls)})",
                UserWarning,
                stacklevel=3,
            )

    # -- construction -------------------------------------------------------------

    def _open(self) -> None:
        self._context_count = 0
        self._history_count = 0
        self._temp_dir: str = tempfile.mkdtemp(prefix="rlm_repl_")

    def setup(self) -> None:
        """Create the namespace and its helpers (the constructor calls it)."""
        self._core = ReplCore(
            _make_helpers(self._channel),
            max_output_chars=self.max_output_chars,
            workdir=self.temp_dir,
            wake=Wake,  # a descriptor on Linux: a cheaper hand-off than a lock
        )
        self._variables = _Variables(self._core)
        for name, entry in self.custom_tools.items():
            problem = self._core.install_tool(name, extract_tool_value(entry))
            if problem is not None:
                raise ConfigurationError(problem)
        if self.compaction:
            self._compaction_history: list[Any] = []
            self._core.set_fixed("history", self._compaction_history)

    @property
    def globals(self) -> dict[str, Any]:
        """The namespace cells run in (one dict: notebook semantics)."""
        return self._core.ns

    @property
    def locals(self) -> MutableMapping[str, Any]:
        """The REPL's variables (a live view of the namespace without the helper functions,
        callable tools and private names; ``.copy()`` gives a dict)."""
        return self._variables

    @property
    def temp_dir(self) -> str:
        """This REPL's scratch directory: the working directory of its cells (removed by
        cleanup())."""
        return self._temp_dir

    # -- contexts and histories ---------------------------------------------------------

    def load_context(self, context_payload: Any) -> None:
        """Bind the prompt as ``context`` (and ``context_0``)."""
        self.add_context(context_payload, 0)

    def add_context(self, context_payload: Any, context_index: int | None = None) -> int:
        """Bind ``context_N`` to the payload itself (no copy, no serialisation)."""
        index = self._context_count if context_index is None else context_index
        self._core.set_fixed(f"context_{index}", context_payload)
        if index == 0:
            self._core.set_fixed("context", context_payload)
        self._context_count = max(self._context_count, index + 1)
        return index

    def get_context_count(self) -> int:
        """How many contexts (``context_0``...) the REPL holds."""
        return self._context_count

    def add_history(
        self, message_history: list[dict[str, Any]], history_index: int | None = None
    ) -> int:
        """Bind a finished call's messages as ``history_N`` (a copy); returns N."""
        index = self._history_count if history_index is None else history_index
        snapshot = copy.deepcopy(message_history)
        self._core.set_fixed(f"history_{index}", snapshot)
        if index == 0 and not self.compaction:
            self._core.set_fixed("history", snapshot)
        self._history_count = max(self._history_count, index + 1)
        return index

    def get_history_count(self) -> int:
        """How many histories (``history_0``...) the REPL holds."""
        return self._history_count

    def append_compaction_entry(self, entry: Any) -> None:
        """Record a compaction summary in the REPL's ``history`` (compaction mode)."""
        if self.compaction:
            self._compaction_history.append(copy.deepcopy(entry))

    # -- execution ----------------------------------------------------------------------

    def execute_code(
        self,
        code: str,
        timeout: float | None = None,
        on_output: Callable[[str, str], Any] | None = None,
    ) -> REPLResult:
        """Run one cell. ``timeout`` (seconds) overrides ``cell_timeout`` for this cell.

        ``on_output(stream, text)`` (``"stdout"`` or ``"stderr"``), *ours*: the cell's
        output while it runs, about every 0.1 s, from this thread; the texts of a stream
        add up to a prefix of the result's (the rest is in the result only)."""
        limit, pending = self._begin_cell(timeout)
        outcome = self._core.run_cell(code, limit, on_output)
        result = REPLResult(
            stdout=outcome.stdout,
            stderr=outcome.stderr,
            locals=self._core.cell_locals(),
            execution_time=outcome.execution_time,
            rlm_calls=list(pending),
            final_answer=outcome.final_answer,
            error=outcome.error,
        )
        # Which protocol gave the final answer ("FINAL_VAR", "answer" or "FINAL"): the
        # loop lets a later FINAL_VAR of the same response win over a FINAL.
        result.final_kind = outcome.final_kind
        return result

    def resolve_final_var(self, name: str) -> str | None:
        """The value of the REPL variable ``name`` as text, or None if it is not defined."""
        return self._core.resolve_final_var(name)

    def interrupt(self) -> None:
        """Stop the running cell, if any (from any thread); its result reports ``Interrupted``."""
        self._core.interrupt()

    def cleanup(self) -> None:
        """Release everything the REPL holds; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        core = getattr(self, "_core", None)  # None when setup() failed
        if core is not None:
            core.close()  # its cell thread ends
            core.ns.clear()
            core.fixed.clear()
        shutil.rmtree(self._temp_dir, ignore_errors=True)
