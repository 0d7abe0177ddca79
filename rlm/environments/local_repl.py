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
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rlm.core.comms_utils import LMRequest, send_lm_request, send_lm_request_batched
from rlm.core.types import REPLResult, RLMChatCompletion
from rlm.environments.base_env import (
    NonIsolatedEnv,
    check_init_kwargs,
    extract_tool_value,
    guarded_tool,
    validate_custom_tools,
)
from rlm.environments.repl_core import DEFAULT_MAX_OUTPUT_CHARS, ReplCore

DEFAULT_CELL_TIMEOUT = 600.0


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


def _make_helpers(ch: _Channel) -> dict[str, Any]:
    """The REPL's sub-call functions, as closures over ``ch`` only."""

    def llm_query(prompt: Any, model: str | None = None) -> str:
        """Ask a language model one question (no REPL, no recursion); returns its answer."""
        pending = ch.pending  # this cell's list, even if the call outlives the cell
        if ch.address is None:
            return "Error: no LM handler is configured for this REPL"
        response = send_lm_request(
            ch.address, LMRequest(prompt=prompt, model=model, depth=ch.depth), timeout=ch.timeout
        )
        if not response.success or response.chat_completion is None:
            return f"Error: {response.error}"
        pending.append(response.chat_completion)
        return response.chat_completion.response

    def llm_query_batched(prompts: list[Any], model: str | None = None) -> list[str]:
        """Ask many questions concurrently; answers come back in the same order."""
        if isinstance(prompts, (str, bytes)) or not hasattr(prompts, "__iter__"):
            return [
                f"Error: llm_query_batched expects a list of prompts, got {type(prompts).__name__}"
            ]
        prompts = list(prompts)
        pending = ch.pending
        if ch.address is None:
            return ["Error: no LM handler is configured for this REPL"] * len(prompts)
        responses = send_lm_request_batched(
            ch.address, prompts, model=model, depth=ch.depth, timeout=ch.timeout
        )
        out = []
        for response in responses:
            if response.success and response.chat_completion is not None:
                pending.append(response.chat_completion)
                out.append(response.chat_completion.response)
            else:
                out.append(f"Error: {response.error}")
        return out

    def rlm_call(prompt: Any, model: str | None) -> tuple[str, RLMChatCompletion | None]:
        if ch.subcall_fn is not None:
            try:
                completion = ch.subcall_fn(prompt, model)
            except Exception as exc:
                return f"Error: rlm_query failed: {type(exc).__name__}: {exc}", None
            return completion.response, completion
        if ch.address is None:
            return "Error: no LM handler is configured for this REPL", None
        response = send_lm_request(
            ch.address,
            LMRequest(prompt=prompt, model=model, depth=ch.depth, kind="rlm"),
            timeout=ch.timeout,
        )
        if not response.success or response.chat_completion is None:
            return f"Error: {response.error}", None
        return response.chat_completion.response, response.chat_completion

    def rlm_query(prompt: Any, model: str | None = None) -> str:
        """Hand a sub-task to a child RLM with its own REPL (a plain model call at the depth cap)."""
        pending = ch.pending
        answer, completion = rlm_call(prompt, model)
        if completion is not None:
            pending.append(completion)
        return answer

    def rlm_query_batched(prompts: list[Any], model: str | None = None) -> list[str]:
        """Run several child RLMs in parallel; answers come back in the same order."""
        if isinstance(prompts, (str, bytes)) or not hasattr(prompts, "__iter__"):
            return [
                f"Error: rlm_query_batched expects a list of prompts, got {type(prompts).__name__}"
            ]
        prompts = list(prompts)
        pending = ch.pending
        workers = min(ch.max_concurrent, max(1, len(prompts)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rlm-subcall") as pool:
            results = list(pool.map(lambda p: rlm_call(p, model), prompts))
        pending.extend(c for _, c in results if c is not None)
        return [answer for answer, _ in results]

    return {
        "llm_query": llm_query,
        "llm_query_batched": llm_query_batched,
        "rlm_query": rlm_query,
        "rlm_query_batched": rlm_query_batched,
    }


class LocalREPL(NonIsolatedEnv):
    """A persistent Python namespace in this process (see the module docstring)."""

    supports_cell_timeout = True

    @classmethod
    def check_kwargs(cls, kwargs: dict[str, Any]) -> None:
        """Reject environment_kwargs LocalREPL does not take (called at RLM construction)."""
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
        self.check_kwargs(kwargs)
        super().__init__(
            persistent=persistent, depth=depth, max_concurrent_subcalls=max_concurrent_subcalls
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
        self._channel.subcall_fn = subcall_fn
        self._context_count = 0
        self._history_count = 0
        self._temp_dir: str | None = None
        self._closed = False
        self.setup()
        if context_payload is not None:
            self.load_context(context_payload)
        if setup_code:
            self.execute_code(setup_code)

    # -- construction -------------------------------------------------------------

    def setup(self) -> None:
        self._core = ReplCore(_make_helpers(self._channel), max_output_chars=self.max_output_chars)
        for name, entry in self.custom_tools.items():
            value = extract_tool_value(entry)
            self._core.ns[name] = guarded_tool(name, value) if callable(value) else value
        if self.compaction:
            self._compaction_history: list[Any] = []
            self._core.set_fixed("history", self._compaction_history)

    @property
    def lm_handler_address(self) -> tuple[str, int] | None:
        return self._channel.address

    @property
    def globals(self) -> dict[str, Any]:
        """The namespace cells run in (one dict: notebook semantics)."""
        return self._core.ns

    @property
    def locals(self) -> dict[str, Any]:
        """The same namespace (kept for code written against the 0.1.x API)."""
        return self._core.ns

    @property
    def temp_dir(self) -> str:
        """A scratch directory for this REPL, created on first use and removed by cleanup()."""
        if self._temp_dir is None:
            self._temp_dir = tempfile.mkdtemp(prefix="rlm_repl_")
        return self._temp_dir

    # -- contexts and histories ---------------------------------------------------------

    def load_context(self, context_payload: Any) -> None:
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
        return self._context_count

    def add_history(
        self, message_history: list[dict[str, Any]], history_index: int | None = None
    ) -> int:
        index = self._history_count if history_index is None else history_index
        snapshot = copy.deepcopy(message_history)
        self._core.set_fixed(f"history_{index}", snapshot)
        if index == 0 and not self.compaction:
            self._core.set_fixed("history", snapshot)
        self._history_count = max(self._history_count, index + 1)
        return index

    def get_history_count(self) -> int:
        return self._history_count

    def append_compaction_entry(self, entry: Any) -> None:
        if self.compaction:
            self._compaction_history.append(copy.deepcopy(entry))

    def update_handler_address(self, address: tuple[str, int]) -> None:
        self._channel.address = tuple(address)

    # -- execution ----------------------------------------------------------------------

    def execute_code(self, code: str, timeout: float | None = None) -> REPLResult:
        """Run one cell. ``timeout`` (seconds) overrides ``cell_timeout`` for this cell."""
        if self._closed:
            raise RuntimeError("This LocalREPL was cleaned up; create a new one")
        limit = self.cell_timeout if timeout is None else timeout
        if self.cell_timeout is not None and timeout is not None:
            limit = min(timeout, self.cell_timeout)
        self._channel.pending = pending = []
        self._channel.timeout = limit
        outcome = self._core.run_cell(code, limit)
        return REPLResult(
            stdout=outcome.stdout,
            stderr=outcome.stderr,
            locals=self._core.user_variables(),
            execution_time=outcome.execution_time,
            rlm_calls=list(pending),
            final_answer=outcome.final_answer,
            error=outcome.error,
        )

    def resolve_final_var(self, name: str) -> str | None:
        return self._core.resolve_final_var(name)

    def interrupt(self) -> None:
        """Stop the running cell, if any (from any thread); its result reports ``Interrupted``."""
        self._core.interrupt()

    def cleanup(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._core.ns.clear()
        self._core.fixed.clear()
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None
