"""REPL environments and the ``environment=`` registry."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rlm.environments.base_env import (
    RESERVED_TOOL_NAMES,
    BaseEnv,
    IsolatedEnv,
    NonIsolatedEnv,
    SupportsCustomTools,
    SupportsPersistence,
    ToolInfo,
    env_supports,
    extract_tool_value,
    format_tools_for_prompt,
    parse_custom_tools,
    parse_tool_entry,
    validate_custom_tools,
)
from rlm.environments.local_repl import LocalREPL
from rlm.utils.registry import ENVIRONMENT_ENTRY_POINTS, Entry, Registry
from rlm.utils.registry import lazy as _lazy
from rlm.utils.registry import lazy_check as _lazy_check

EnvFactory = Callable[[dict[str, Any]], BaseEnv]

_ENVIRONMENTS: Registry[BaseEnv] = Registry("environment", ENVIRONMENT_ENTRY_POINTS)


def register_environment(
    name: str,
    factory: EnvFactory,
    check_kwargs: Callable[[dict[str, Any]], None] | None = None,
    persistent: bool = False,
) -> None:
    """Make ``environment=name`` build an environment with ``factory(environment_kwargs)``.

    ``check_kwargs(environment_kwargs)``, if given, runs when an RLM is constructed
    and raises on options the environment would refuse later. ``persistent`` answers
    :func:`supports_persistence` for the *name*, before the environment's module (which
    may need an optional SDK) is imported; it must agree with the class's
    ``supports_persistence`` attribute, which :func:`env_supports` reads on the object.
    """
    _ENVIRONMENTS.register(name, factory, check_kwargs, persistent=persistent)


def check_environment_kwargs(environment: str, environment_kwargs: dict[str, Any]) -> None:
    """Fail now (ConfigurationError) on an unknown environment or options it refuses."""
    _ENVIRONMENTS.check(environment, environment_kwargs)


def supports_persistence(environment: str) -> bool:
    """Whether ``environment=`` names an environment that accepts ``persistent=True``."""
    return bool(_ENVIRONMENTS.trait(environment, "persistent", False))


def available_environments() -> list[str]:
    """The names ``environment=`` accepts (plugins included), sorted."""
    return _ENVIRONMENTS.names()


def environment_entries() -> list[Entry]:
    """Every environment with where it comes from: built-in, registered, or a plugin of
    the ``rlm.environments`` entry-point group (``rlm environments`` prints this)."""
    return _ENVIRONMENTS.entries()


def get_environment(environment: str, environment_kwargs: dict[str, Any] | None) -> BaseEnv:
    """Build the environment called ``environment``."""
    return _ENVIRONMENTS.build(environment, environment_kwargs)


register_environment(
    "local", lambda kwargs: LocalREPL(**kwargs), LocalREPL.check_kwargs, persistent=True
)
# Isolated environments: one worker program (worker.py) and one host driver (isolated.py).
register_environment(
    "subprocess",
    _lazy("rlm.environments.subprocess_repl", "SubprocessREPL"),
    _lazy_check("rlm.environments.subprocess_repl", "SubprocessREPL.check_kwargs"),
    persistent=True,
)
register_environment(
    "docker",
    _lazy("rlm.environments.docker_repl", "DockerREPL"),
    _lazy_check("rlm.environments.docker_repl", "DockerREPL.check_kwargs"),
    persistent=True,
)

# IPython syntax, in this process or in the subprocess worker (mode="kernel").
register_environment(
    "ipython",
    _lazy("rlm.environments.ipython_repl", "make_ipython", "ipython"),
    _lazy_check("rlm.environments.ipython_repl", "check_kwargs"),
    persistent=True,
)
# Cloud sandboxes: thin transports over the same worker (rlm/environments/sandbox.py).
for _name, _module, _cls in (
    ("modal", "modal_repl", "ModalREPL"),
    ("e2b", "e2b_repl", "E2BREPL"),
    ("daytona", "daytona_repl", "DaytonaREPL"),
    ("prime", "prime_repl", "PrimeREPL"),
):
    register_environment(
        _name,
        _lazy(f"rlm.environments.{_module}", _cls, _name),
        _lazy_check(f"rlm.environments.{_module}", f"{_cls}.check_kwargs"),
        persistent=True,
    )
_ENVIRONMENTS.seal_builtins()


def __getattr__(name: str) -> Any:
    # IPythonREPL (rlms exports it here) is imported on first use: IPython is an extra.
    if name == "IPythonREPL":
        from rlm.environments.ipython_repl import IPythonREPL

        return IPythonREPL
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "RESERVED_TOOL_NAMES",
    "BaseEnv",
    "IPythonREPL",
    "IsolatedEnv",
    "LocalREPL",
    "NonIsolatedEnv",
    "SupportsCustomTools",
    "SupportsPersistence",
    "ToolInfo",
    "available_environments",
    "check_environment_kwargs",
    "env_supports",
    "environment_entries",
    "supports_persistence",
    "extract_tool_value",
    "format_tools_for_prompt",
    "get_environment",
    "parse_custom_tools",
    "parse_tool_entry",
    "register_environment",
    "validate_custom_tools",
]
