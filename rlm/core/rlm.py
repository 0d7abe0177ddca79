"""The RLM loop.

``RLM(...).completion(prompt)`` puts ``prompt`` into a REPL as ``context``,
lets the root model write ```repl code that inspects it and calls sub-models,
and returns the answer the model submits, as an :class:`RLMChatCompletion`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

from rlm.clients import BaseLM, get_client
from rlm.clients.base_lm import call_client, reports_usage_per_call
from rlm.clients.pricing import check_budget_prices
from rlm.core.limiter import CallLimiter
from rlm.core.lm_handler import LMHandler
from rlm.core.types import (
    ClientBackend,
    CodeBlock,
    EnvironmentType,
    QueryMetadata,
    RLMChatCompletion,
    RLMIteration,
    RLMMetadata,
    UsageSummary,
)
from rlm.environments import (
    BaseEnv,
    SupportsPersistence,
    available_environments,
    check_environment_kwargs,
    get_environment,
    supports_persistence,
    validate_custom_tools,
)
from rlm.logger import RLMLogger, VerbosePrinter
from rlm.utils.exceptions import (
    BudgetExceededError,
    CancellationError,
    ConfigurationError,
    ErrorThresholdExceededError,
    LimitExceededError,
    TimeoutExceededError,
    TokenLimitExceededError,
)
from rlm.utils.parsing import find_code_blocks, find_final_answer, format_iteration
from rlm.utils.prompts import (
    COMPACTION_NOTE,
    RLM_SYSTEM_PROMPT,
    build_after_compaction_prompt,
    build_compaction_prompt,
    build_final_answer_prompt,
    build_rlm_system_prompt,
    build_user_prompt,
)
from rlm.utils.rlm_utils import collect_secrets, is_sensitive_key, redact, register_secrets
from rlm.utils.token_utils import context_window_for, count_tokens


def _loggable(value: Any) -> Any:
    """``value`` for the log's metadata: credential-named keys dropped at every level (as
    rlms does; ``max_tokens`` is a setting, ``api_key`` a credential), and every known
    secret redacted by value wherever else it appears (a header, a URL, setup code)."""

    def drop(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: drop(x) for k, x in v.items() if not is_sensitive_key(str(k))}
        if isinstance(v, (list, tuple)):
            return [drop(x) for x in v]
        return v

    return redact(drop(value))


#: How often a wait for the root model wakes to check cancellation and the deadline (s).
_ROOT_WAIT_SLICE = 0.25


def _error_completion(model: str, prompt: Any, message: str, start: float) -> RLMChatCompletion:
    return RLMChatCompletion(
        root_model=model,
        prompt=prompt,
        response=message,
        usage_summary=UsageSummary(),
        execution_time=time.perf_counter() - start,
        error=message,
    )


def _fire(callback: Callable[..., Any] | None, *args: Any) -> None:
    """Call a user callback; a callback that raises never breaks the run."""
    if callback is None:
        return
    try:
        callback(*args)
    except Exception:
        pass


class _Run:
    """The state of one completion() call (so concurrent calls on one RLM do not mix).

    A child RLM's run points at its parent's: cancellation and deadlines flow
    down the tree, and limit checks walk up it.
    """

    def __init__(self, rlm: RLM, parent: _Run | None = None):
        self.rlm = rlm
        self.parent = parent
        self.start = time.perf_counter()
        own = self.start + rlm.max_timeout if rlm.max_timeout is not None else None
        inherited = parent.deadline if parent is not None else None
        self.deadline = (
            min(d for d in (own, inherited) if d is not None) if (own or inherited) else None
        )
        self.cancelled = threading.Event()
        self.best_partial: str | None = None
        self.consecutive_errors = 0
        self.last_error: str | None = None
        self.iteration = 0
        self.handler: LMHandler | None = None
        self.env: BaseEnv | None = None
        # Size of the root history as last measured by the provider (for compaction).
        self.measured_tokens: int | None = None
        self.measured_messages = 0
        self.last_root_usage: UsageSummary | None = None
        self.children: set[_Run] = set()
        self.children_lock = threading.Lock()

    def chain(self) -> list[_Run]:
        runs, node = [], self
        while node is not None:
            runs.append(node)
            node = node.parent
        return runs

    def is_cancelled(self) -> bool:
        return any(r.cancelled.is_set() for r in self.chain())

    def cancel(self) -> None:
        """Cancel from another thread: later checks raise, and the running cells of this
        run and of every live child run are stopped."""
        self.cancelled.set()
        env = self.env
        if env is not None:
            env.interrupt()
        with self.children_lock:
            children = list(self.children)
        for child in children:
            child.cancel()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def remaining(self) -> float | None:
        if self.deadline is None:
            return None
        return self.deadline - time.perf_counter()


class RLM:
    """A Recursive Language Model: a drop-in ``completion()`` for prompts of any size.

    The constructor takes the same arguments as the public ``rlms`` package;
    see ``docs/api.md`` for each one. Clients are built (and configuration
    checked) here, so a missing key or an unknown backend fails at once.
    """

    def __init__(
        self,
        backend: ClientBackend | str = "openai",
        backend_kwargs: dict[str, Any] | None = None,
        environment: EnvironmentType | str = "local",
        environment_kwargs: dict[str, Any] | None = None,
        depth: int = 0,
        max_depth: int = 1,
        max_iterations: int = 30,
        max_budget: float | None = None,
        max_timeout: float | None = None,
        max_tokens: int | None = None,
        max_errors: int | None = None,
        custom_system_prompt: str | None = None,
        other_backends: list[ClientBackend | str] | None = None,
        other_backend_kwargs: list[dict[str, Any]] | None = None,
        logger: RLMLogger | None = None,
        verbose: bool = False,
        persistent: bool = False,
        custom_tools: dict[str, Any] | None = None,
        custom_sub_tools: dict[str, Any] | None = None,
        compaction: bool = False,
        compaction_threshold_pct: float = 0.85,
        max_concurrent_subcalls: int = 4,
        on_subcall_start: Callable[[int, str, str], None] | None = None,
        on_subcall_complete: Callable[[int, str, float, str | None], None] | None = None,
        on_iteration_start: Callable[[int, int], None] | None = None,
        on_iteration_complete: Callable[[int, int, float], None] | None = None,
        sampling_args: dict[str, Any] | None = None,
        sub_sampling_args: dict[str, Any] | None = None,
        orchestrator: bool = True,
        user_prologue: str | None = None,
        max_concurrent_lm_calls: int = 16,
        depth_models: dict[int, str] | None = None,
        context_window: int | None = None,
    ):
        self._validate_numbers(
            depth=depth,
            max_depth=max_depth,
            max_iterations=max_iterations,
            max_budget=max_budget,
            max_timeout=max_timeout,
            max_tokens=max_tokens,
            max_errors=max_errors,
            max_concurrent_subcalls=max_concurrent_subcalls,
            max_concurrent_lm_calls=max_concurrent_lm_calls,
        )
        if not 0 < compaction_threshold_pct <= 1:
            raise ConfigurationError("compaction_threshold_pct must be in (0, 1]")
        check_environment_kwargs(str(environment), dict(environment_kwargs or {}))
        if persistent and not supports_persistence(str(environment)):
            supported = [e for e in available_environments() if supports_persistence(e)]
            raise ConfigurationError(
                f"persistent=True is not supported by environment {environment!r}; "
                f"supported: {supported}"
            )
        validate_custom_tools(custom_tools)
        validate_custom_tools(custom_sub_tools)

        backend_kwargs = dict(backend_kwargs or {})
        if sampling_args:
            backend_kwargs["sampling_args"] = {
                **(backend_kwargs.get("sampling_args") or {}),
                **sampling_args,
            }
        other_backends = list(other_backends) if other_backends else None
        other_backend_kwargs = (
            [dict(kw or {}) for kw in other_backend_kwargs] if other_backend_kwargs else None
        )
        if other_backends and other_backend_kwargs is None:
            other_backend_kwargs = [{} for _ in other_backends]
        if other_backends and len(other_backends) != len(other_backend_kwargs or []):
            raise ConfigurationError(
                f"other_backends has {len(other_backends)} entries but other_backend_kwargs has "
                f"{len(other_backend_kwargs or [])}; give one kwargs dict per backend"
            )
        if sub_sampling_args:
            if not other_backends:
                # Sub-calls get their own client, configured like the root one.
                other_backends = [backend]
                other_backend_kwargs = [
                    {k: v for k, v in backend_kwargs.items() if k != "sampling_args"}
                ]
            assert other_backend_kwargs is not None
            first = other_backend_kwargs[0]
            first["sampling_args"] = {**(first.get("sampling_args") or {}), **sub_sampling_args}

        self.backend = backend
        self.backend_kwargs = backend_kwargs
        self.environment_type = environment
        self.environment_kwargs = dict(environment_kwargs or {})
        self.other_backends = other_backends
        self.other_backend_kwargs = other_backend_kwargs
        self.depth = depth
        self.max_depth = max_depth
        self.max_iterations = max_iterations
        self.max_budget = max_budget
        self.max_timeout = max_timeout
        self.max_tokens = max_tokens
        self.max_errors = max_errors
        self.custom_system_prompt = custom_system_prompt
        self.system_prompt = custom_system_prompt or RLM_SYSTEM_PROMPT
        self.logger = logger
        self.verbose = VerbosePrinter(enabled=verbose)
        self.persistent = persistent
        self.custom_tools = custom_tools
        self.custom_sub_tools = custom_sub_tools if custom_sub_tools is not None else custom_tools
        self.compaction = compaction
        self.compaction_threshold_pct = compaction_threshold_pct
        self.max_concurrent_subcalls = max_concurrent_subcalls
        self.max_concurrent_lm_calls = max_concurrent_lm_calls
        self.depth_models = dict(depth_models or {})
        self.context_window = context_window
        self.on_subcall_start = on_subcall_start
        self.on_subcall_complete = on_subcall_complete
        self.on_iteration_start = on_iteration_start
        self.on_iteration_complete = on_iteration_complete
        self.sampling_args = sampling_args
        self.sub_sampling_args = sub_sampling_args
        self.orchestrator = orchestrator
        self.user_prologue = user_prologue

        # Clients are built at the first completion(), as in rlms: RLM(...) constructs without
        # an API key, and a patch of rlm.core.rlm.get_client made after construction applies.
        self._client_cache: tuple[Any, BaseLM, list[BaseLM]] | None = None
        self._clients_lock = threading.Lock()
        self._persistent_env: BaseEnv | None = None
        self._persistent_lock = threading.Lock()
        # The run whose REPL a persistent environment's subcall_fn serves.
        self._persistent_run: _Run | None = None
        # rlms' private seams, kept for code (and tests) that use them.
        self._completion_start_time: float | None = None
        self._compat_run: _Run | None = None
        if context_window is not None and (
            not isinstance(context_window, int) or context_window < 1
        ):
            raise ConfigurationError("context_window must be a positive number of tokens")

        # Every secret given to a client or an environment is redacted by value wherever it
        # would be logged or printed, with or without a logger.
        register_secrets(collect_secrets(backend_kwargs, other_backend_kwargs, environment_kwargs))
        # The log's first line, written here as rlms does when the model is named; when the
        # backend picks its own default model, at the first completion (once it is known).
        self._metadata_logged = False
        if self.logger is not None and self.backend_kwargs.get("model_name"):
            self._log_metadata()

    # ------------------------------------------------------------------ clients

    def _clients(self) -> tuple[BaseLM, list[BaseLM]]:
        """The root client and the ``other_backends`` clients, built on first use.

        They are built with this module's ``get_client`` as it is *now*, and rebuilt when
        that name has been patched since (what users' tests do); otherwise they are reused
        across completions. A child RLM uses its parent's clients (pinned).
        """
        factory = get_client
        cache = self._client_cache
        if cache is not None and (cache[0] is None or cache[0] is factory):
            return cache[1], cache[2]
        with self._clients_lock:
            cache = self._client_cache
            if cache is not None and (cache[0] is None or cache[0] is factory):
                return cache[1], cache[2]
            root = factory(self.backend, self.backend_kwargs)
            others = [
                factory(b, kw)
                for b, kw in zip(
                    self.other_backends or [], self.other_backend_kwargs or [], strict=True
                )
            ]
            known = {getattr(c, "model_name", None) for c in (root, *others)}
            unknown = {d: m for d, m in self.depth_models.items() if m not in known}
            if unknown:
                raise ConfigurationError(
                    f"depth_models names models no client serves: {unknown}; "
                    f"known: {sorted(str(k) for k in known)}"
                )
            if self.max_budget is not None and self.depth == 0:
                # A budget must count every call: refuse a model with no known price (a
                # price, or prices={name: "unpriced"} to opt out, lifts it).
                check_budget_prices([root, *others])
            self._client_cache = (factory, root, others)
            return root, others

    @property
    def client(self) -> BaseLM:
        """The root model's client (built on first use)."""
        return self._clients()[0]

    @client.setter
    def client(self, value: BaseLM) -> None:
        others = self._client_cache[2] if self._client_cache is not None else []
        self._client_cache = (None, value, others)

    @property
    def other_clients(self) -> list[BaseLM]:
        """Clients of ``other_backends``, in order (built on first use)."""
        return self._clients()[1]

    @staticmethod
    def _validate_numbers(**values: Any) -> None:
        for name in ("depth",):
            if not isinstance(values[name], int) or values[name] < 0:
                raise ConfigurationError(f"{name} must be an integer >= 0, got {values[name]!r}")
        for name in (
            "max_depth",
            "max_iterations",
            "max_concurrent_subcalls",
            "max_concurrent_lm_calls",
        ):
            if not isinstance(values[name], int) or values[name] < 1:
                raise ConfigurationError(f"{name} must be an integer >= 1, got {values[name]!r}")
        for name in ("max_budget", "max_timeout", "max_tokens", "max_errors"):
            value = values[name]
            if value is not None and (not isinstance(value, (int, float)) or value <= 0):
                raise ConfigurationError(f"{name} must be a positive number or None, got {value!r}")

    # ------------------------------------------------------------------ helpers

    @property
    def root_model(self) -> str:
        """The configured ``model_name`` (as rlms reports it), else the client's own default."""
        configured = self.backend_kwargs.get("model_name")
        if isinstance(configured, str) and configured:
            return configured
        cache = self._client_cache
        name = getattr(cache[1], "model_name", None) if cache is not None else None
        # A stand-in client (e.g. a unittest.mock.Mock in a user's tests) has no real name.
        return name if isinstance(name, str) else "unknown"

    def _log_metadata(self) -> None:
        if self.logger is not None and not self._metadata_logged:
            self._metadata_logged = True
            self.logger.log_metadata(self._metadata())

    def _metadata(self) -> RLMMetadata:
        return RLMMetadata(
            root_model=self.root_model,
            max_depth=self.max_depth,
            max_iterations=self.max_iterations,
            backend=str(self.backend),
            backend_kwargs=_loggable(self.backend_kwargs),
            environment_type=str(self.environment_type),
            environment_kwargs=_loggable(self.environment_kwargs),
            other_backends=[str(b) for b in self.other_backends] if self.other_backends else None,
        )

    def _make_handler(self, run: _Run) -> LMHandler:
        root, others = self._clients()
        parent = run.parent.handler if run.parent is not None else None
        handler = LMHandler(
            root,
            other_backend_client=others[0] if others else None,
            batch_max_concurrent=self.max_concurrent_lm_calls,
            limiter=None if parent is not None else CallLimiter(self.max_concurrent_lm_calls),
            depth_models=self.depth_models,
        )
        if parent is not None:
            handler.attach_to(parent)  # one usage tree, one concurrency cap
        for client in others:
            handler.register_client(client.model_name, client)
        handler.guard = lambda request: self._refusal(run)
        # The child's depth is decided here, from this run, never from the request.
        handler.subcall_fn = lambda prompt, model, _depth: self._subcall(prompt, model, _run=run)
        run.handler = handler
        return handler

    @staticmethod
    def _refusal(run: _Run) -> str | None:
        """Why a model call must not start now (a limit of this run or an ancestor is spent).
        The texts are rlms' (``Error: Timeout exhausted (...)``) after the ``Error: `` prefix."""
        for node in run.chain():
            cfg, handler = node.rlm, node.handler
            if node.cancelled.is_set():
                return "Cancelled (the run was cancelled)"
            remaining = node.remaining()
            if remaining is not None and remaining <= 0:
                limit = (node.deadline or 0.0) - node.start
                return f"Timeout exhausted ({node.elapsed():.1f}s of {limit:.1f}s)"
            if handler is None or (cfg.max_budget is None and cfg.max_tokens is None):
                continue
            usage = handler.get_usage_summary()
            cost = usage.total_cost or 0.0
            if cfg.max_budget is not None and cost >= cfg.max_budget:
                return f"Budget exhausted (spent ${cost:.6f} of ${cfg.max_budget:.6f})"
            if cfg.max_tokens is not None and usage.total_tokens >= cfg.max_tokens:
                return (
                    f"Token limit exhausted ({usage.total_tokens:,} of {cfg.max_tokens:,} tokens)"
                )
        return None

    def _configured_models(self, run: _Run) -> set[str]:
        """Model names model code may choose: the root, other_backends and depth_models."""
        root, others = self._clients()
        names = {getattr(c, "model_name", None) for c in (root, *others)}
        if run.handler is not None:
            names.update(run.handler.clients)
        names.update(self.depth_models.values())
        return {n for n in names if isinstance(n, str)}

    def _spawn_child(self, run: _Run, model: str | None) -> RLM:
        """A child RLM one level down, built with the arguments rlms passes its children.

        It gets the full ``max_iterations`` (as in rlms); money, tokens and time are leased
        from what ``run`` and its ancestors have left. It shares this RLM's clients.
        """
        child_backend_kwargs = dict(self.backend_kwargs)
        if model is not None:
            child_backend_kwargs["model_name"] = model
        usage = run.handler.get_usage_summary() if run.handler is not None else None
        budget = tokens = timeout = None
        if self.max_budget is not None:
            spent = (usage.total_cost or 0.0) if usage is not None else 0.0
            budget = max(self.max_budget - spent, 1e-12)
        if self.max_tokens is not None:
            used = usage.total_tokens if usage is not None else 0
            tokens = max(self.max_tokens - used, 1)
        remaining = run.remaining()
        if remaining is not None:
            timeout = max(remaining, 1e-3)
        # Looked up in this module at call time, like rlms does (its tests patch it).
        child = RLM(
            backend=self.backend,
            backend_kwargs=child_backend_kwargs,
            environment=self.environment_type,
            environment_kwargs=self.environment_kwargs,
            depth=self.depth + 1,
            max_depth=self.max_depth,
            max_iterations=self.max_iterations,
            max_budget=budget,
            max_timeout=timeout,
            max_tokens=tokens,
            max_errors=self.max_errors,
            custom_system_prompt=self.custom_system_prompt,
            other_backends=self.other_backends,
            other_backend_kwargs=self.other_backend_kwargs,
            logger=RLMLogger() if self.logger is not None else None,
            verbose=False,
            custom_tools=self.custom_sub_tools,
            custom_sub_tools=self.custom_sub_tools,
            compaction=self.compaction,
            compaction_threshold_pct=self.compaction_threshold_pct,
            max_concurrent_subcalls=self.max_concurrent_subcalls,
            on_subcall_start=self.on_subcall_start,
            on_subcall_complete=self.on_subcall_complete,
            on_iteration_start=self.on_iteration_start,
            on_iteration_complete=self.on_iteration_complete,
            orchestrator=self.orchestrator,
            user_prologue=self.user_prologue,
            max_concurrent_lm_calls=self.max_concurrent_lm_calls,
            depth_models=self.depth_models,
            context_window=self.context_window,
        )
        root, others = self._clients()
        if model is not None and model != root.model_name:
            registered = run.handler.clients.get(model) if run.handler is not None else None
            registered = registered or next((c for c in others if c.model_name == model), None)
            root = registered or get_client(self.backend, child_backend_kwargs)
        child._client_cache = (None, root, others)
        return child

    def _subcall(
        self, prompt: Any, model: str | None = None, _run: _Run | None = None
    ) -> RLMChatCompletion:
        """Serve ``rlm_query``: a child RLM one level down, or a plain call at the depth cap.

        Called by the REPL (through the handler, with the run) and, as in rlms, directly
        from Python (``rlm._subcall(prompt, model=None)``); then a deadline counts from
        ``_completion_start_time``. Never raises: failures come back as ``Error:`` texts.
        """
        run = _run if _run is not None else self._standalone_run()
        handler = run.handler
        depth = self.depth + 1
        start = time.perf_counter()
        if _run is not None and model is not None and model not in self._configured_models(run):
            known = sorted(self._configured_models(run))
            return _error_completion(
                model, prompt, f"Error: unknown model {model!r}; configured models: {known}", start
            )
        preview = prompt if isinstance(prompt, str) else repr(prompt)
        label = model or (
            handler.get_client(model, depth).model_name if handler is not None else self.root_model
        )
        if depth >= self.max_depth:
            if handler is not None:
                return handler.completion_record(prompt, model, depth)
            return self._leaf_completion(prompt, model, start)
        refusal = self._refusal(run)
        if refusal:
            return _error_completion(label, prompt, f"Error: {refusal}", start)
        _fire(self.on_subcall_start, depth, label, preview[:80])
        error: str | None = None
        try:
            child = self._spawn_child(run, model)
            question = prompt if isinstance(prompt, str) and len(prompt) <= 4000 else None
            child_run = _Run(child, parent=run if _run is not None else None)
            with run.children_lock:
                run.children.add(child_run)
            if run.is_cancelled():  # cancelled while the child was being set up
                child_run.cancel()
            try:
                return child._completion(prompt, question, child_run)
            finally:
                with run.children_lock:
                    run.children.discard(child_run)
        except (LimitExceededError, CancellationError) as exc:
            error = f"{type(exc).__name__}: {exc}"
            partial = f" Partial answer: {exc.partial_answer}" if exc.partial_answer else ""
            return _error_completion(
                label, prompt, f"Error: Child RLM stopped - {exc}.{partial}", start
            )
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            return _error_completion(
                label, prompt, f"Error: Child RLM completion failed - {exc}", start
            )
        finally:
            _fire(self.on_subcall_complete, depth, label, time.perf_counter() - start, error)

    def _standalone_run(self) -> _Run:
        """A run for ``_subcall`` called from Python outside a completion (rlms' seam)."""
        run = _Run(self)
        if self._completion_start_time is not None:
            run.start = self._completion_start_time
            if self.max_timeout is not None:
                run.deadline = run.start + self.max_timeout
        return run

    def _leaf_completion(self, prompt: Any, model: str | None, start: float) -> RLMChatCompletion:
        """A plain model call at the depth cap, for ``_subcall`` outside a completion."""
        root, others = self._clients()
        if others:
            client = others[0]
        elif model is not None and model != getattr(root, "model_name", None):
            client = get_client(self.backend, {**self.backend_kwargs, "model_name": model})
        else:
            client = root
        name = model or getattr(client, "model_name", None) or self.root_model
        try:
            generation = call_client(client, prompt)
        except Exception as exc:
            return _error_completion(
                str(name), prompt, f"Error: LM query failed at max depth - {exc}", start
            )
        return RLMChatCompletion(
            root_model=str(name),
            prompt=prompt,
            response=generation.text,
            usage_summary=UsageSummary({str(name): generation.usage()}),
            execution_time=time.perf_counter() - start,
        )

    #: Environments that get rlms' in-process ``subcall_fn`` callback when ``max_depth > 1``.
    _SUBCALL_FN_ENVIRONMENTS = ("local", "ipython", "docker")

    def _environment(self, prompt: Any, handler: LMHandler, run: _Run) -> BaseEnv:
        if self.persistent:
            self._persistent_run = run  # what the persistent REPL's subcall_fn serves now
        if self.persistent and self._persistent_env is not None:
            env = self._persistent_env
            assert isinstance(env, SupportsPersistence)
            env.update_handler_address(handler.address)
            env.add_context(prompt)
            return env
        kwargs = dict(self.environment_kwargs)
        kwargs.update(
            lm_handler_address=handler.address,
            context_payload=prompt,
            depth=self.depth + 1,
            max_concurrent_subcalls=self.max_concurrent_subcalls,
        )
        if self.environment_type in self._SUBCALL_FN_ENVIRONMENTS and self.max_depth > 1:
            kwargs["subcall_fn"] = self._subcall_fn(run)
        if self.custom_tools is not None:
            kwargs["custom_tools"] = self.custom_tools
        if self.custom_sub_tools is not None:
            kwargs["custom_sub_tools"] = self.custom_sub_tools
        if self.compaction:
            kwargs["compaction"] = True
        if self.persistent:
            kwargs["persistent"] = True
        env = get_environment(self.environment_type, kwargs)
        if self.persistent:
            self._persistent_env = env
        return env

    def _subcall_fn(self, run: _Run) -> Callable[..., RLMChatCompletion]:
        """rlms' ``subcall_fn(prompt, model=None)`` for the environment, tied to ``run`` (or,
        for a persistent environment, to whichever run is using it at the time)."""

        def subcall_fn(prompt: Any, model: str | None = None) -> RLMChatCompletion:
            current = self._persistent_run if self.persistent else None
            return self._subcall(prompt, model, _run=current or run)

        # Our own environments route rlm_query through the handler instead (the same
        # _subcall), so that nothing the model's helpers hold can reach this RLM.
        subcall_fn.rlm_routed_via_handler = True  # type: ignore[attr-defined]
        return subcall_fn

    def _setup_prompt(self, prompt: Any, root_prompt: str | None = None) -> list[dict[str, Any]]:
        messages = build_rlm_system_prompt(
            system_prompt=self.system_prompt,
            query_metadata=QueryMetadata(prompt),
            custom_tools=self.custom_tools,
            root_prompt=root_prompt,
            orchestrator=self.orchestrator,
        )
        if self.compaction:
            messages[0] = {
                "role": "system",
                "content": messages[0]["content"] + "\n\n" + COMPACTION_NOTE,
            }
        if self.user_prologue:
            messages.append({"role": "user", "content": self.user_prologue})
        return messages

    # ------------------------------------------------------------------ limits

    def _check_time(self, run: _Run, where: str) -> None:
        if run.is_cancelled():
            raise CancellationError(
                partial_answer=run.best_partial, message="The run was cancelled"
            )
        remaining = run.remaining()
        if remaining is not None and remaining <= 0:
            elapsed = run.elapsed()
            self.verbose.print_limit_exceeded("timeout", f"{elapsed:.1f}s of {self.max_timeout:g}s")
            raise TimeoutExceededError(
                elapsed=elapsed,
                timeout=float(self.max_timeout or 0),
                partial_answer=run.best_partial,
                message=f"Timeout exceeded {where}: {elapsed:.1f}s of {self.max_timeout:g}s limit",
            )

    def _check_limits(
        self, run: _Run, iteration: RLMIteration, number: int, handler: LMHandler
    ) -> None:
        if run.is_cancelled():  # a cancelled cell's error is not the model's error
            self._check_time(run, f"after iteration {number}")
        # As in rlms, a block that wrote to stderr counts as failing (an exception does too).
        errors = [
            b.result for b in iteration.code_blocks if b.result.error is not None or b.result.stderr
        ]
        if errors:
            run.consecutive_errors += 1
            run.last_error = errors[0].error or errors[0].stderr
        elif iteration.code_blocks:
            run.consecutive_errors = 0
        if self.max_errors is not None and run.consecutive_errors >= self.max_errors:
            self.verbose.print_limit_exceeded(
                "errors", f"{run.consecutive_errors} consecutive errors (limit {self.max_errors})"
            )
            raise ErrorThresholdExceededError(
                error_count=run.consecutive_errors,
                threshold=self.max_errors,
                last_error=run.last_error,
                partial_answer=run.best_partial,
            )
        usage = handler.get_usage_summary()
        if self.max_budget is not None:
            spent = usage.total_cost or 0.0
            if spent > self.max_budget:
                self.verbose.print_budget_exceeded(spent, self.max_budget)
                raise BudgetExceededError(
                    spent=spent,
                    budget=self.max_budget,
                    partial_answer=run.best_partial,
                    message=(
                        f"Budget exceeded after iteration {number}: spent ${spent:.6f} "
                        f"of ${self.max_budget:.6f} budget"
                    ),
                )
        if self.max_tokens is not None and usage.total_tokens > self.max_tokens:
            self.verbose.print_limit_exceeded(
                "tokens", f"{usage.total_tokens:,} of {self.max_tokens:,}"
            )
            raise TokenLimitExceededError(
                tokens_used=usage.total_tokens,
                token_limit=self.max_tokens,
                partial_answer=run.best_partial,
                message=(
                    f"Token limit exceeded after iteration {number}: "
                    f"{usage.total_tokens:,} of {self.max_tokens:,} tokens"
                ),
            )
        self._check_time(run, f"after iteration {number}")

    # ------------------------------------------------------------------ rlms' private seams

    def _check_timeout(self, iteration: int, time_start: float) -> None:
        """rlms' seam: raise TimeoutExceededError when ``max_timeout`` has passed since
        ``time_start`` (a ``time.perf_counter()`` value)."""
        if self.max_timeout is None:
            return
        run = _Run(self)
        run.start, run.deadline = time_start, time_start + self.max_timeout
        self._check_time(run, f"after iteration {iteration}")

    def _check_iteration_limits(
        self, iteration: RLMIteration, iteration_num: int, lm_handler: Any
    ) -> None:
        """rlms' seam: the after-iteration checks (errors, budget, tokens) with the state
        kept on this RLM; ``iteration_num`` is 0-based as in rlms."""
        if self._compat_run is None:
            self._compat_run = _Run(self)
        self._check_limits(self._compat_run, iteration, iteration_num + 1, lm_handler)

    @property
    def _consecutive_errors(self) -> int:
        return self._compat_run.consecutive_errors if self._compat_run is not None else 0

    # ------------------------------------------------------------------ model calls

    def _ask_root(self, run: _Run, handler: LMHandler, messages: list[dict[str, Any]]) -> str:
        """One root-model call, abandoned if it outlives ``max_timeout`` (TimeoutExceededError)
        or the run is cancelled meanwhile (CancellationError)."""
        box: dict[str, Any] = {}
        done = threading.Event()

        def call() -> None:
            try:
                box["text"] = self._measured(run, messages, handler.completion_record(messages))
            except BaseException as exc:  # re-raised in the caller's thread
                box["error"] = exc
            finally:
                done.set()

        threading.Thread(target=call, name="rlm-root-call", daemon=True).start()
        while not done.wait(
            _ROOT_WAIT_SLICE
            if run.deadline is None
            else max(0.0, min(_ROOT_WAIT_SLICE, run.remaining() or 0.0))
        ):
            # Raises once past the deadline or cancelled; otherwise keep waiting.
            self._check_time(run, "while waiting for the root model")
        if "error" in box:
            raise box["error"]
        return box["text"]

    @staticmethod
    def _measured(run: _Run, messages: list[dict[str, Any]], record: RLMChatCompletion) -> str:
        """Remember how big the provider says the history is (prompt + answer), for compaction."""
        usage = record.usage_summary
        run.last_root_usage = usage
        if usage.total_input_tokens > 0:
            run.measured_tokens = usage.total_input_tokens + usage.total_output_tokens
            run.measured_messages = len(messages) + 1  # the answer becomes the next message
        return record.response

    # ------------------------------------------------------------------ compaction

    def _history_tokens(self, run: _Run, messages: list[dict[str, Any]]) -> int:
        if run.measured_tokens is not None and run.measured_messages <= len(messages):
            return run.measured_tokens + count_tokens(messages[run.measured_messages :])
        return count_tokens(messages)

    def _maybe_compact(
        self,
        run: _Run,
        handler: LMHandler,
        env: BaseEnv,
        messages: list[dict[str, Any]],
        setup_length: int,
        compactions: int,
    ) -> tuple[list[dict[str, Any]], int]:
        """Summarise and restart the history once it fills ``compaction_threshold_pct`` of the window."""
        window = context_window_for(self.client, self.context_window)
        threshold = int(self.compaction_threshold_pct * window)
        tokens = self._history_tokens(run, messages)
        self.verbose.print_compaction_status(tokens, threshold, window)
        if tokens < threshold:
            return messages, compactions
        compactions += 1
        self.verbose.print_compaction()
        summary = self._ask_root(run, handler, [*messages, build_compaction_prompt()])
        if hasattr(env, "append_compaction_entry"):
            env.append_compaction_entry({"type": "summary", "content": summary})
        run.measured_tokens = None
        restarted = [
            *messages[:setup_length],
            {"role": "assistant", "content": summary},
            build_after_compaction_prompt(compactions),
        ]
        return restarted, compactions

    def _run_iteration(
        self, run: _Run, handler: LMHandler, env: BaseEnv, messages: list[dict[str, Any]]
    ) -> RLMIteration:
        start = time.perf_counter()
        prompt_snapshot = list(messages)
        response = self._ask_root(run, handler, prompt_snapshot)
        if response.strip():
            run.best_partial = response
        blocks: list[CodeBlock] = []
        final_answer: str | None = None
        # FINAL(...) run in a block is the weakest form (0.1.1): it ends the run unless a
        # later block of the same response answers with FINAL_VAR or the answer dict.
        weak_answer: str | None = None
        for code in find_code_blocks(response):
            self._check_time(run, "before running a code block")
            if env.supports_cell_timeout:
                result = env.execute_code(code, timeout=run.remaining())  # type: ignore[call-arg]
            else:
                result = env.execute_code(code)
            blocks.append(CodeBlock(code=code, result=result))
            if result.final_answer is not None:
                if getattr(result, "final_kind", None) == "FINAL":
                    weak_answer = weak_answer if weak_answer is not None else result.final_answer
                    continue
                final_answer = result.final_answer
                break  # the first block that answers ends the run
        if final_answer is None:
            final_answer = weak_answer
        if final_answer is None:
            final_answer = find_final_answer(response, environment=env)
        return RLMIteration(
            prompt=prompt_snapshot,
            response=response,
            code_blocks=blocks,
            final_answer=final_answer,
            iteration_time=time.perf_counter() - start,
            root_usage=run.last_root_usage,
        )

    def _fallback_completion(self, prompt: Any, run: _Run) -> RLMChatCompletion:
        """At depth >= max_depth the RLM is a plain model call, with the same result type."""
        generation = call_client(self.client, prompt)
        # A 0.1.x-style or stand-in client does not name its model reliably.
        model = generation.model if reports_usage_per_call(self.client) else self.root_model
        return RLMChatCompletion(
            root_model=model,
            prompt=prompt,
            response=generation.text,
            usage_summary=UsageSummary({model: generation.usage()}),
            execution_time=run.elapsed(),
        )

    # ------------------------------------------------------------------ public API

    def completion(self, prompt: Any, root_prompt: str | None = None) -> RLMChatCompletion:
        """Answer ``prompt`` (any size; str, list, dict...) by running the RLM loop.

        ``root_prompt`` is an optional short question the root model sees
        directly (the context itself is only reachable through the REPL).
        Raises a limit error (with ``partial_answer``) when a limit stops the
        run, and ``CancellationError`` on Ctrl-C.
        """
        run = _Run(self)
        self._completion_start_time = run.start
        return self._completion(prompt, root_prompt, run)

    async def acompletion(self, prompt: Any, root_prompt: str | None = None) -> RLMChatCompletion:
        """``completion()`` without blocking the event loop; cancelling the task cancels the run."""
        run = _Run(self)
        self._completion_start_time = run.start
        task = asyncio.ensure_future(asyncio.to_thread(self._completion, prompt, root_prompt, run))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            run.cancel()
            # The run ends with CancellationError in its thread; nobody awaits it any more.
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            raise

    def _completion(self, prompt: Any, root_prompt: str | None, run: _Run) -> RLMChatCompletion:
        if self.depth >= self.max_depth:
            return self._fallback_completion(prompt, run)
        if self.logger is not None:
            self.logger.clear_iterations()
        metadata = QueryMetadata(prompt)
        self.verbose.print_header(
            backend=str(self.backend),
            model=self.root_model,
            environment=str(self.environment_type),
            max_iterations=self.max_iterations,
            max_depth=self.max_depth,
            context_type=metadata.context_type,
            context_length=metadata.context_total_length,
            other_backends=[str(b) for b in self.other_backends] if self.other_backends else None,
        )
        handler = self._make_handler(run)
        self._log_metadata()
        handler.start()
        env: BaseEnv | None = None
        lock = self._persistent_lock if self.persistent else None
        if lock is not None:
            lock.acquire()
        try:
            env = run.env = self._environment(prompt, handler, run)
            messages = self._setup_prompt(prompt, root_prompt)
            return self._loop(run, handler, env, messages, prompt, root_prompt)
        except KeyboardInterrupt:
            run.cancelled.set()
            self.verbose.print_limit_exceeded("cancelled", "interrupted by the user")
            raise CancellationError(
                partial_answer=run.best_partial, message="Execution cancelled by user (Ctrl-C)"
            ) from None
        finally:
            handler.stop()
            if env is not None and not self.persistent:
                env.cleanup()
            if lock is not None:
                lock.release()

    def _loop(
        self,
        run: _Run,
        handler: LMHandler,
        env: BaseEnv,
        messages: list[dict[str, Any]],
        prompt: Any,
        root_prompt: str | None,
    ) -> RLMChatCompletion:
        context_count = env.get_context_count() if isinstance(env, SupportsPersistence) else 1
        history_count = env.get_history_count() if isinstance(env, SupportsPersistence) else 0
        setup_length = len(messages)
        compactions = 0
        for number in range(1, self.max_iterations + 1):
            run.iteration = number
            self._check_time(run, f"before iteration {number}")
            if self.compaction and number > 1:
                messages, compactions = self._maybe_compact(
                    run, handler, env, messages, setup_length, compactions
                )
            _fire(self.on_iteration_start, self.depth, number)
            turn = build_user_prompt(
                root_prompt,
                number - 1,
                context_count,
                history_count,
                max_iterations=self.max_iterations,
            )
            messages.append(turn)
            iteration = self._run_iteration(run, handler, env, messages)
            if iteration.final_answer is not None:
                run.best_partial = iteration.final_answer
            if self.logger is not None:
                self.logger.log(iteration)
            self.verbose.print_iteration(iteration, number)
            _fire(self.on_iteration_complete, self.depth, number, iteration.iteration_time or 0.0)
            self._check_limits(run, iteration, number, handler)
            if iteration.final_answer is not None:
                return self._finish(
                    run, handler, env, messages, prompt, iteration.final_answer, number
                )
            new_messages = format_iteration(iteration)
            messages.extend(new_messages)
            if self.compaction and hasattr(env, "append_compaction_entry"):
                env.append_compaction_entry(list(new_messages))  # rlms: [assistant, REPL output]

        # Out of iterations: ask once for the best answer from what was learned.
        final_messages = [*messages, build_final_answer_prompt(root_prompt)]
        start = time.perf_counter()
        response = self._ask_root(run, handler, final_messages)
        answer = find_final_answer(response, environment=env) or response.strip()
        if self.logger is not None:
            self.logger.log(
                RLMIteration(
                    prompt=final_messages,
                    response=response,
                    code_blocks=[],
                    final_answer=answer,
                    iteration_time=time.perf_counter() - start,
                    root_usage=run.last_root_usage,
                )
            )
        return self._finish(run, handler, env, messages, prompt, answer, self.max_iterations)

    def _finish(
        self,
        run: _Run,
        handler: LMHandler,
        env: BaseEnv,
        messages: list[dict[str, Any]],
        prompt: Any,
        answer: str,
        iterations: int,
    ) -> RLMChatCompletion:
        usage = handler.get_usage_summary()
        elapsed = run.elapsed()
        self.verbose.print_final_answer(answer)
        self.verbose.print_summary(iterations, elapsed, usage)
        if self.persistent and isinstance(env, SupportsPersistence):
            env.add_history(messages)
        return RLMChatCompletion(
            root_model=self.root_model,
            prompt=prompt,
            response=answer,
            usage_summary=usage,
            execution_time=elapsed,
            metadata=self.logger.get_trajectory() if self.logger is not None else None,
        )

    def close(self) -> None:
        """Release the persistent environment (if any) and the clients. Safe to call twice."""
        if self._persistent_env is not None:
            self._persistent_env.cleanup()
            self._persistent_env = None

    def __enter__(self) -> RLM:
        return self

    def __exit__(self, *exc: object) -> bool:
        self.close()
        return False
