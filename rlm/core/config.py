"""An RLM's configuration: one frozen object, built and checked once from the constructor.

``RLMConfig.from_arguments(**constructor_arguments)`` checks every value (raising
``ConfigurationError`` as rlms would) and normalises the ones the loop reads (copied
dicts, ``sampling_args`` merged into ``backend_kwargs``, ``sub_sampling_args`` into the
first ``other_backend_kwargs``). A child's configuration is ``dataclasses.replace`` of its
parent's; :meth:`RLMConfig.child_arguments` turns it back into the keyword arguments
rlms passes ``RLM(...)`` for a child. :class:`ConfigAttributes` gives the RLM its rlms
attributes (``rlm.max_iterations``...) as properties that read and replace the config.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from rlm.environments import (
    available_environments,
    check_environment_kwargs,
    supports_persistence,
    validate_custom_tools,
)
from rlm.utils.exceptions import ConfigurationError

#: The keyword arguments of a child ``RLM(...)``, in rlms' order (constructor name first,
#: then the config field it comes from when that differs).
_CHILD_ARGUMENTS = (
    *("backend", "backend_kwargs", ("environment", "environment_type"), "environment_kwargs"),
    *("depth", "max_depth", "max_iterations", "max_budget", "max_timeout", "max_tokens"),
    *("max_errors", "custom_system_prompt", "other_backends", "other_backend_kwargs"),
    *("logger", "verbose", "custom_tools", "custom_sub_tools", "compaction"),
    *("compaction_threshold_pct", "max_concurrent_subcalls", "on_subcall_start"),
    *("on_subcall_complete", "on_iteration_start", "on_iteration_complete", "orchestrator"),
    *("user_prologue", "max_concurrent_lm_calls", "depth_models", "context_window"),
    *("small_model", "stop_at_block_end", "feedback", "verify_answer", "sub_window_tokens"),
)


@dataclass(frozen=True)
class RLMConfig:
    """Everything an ``RLM`` was configured with (see ``docs/api.md`` for each field)."""

    backend: Any = "openai"
    backend_kwargs: dict[str, Any] = field(default_factory=dict)
    environment_type: Any = "local"
    environment_kwargs: dict[str, Any] = field(default_factory=dict)
    depth: int = 0
    max_depth: int = 1
    max_iterations: int = 30
    max_budget: float | None = None
    max_timeout: float | None = None
    max_tokens: int | None = None
    max_errors: int | None = None
    custom_system_prompt: str | None = None
    other_backends: list[Any] | None = None
    other_backend_kwargs: list[dict[str, Any]] | None = None
    logger: Any = None
    verbose: bool = False
    persistent: bool = False
    custom_tools: dict[str, Any] | None = None
    custom_sub_tools: dict[str, Any] | None = None
    compaction: bool = False
    compaction_threshold_pct: float = 0.85
    max_concurrent_subcalls: int = 4
    on_subcall_start: Callable[[int, str, str], None] | None = None
    on_subcall_complete: Callable[[int, str, float, str | None], None] | None = None
    on_iteration_start: Callable[[int, int], None] | None = None
    on_iteration_complete: Callable[[int, int, float], None] | None = None
    sampling_args: dict[str, Any] | None = None
    sub_sampling_args: dict[str, Any] | None = None
    orchestrator: bool = True
    user_prologue: str | None = None
    max_concurrent_lm_calls: int | None = None
    depth_models: dict[int, str] = field(default_factory=dict)
    context_window: int | None = None
    small_model: bool | None = None
    stop_at_block_end: bool | None = None
    feedback: bool | None = None
    verify_answer: bool | None = None
    sub_window_tokens: int | None = None

    @classmethod
    def from_arguments(cls, environment: Any = "local", **args: Any) -> RLMConfig:
        """Check the ``RLM(...)`` arguments (ConfigurationError) and normalise them."""
        _check_numbers(args)
        if not 0 < args["compaction_threshold_pct"] <= 1:
            raise ConfigurationError("compaction_threshold_pct must be in (0, 1]")
        environment_kwargs = dict(args.pop("environment_kwargs") or {})
        check_environment_kwargs(str(environment), environment_kwargs)
        if args["persistent"] and not supports_persistence(str(environment)):
            supported = [e for e in available_environments() if supports_persistence(e)]
            raise ConfigurationError(
                f"persistent=True is not supported by environment {environment!r}; "
                f"supported: {supported}"
            )
        validate_custom_tools(args["custom_tools"])
        validate_custom_tools(args["custom_sub_tools"])
        backend_kwargs, other_backends, other_kwargs = _backends(args)
        for name in ("context_window", "sub_window_tokens"):
            window = args[name]
            if window is not None and (not isinstance(window, int) or window < 1):
                raise ConfigurationError(f"{name} must be a positive number of tokens")
        for name in ("small_model", "stop_at_block_end", "feedback", "verify_answer"):
            if args[name] not in (None, True, False):
                raise ConfigurationError(f"{name} must be True, False or None, got {args[name]!r}")
        if args["custom_sub_tools"] is None:
            args["custom_sub_tools"] = args["custom_tools"]
        args.update(
            backend_kwargs=backend_kwargs,
            other_backends=other_backends,
            other_backend_kwargs=other_kwargs,
            depth_models=dict(args["depth_models"] or {}),
        )
        return cls(environment_type=environment, environment_kwargs=environment_kwargs, **args)

    def child(self, **changes: Any) -> RLMConfig:
        """This configuration one level down, with ``changes`` (``dataclasses.replace``)."""
        return replace(self, depth=self.depth + 1, verbose=False, **changes)

    def child_arguments(self) -> dict[str, Any]:
        """The keyword arguments rlms passes ``RLM(...)`` for a child with this config."""
        pairs = (item if isinstance(item, tuple) else (item, item) for item in _CHILD_ARGUMENTS)
        return {name: getattr(self, source) for name, source in pairs}


def _check_numbers(values: dict[str, Any]) -> None:
    depth = values["depth"]
    if not isinstance(depth, int) or depth < 0:
        raise ConfigurationError(f"depth must be an integer >= 0, got {depth!r}")
    for name in (
        "max_depth",
        "max_iterations",
        "max_concurrent_subcalls",
        "max_concurrent_lm_calls",
    ):
        if name == "max_concurrent_lm_calls" and values[name] is None:
            continue  # None: llm_query_batched adapts (rlm.comms.adaptive)
        if not isinstance(values[name], int) or values[name] < 1:
            raise ConfigurationError(f"{name} must be an integer >= 1, got {values[name]!r}")
    for name in ("max_budget", "max_timeout", "max_tokens", "max_errors"):
        value = values[name]
        if value is not None and (not isinstance(value, (int, float)) or value <= 0):
            raise ConfigurationError(f"{name} must be a positive number or None, got {value!r}")


def _backends(args: dict[str, Any]) -> tuple[dict[str, Any], list[Any] | None, Any]:
    """``backend_kwargs`` with ``sampling_args`` merged in, and the other backends with
    their kwargs (one dict each; ``sub_sampling_args`` merged into the first)."""
    backend_kwargs = dict(args["backend_kwargs"] or {})
    sampling_args, sub_sampling_args = args["sampling_args"], args["sub_sampling_args"]
    if sampling_args:
        backend_kwargs["sampling_args"] = {
            **(backend_kwargs.get("sampling_args") or {}),
            **sampling_args,
        }
    others = list(args["other_backends"]) if args["other_backends"] else None
    given = args["other_backend_kwargs"]
    other_kwargs = [dict(kw or {}) for kw in given] if given else None
    if others and other_kwargs is None:
        other_kwargs = [{} for _ in others]
    if others and len(others) != len(other_kwargs or []):
        raise ConfigurationError(
            f"other_backends has {len(others)} entries but other_backend_kwargs has "
            f"{len(other_kwargs or [])}; give one kwargs dict per backend"
        )
    if sub_sampling_args:
        if not others:
            # Sub-calls get their own client, configured like the root one.
            others = [args["backend"]]
            other_kwargs = [{k: v for k, v in backend_kwargs.items() if k != "sampling_args"}]
        assert other_kwargs is not None
        first = other_kwargs[0]
        first["sampling_args"] = {**(first.get("sampling_args") or {}), **sub_sampling_args}
    return backend_kwargs, others, other_kwargs


class ConfigAttributes:
    """rlms' attributes of an RLM (``rlm.backend``, ``rlm.max_iterations``...), read from
    and written to its frozen ``_config`` (a write replaces the config, unchecked, as a
    plain attribute write was in rlms). ``verbose`` is the RLM's printer, not a field."""

    _config: RLMConfig

    if TYPE_CHECKING:

        def __getattr__(self, name: str) -> Any: ...


def _config_property(name: str) -> property:
    def get(self: ConfigAttributes) -> Any:
        return getattr(self._config, name)

    def set_(self: ConfigAttributes, value: Any) -> None:
        self._config = replace(self._config, **{name: value})

    return property(get, set_, doc=f"The ``{name}`` of this RLM's configuration.")


for _field in fields(RLMConfig):
    if _field.name != "verbose":
        setattr(ConfigAttributes, _field.name, _config_property(_field.name))
