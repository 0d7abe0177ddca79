"""The environment seam: what the RLM loop needs from a REPL, and custom-tool helpers."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from rlm.datatypes import REPLResult
from rlm.environments.repl_core import SCAFFOLD_NAMES, code_tool_source, guard_tool
from rlm.utils.exceptions import ConfigurationError

#: Names custom tools may not take: the REPL provides them and restores them after every cell.
RESERVED_TOOL_NAMES: frozenset[str] = SCAFFOLD_NAMES


# ---------------------------------------------------------------------------
# Custom tools
# ---------------------------------------------------------------------------


@dataclass
class ToolInfo:
    """One custom tool: its REPL name, its value and an optional description."""

    name: str
    value: Any
    description: str | None = None

    @property
    def is_callable(self) -> bool:
        """Whether the tool is a function the model calls (else a value it reads)."""
        return callable(self.value)

    @property
    def is_code(self) -> bool:
        """A code string (``"def f(x): ..."``): every environment runs it to define the tool."""
        return code_tool_source(self.name, self.value) is not None


def parse_tool_entry(name: str, entry: Any) -> ToolInfo:
    """Read one entry: a plain value, or ``{"tool": value, "description": "..."}``."""
    if isinstance(entry, dict) and "tool" in entry:
        description = entry.get("description")
        return ToolInfo(name, entry["tool"], description if isinstance(description, str) else None)
    return ToolInfo(name, entry, None)


def parse_custom_tools(custom_tools: dict[str, Any] | None) -> list[ToolInfo]:
    """Every entry of ``custom_tools`` as a :class:`ToolInfo`, in order."""
    return [parse_tool_entry(name, entry) for name, entry in (custom_tools or {}).items()]


def extract_tool_value(entry: Any) -> Any:
    """The value of one ``custom_tools`` entry (``entry["tool"]`` for the dict form)."""
    return parse_tool_entry("", entry).value


def guarded_tool(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a custom tool so that an exception becomes an ``Error: ...`` string for the model."""
    return guard_tool(name, fn)


def format_tools_for_prompt(custom_tools: dict[str, Any] | None) -> str | None:
    """One line per tool for the system prompt, or None when there are none."""
    lines = []
    for tool in parse_custom_tools(custom_tools):
        if tool.description:
            what = tool.description
        elif tool.is_callable or tool.is_code:
            what = "a function"
        else:
            what = f"a {type(tool.value).__name__} value"
        call = "()" if tool.is_callable or tool.is_code else ""
        lines.append(f"- `{tool.name}{call}`: {what}")
    return "\n".join(lines) or None


def validate_custom_tools(custom_tools: dict[str, Any] | None) -> None:
    """Raise ``ConfigurationError`` (a ``ValueError``) if a name is reserved or not an identifier."""

    if not custom_tools:
        return
    if not isinstance(custom_tools, dict):
        raise ConfigurationError(
            f"custom_tools must be a dict of name -> tool, not {type(custom_tools).__name__}"
        )
    conflicts = sorted(set(custom_tools) & RESERVED_TOOL_NAMES)
    if conflicts:
        raise ConfigurationError(
            f"Custom tools cannot use reserved REPL names: {conflicts}. "
            f"Reserved names: {sorted(RESERVED_TOOL_NAMES)}"
        )
    bad = sorted(str(n) for n in custom_tools if not (isinstance(n, str) and n.isidentifier()))
    if bad:
        raise ConfigurationError(f"Custom tool names must be Python identifiers: {bad}")


#: Keyword arguments the RLM itself passes to every environment (not user options).
_SUPPLIED_BY_RLM = frozenset(
    {
        "lm_handler_address",
        "context_payload",
        "depth",
        "persistent",
        "custom_tools",
        "custom_sub_tools",
        "compaction",
        "max_concurrent_subcalls",
        "subcall_fn",
    }
)


def accepted_init_kwargs(cls: type) -> set[str]:
    """The keyword arguments ``cls.__init__`` takes, with those of the classes it passes
    ``**kwargs`` on to."""
    import inspect

    accepted: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters
        accepted |= {
            n
            for n, p in params.items()
            if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        }
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            break  # this __init__ passes nothing further up
    return accepted


def user_options(cls: type) -> str:
    """The environment_kwargs a user may set on ``cls``, for messages."""
    return ", ".join(sorted(accepted_init_kwargs(cls) - _SUPPLIED_BY_RLM))


def check_init_kwargs(cls: type, kwargs: dict[str, Any], also: set[str] | None = None) -> None:
    """Reject environment_kwargs that ``cls`` (and the classes its ``__init__`` passes
    ``**kwargs`` on to) does not take, nor ``also`` names; called when an RLM is constructed."""
    accepted = accepted_init_kwargs(cls) | (also or set())
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        options = ", ".join(sorted(accepted - _SUPPLIED_BY_RLM))
        raise ConfigurationError(
            f"{cls.__name__} got unexpected environment_kwargs: {unknown}. Accepted: {options}"
        )


# ---------------------------------------------------------------------------
# Capabilities
# ---------------------------------------------------------------------------


@runtime_checkable
class SupportsCustomTools(Protocol):
    """An environment that puts ``custom_tools`` into its namespace."""

    custom_tools: dict[str, Any]


