"""Name -> factory registries, shared by ``backend=`` and ``environment=``.

Built-in entries register exactly as user ones do. Factories made with
:func:`lazy` import their module on first use, so an optional SDK that is
not installed costs nothing until it is asked for, and then fails with one
line naming the pip extra.

Third-party packages add entries through ``importlib.metadata`` entry points
(:data:`BACKEND_ENTRY_POINTS`, :data:`ENVIRONMENT_ENTRY_POINTS`), e.g. in their
``pyproject.toml``::

    [project.entry-points."rlm.backends"]
    acme = "acme_rlm:AcmeClient"          # a BaseLM subclass, or a factory(kwargs)

    [project.entry-points."rlm.environments"]
    acme = "acme_rlm.env:AcmeREPL"        # a BaseEnv subclass, or a factory(kwargs)

The entry points are read (not imported) the first time a registry is asked
for a name it lacks or for its list; a plugin's module is imported only when
its name is used. A built-in or explicitly registered name wins over a plugin
of the same name.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from rlm.utils.exceptions import ConfigurationError

T = TypeVar("T")
Factory = Callable[[dict[str, Any]], Any]
Check = Callable[[dict[str, Any]], None]


#: Entry-point group for third-party ``backend=`` names.
BACKEND_ENTRY_POINTS = "rlm.backends"
#: Entry-point group for third-party ``environment=`` names.
ENVIRONMENT_ENTRY_POINTS = "rlm.environments"


@dataclass(frozen=True)
class Entry:
    """One name in a registry, as ``rlm backends`` / ``rlm environments`` list it."""

    name: str
    #: ``"built-in"``, ``"registered"`` (register_* at run time) or ``"plugin"``.
    source: str
    #: For a plugin: ``"dist-name version: module:attr"``; for a built-in: the pip extra
    #: it needs, if any.
    detail: str = ""


def _adapt(obj: Any) -> tuple[Callable[[dict[str, Any]], Any], Check | None, dict[str, Any]]:
    """A plugin's object as (factory, check, traits): a class is called with the kwargs
    (its ``check_kwargs`` classmethod is the check, its ``supports_persistence``
    attribute the persistent trait); any other callable is the factory itself."""
    if isinstance(obj, type):
        check = getattr(obj, "check_kwargs", None)
        traits = {"persistent": bool(getattr(obj, "supports_persistence", False))}
        return (lambda kwargs: obj(**kwargs)), check if callable(check) else None, traits
    if callable(obj):
        return obj, None, {"persistent": bool(getattr(obj, "supports_persistence", False))}
    raise TypeError(f"{obj!r} is neither a class nor a factory function")


class Registry(Generic[T]):
    """Named factories of one kind (``"backend"``, ``"environment"``) with optional
    construction-time checks and traits, plus the plugins of an entry-point group."""

    def __init__(self, kind: str, entry_point_group: str | None = None):
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._factories: dict[str, Callable[[dict[str, Any]], T]] = {}
        self._checks: dict[str, Check] = {}
        self._traits: dict[str, dict[str, Any]] = {}
        self._sources: dict[str, Entry] = {}
        self._plugins: dict[str, importlib.metadata.EntryPoint] | None = None
        self._frozen = False  # after the built-ins: later registrations are "registered"

    def seal_builtins(self) -> None:
        """Mark every name registered so far as built-in (the package calls this once)."""
        self._frozen = True

    def _scan(self) -> dict[str, importlib.metadata.EntryPoint]:
        if self._plugins is None:
            found: dict[str, importlib.metadata.EntryPoint] = {}
            if self.entry_point_group:
                try:
                    points = importlib.metadata.entry_points(group=self.entry_point_group)
                except Exception:  # a broken distribution's metadata must not break us
                    points = ()  # type: ignore[assignment]
                for point in points:
                    found.setdefault(point.name, point)
            self._plugins = found
        return self._plugins

    def _load_plugin(self, name: str) -> bool:
        """Register the plugin called ``name`` (importing it) if there is one."""
        point = self._scan().get(name)
        if point is None or name in self._factories:
            return False
        try:
            factory, check, traits = _adapt(point.load())
        except Exception as exc:
            raise ConfigurationError(
                f"The {self.kind} plugin {name!r} ({point.value}, entry point group "
                f"{self.entry_point_group!r}) could not be loaded: {exc}"
            ) from exc
        self._factories[name] = factory
        if check is not None:
            self._checks[name] = check
        self._traits[name] = traits
        dist = getattr(point, "dist", None)
        origin = f"{dist.name} {dist.version}: " if dist is not None else ""
        self._sources[name] = Entry(name, "plugin", f"{origin}{point.value}")
        return True

    def entries(self) -> list[Entry]:
        """Every name, built-in, registered or plugin (plugins are not imported)."""
        out = {name: self._sources.get(name, Entry(name, "built-in")) for name in self._factories}
        for name, point in self._scan().items():
            if name not in out:
                dist = getattr(point, "dist", None)
                origin = f"{dist.name} {dist.version}: " if dist is not None else ""
                out[name] = Entry(name, "plugin", f"{origin}{point.value}")
        return [out[name] for name in sorted(out)]

    def register(
        self,
        name: str,
        factory: Callable[[dict[str, Any]], T],
        check: Check | None = None,
        **traits: Any,
    ) -> None:
        """Make ``name`` build with ``factory(kwargs)``; ``check(kwargs)`` runs at
        construction; ``traits`` answer :meth:`trait`. Replaces an earlier entry."""
        self._factories[name] = factory
        source = "built-in" if not self._frozen else "registered"
        self._sources[name] = Entry(name, source, traits.pop("extra", None) or "")
        self._checks.pop(name, None)
        if check is not None:
            self._checks[name] = check
        self._traits[name] = traits

    def names(self) -> list[str]:
        """Every name this registry builds, plugins included, sorted."""
        return sorted(set(self._factories) | set(self._scan()))

    def _require(self, name: str) -> Callable[[dict[str, Any]], T]:
        factory = self._factories.get(name)
        if factory is None and self._load_plugin(name):
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
        """Build the entry called ``name`` with (a copy of) ``kwargs``."""
        return self._require(name)(dict(kwargs or {}))

    def trait(self, name: str, key: str, default: Any = None) -> Any:
        """A trait given at registration (e.g. ``persistent``), or ``default``."""
        if name not in self._factories:
            self._load_plugin(name)
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
