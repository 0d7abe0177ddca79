"""Name -> factory registries, shared by ``backend=`` and ``environment=``.

Built-in entries register exactly as user ones do. Factories made with
:func:`lazy` import their module on first use, so an optional SDK that is
not installed costs nothing until it is asked for, and then fails with one
line naming the pip extra.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from rlm.utils.exceptions import ConfigurationError

T = TypeVar("T")
Factory = Callable[[dict[str, Any]], Any]
Check = Callable[[dict[str, Any]], None]


class Registry(Generic[T]):
    """Named factories of one kind (``"backend"``, ``"environment"``) with optional
    construction-time checks and traits."""

    def __init__(self, kind: str):
        self.kind = kind
        self._factories: dict[str, Callable[[dict[str, Any]], T]] = {}
        self._checks: dict[str, Check] = {}
        self._traits: dict[str, dict[str, Any]] = {}

    def register(
        self,
        name: str,
        factory: Callable[[dict[str, Any]], T],
        check: Check | None = None,
        **traits: Any,
    ) -> None:
        self._factories[name] = factory
        self._checks.pop(name, None)
        if check is not None:
            self._checks[name] = check
        self._traits[name] = traits

    def names(self) -> list[str]:
        return sorted(self._factories)

    def _require(self, name: str) -> Callable[[dict[str, Any]], T]:
        factory = self._factories.get(name)
        if factory is None:
            raise ConfigurationError(
                f"Unknown {self.kind} {name!r}. Available: {', '.join(self.names())}"
            )
        return factory

    def check(self, name: str, kwargs: dict[str, Any]) -> None:
        """Raise ConfigurationError now for an unknown name or options the entry refuses."""
        self._require(name)
        check = self._checks.get(name)
        if check is not None:
            check(dict(kwargs))

    def build(self, name: str, kwargs: dict[str, Any] | None) -> T:
        return self._require(name)(dict(kwargs or {}))

    def trait(self, name: str, key: str, default: Any = None) -> Any:
        return self._traits.get(name, {}).get(key, default)


def _import(module: str, extra: str | None, what: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        hint = f' Install it with: pip install "rlm[{extra}]"' if extra else ""
        raise ConfigurationError(f"{what} could not be imported ({exc}).{hint}") from exc


def lazy(module: str, attr: str, extra: str | None = None, **defaults: Any) -> Factory:
    """A factory calling ``module.attr(**{**defaults, **kwargs})``, importing on first use."""

    def factory(kwargs: dict[str, Any]) -> Any:
        return getattr(_import(module, extra, attr), attr)(**{**defaults, **kwargs})

    return factory


def lazy_check(module: str, attr: str) -> Check:
    """A check calling ``module.attr(kwargs)`` (``attr`` may be ``Class.method``)."""

    def check(kwargs: dict[str, Any]) -> None:
        target: Any = _import(module, None, attr)
        for part in attr.split("."):
            target = getattr(target, part)
        target(kwargs)

    return check