@runtime_checkable
class SupportsPersistence(Protocol):
    """An environment that survives across ``completion()`` calls (``persistent=True``).

    Each call adds ``context_N`` (``context`` stays ``context_0``) and each
    finished call adds ``history_N`` (``history`` stays ``history_0``).
    """

    def update_handler_address(self, address: tuple[str, int]) -> None:
        """Point the REPL's model helpers at the handler of the next completion."""

    def add_context(self, context_payload: Any, context_index: int | None = None) -> int:
        """Bind ``context_payload`` as ``context_N`` (the next N by default); returns N."""

    def get_context_count(self) -> int:
        """How many contexts (``context_0``...) the REPL holds."""

    def add_history(
        self, message_history: list[dict[str, Any]], history_index: int | None = None
    ) -> int:
        """Bind a finished call's messages as ``history_N`` (a copy); returns N."""

    def get_history_count(self) -> int:
        """How many histories (``history_0``...) the REPL holds."""


#: capability -> the methods that provide it (read for environments that do not say).
_CAPABILITY_METHODS: dict[str, tuple[str, ...]] = {
    "cell_timeout": (),
    "persistence": (
        "update_handler_address",
        "add_context",
        "get_context_count",
        "add_history",
        "get_history_count",
    ),
    "compaction": ("append_compaction_entry",),
    "live_output": (),
}


def env_supports(env: Any, capability: str) -> bool:
    """Whether ``env`` (an environment or its class) has ``capability``: the one reader of
    the environment contract, for ``"cell_timeout"``, ``"persistence"``, ``"compaction"`` and
    ``"live_output"``.

    It reads the class attribute ``supports_<capability>``; where that is not a bool (a
    class written before the attribute existed, a duck-typed object), it checks that the
    capability's methods are there (``cell_timeout`` and ``live_output`` then count as
    absent).
    """
    try:
        methods = _CAPABILITY_METHODS[capability]
    except KeyError:
        raise ValueError(
            f"Unknown environment capability {capability!r}; known: {sorted(_CAPABILITY_METHODS)}"
        ) from None
    flag = getattr(env, f"supports_{capability}", None)
    if isinstance(flag, bool):
        return flag
    return bool(methods) and all(callable(getattr(env, m, None)) for m in methods)


# ---------------------------------------------------------------------------
# Base classes
# ---------------------------------------------------------------------------


class BaseEnv(ABC):
    """A REPL the RLM loop runs code in.

    Subclasses implement ``setup``, ``load_context`` and ``execute_code``, and should
    release everything in ``cleanup()`` (also called by ``__exit__``). What else they
    offer the loop is said by the three capability attributes below, read by
    :func:`env_supports` (the one place the loop asks).
    """

    #: ``execute_code(code, timeout=...)`` is accepted (the loop passes the time left).
    supports_cell_timeout: bool = False
    #: The :class:`SupportsPersistence` methods (``RLM(persistent=True)``). ``None``: read
    #: from the methods, for subclasses written before this attribute.
    supports_persistence: bool | None = None
    #: ``append_compaction_entry(entry)`` (``compaction=True`` keeps ``history`` in the REPL).
    #: ``None``: read from the method.
    supports_compaction: bool | None = None
    #: ``execute_code(code, timeout=..., on_output=...)`` is accepted: ``on_output(stream,
    #: text)`` gets the cell's output while it runs (see ``LocalREPL.execute_code``).
    supports_live_output: bool = False

    def __init__(
        self,
        persistent: bool = False,
        depth: int = 1,
        max_concurrent_subcalls: int = 4,
        **kwargs: Any,
    ):
        self.persistent = persistent
        self.depth = depth
        self.max_concurrent_subcalls = max_concurrent_subcalls
        self.kwargs = kwargs

    @abstractmethod
    def setup(self) -> None:
        """Create the REPL (namespace, process or sandbox) and its helpers."""

    @abstractmethod
    def load_context(self, context_payload: Any) -> None:
        """Bind the prompt as ``context`` (and ``context_0``), once per completion."""

    @abstractmethod
    def execute_code(self, code: str) -> REPLResult:
        """Run one code block in the REPL and report what it did (never raises for the
        code's own errors: they are in the result)."""

    def resolve_final_var(self, name: str) -> str | None:
        """The value of REPL variable ``name`` as text (for a ``FINAL_VAR(name)`` response line)."""
        result = self.execute_code(f"print(FINAL_VAR({name!r}))")
        text = result.stdout.strip()
        if not text or text.startswith("Error:"):
            return None
        return text

    def interrupt(self) -> None:  # noqa: B027 - optional hook, nothing to stop by default
        """Stop the cell running now, if the environment can (called from another thread
        when a run is cancelled). Must return at once."""

    def cleanup(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release processes, files and sandboxes. Safe to call twice."""

    def __enter__(self) -> BaseEnv:
        return self

    def __exit__(self, *exc: object) -> bool:
        self.cleanup()
        return False


class NonIsolatedEnv(BaseEnv, ABC):
    """Runs model code in (or beside) the host process: convenient, not a security boundary."""


class IsolatedEnv(BaseEnv, ABC):
    """Runs model code somewhere the host's secrets and files cannot be reached."""
