"""REPL environments and the ``environment=`` registry."""

from __future__ import annotations

import importlib
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
    extract_tool_value,
    format_tools_for_prompt,
    parse_custom_tools,
    parse_tool_entry,
    validate_custom_tools,
)
from rlm.environments.local_repl import LocalREPL
from rlm.utils.exceptions import ConfigurationError

EnvFactory = Callable[[dict[str, Any]], BaseEnv]

_REGISTRY: dict[str, EnvFactory] = {}
_CHECKS: dict[str, Callable[[dict[str, Any]], None]] = {}


def register_environment(
    name: str, factory: EnvFactory, check_kwargs: Callable[[dict[str, Any]], None] | None = None
) -> None:
    """Make ``environment=name`` build an environment with ``factory(environment_kwargs)``.

    ``check_kwargs(environment_kwargs)``, if given, runs when an RLM is constructed
    and raises on options the environment would refuse later.
    """
    _REGISTRY[name] = factory
    if check_kwargs is not None:
        _CHECKS[name] = check_kwargs


def check_environment_kwargs(environment: str, environment_kwargs: dict[str, Any]) -> None:
    """Fail now (ConfigurationError) on an unknown environment or options it refuses."""
    if environment not in _REGISTRY:
        raise ConfigurationError(
            f"Unknown environment {environment!r}. Available: {', '.join(available_environments())}"
        )
    check = _CHECKS.get(environment)
    if check is not None:
        check(environment_kwargs)


def available_environments() -> list[str]:
    return sorted(_REGISTRY)


def get_environment(environment: str, environment_kwargs: dict[str, Any] | None) -> BaseEnv:
    """Build the environment called ``environment``."""
    factory = _REGISTRY.get(environment)
    if factory is None:
        raise ConfigurationError(
            f"Unknown environment {environment!r}. Available: {', '.join(available_environments())}"
        )
    return factory(dict(environment_kwargs or {}))


def _lazy(module: str, cls: str, extra: str | None = None) -> EnvFactory:
    def factory(kwargs: dict[str, Any]) -> BaseEnv:
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:
            hint = f' Install it with: pip install "rlm[{extra}]"' if extra else ""
            raise ConfigurationError(f"{cls} could not be imported ({exc}).{hint}") from exc
        return getattr(mod, cls)(**kwargs)

    return factory


def _lazy_check(module: str, cls: str) -> Callable[[dict[str, Any]], None]:
    def check(kwargs: dict[str, Any]) -> None:
        getattr(importlib.import_module(module), cls).check_kwargs(kwargs)

    return check


register_environment("local", lambda kwargs: LocalREPL(**kwargs), LocalREPL.check_kwargs)
# Isolated environments: one worker program (worker.py) and one host driver (isolated.py).
register_environment(
    "subprocess",
    _lazy("rlm.environments.subprocess_repl", "SubprocessREPL"),
    _lazy_check("rlm.environments.subprocess_repl", "SubprocessREPL"),
)
register_environment(
    "docker",
    _lazy("rlm.environments.docker_repl", "DockerREPL"),
    _lazy_check("rlm.environments.docker_repl", "DockerREPL"),
)

__all__ = [
    "RESERVED_TOOL_NAMES",
    "BaseEnv",
    "IsolatedEnv",
    "LocalREPL",
    "NonIsolatedEnv",
    "SupportsCustomTools",
    "SupportsPersistence",
    "ToolInfo",
    "available_environments",
    "check_environment_kwargs",
    "extract_tool_value",
    "format_tools_for_prompt",
    "get_environment",
    "parse_custom_tools",
    "parse_tool_entry",
    "register_environment",
    "validate_custom_tools",
]
