"""The RLM loop.

``RLM(...).completion(prompt)`` puts ``prompt`` into a REPL as ``context``,
lets the root model write ```repl code that inspects it and calls sub-models,
and returns the answer the model submits, as an :class:`RLMChatCompletion`.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar, overload

from rlm.clients import BaseLM, get_client, resolve_model
from rlm.clients.base_lm import call_client, reports_usage_per_call
from rlm.clients.pricing import check_budget_prices
from rlm.core import adaptive, ledger
from rlm.core import events as ev
from rlm.core.limiter import CallLimiter
from rlm.core.lm_handler import LMHandler
from rlm.core.observers import Callbacks
from rlm.core.run import Run, Subscriber, Tree, new_run_id
from rlm.core.types import (
    ClientBackend,
    CodeBlock,
    EnvironmentType,
    QueryMetadata,
    RLMChatCompletion,
    RLMIteration,
    RLMMetadata,
    StructuredCompletion,
    UsageSummary,
)
from rlm.environments import (
    BaseEnv,
    available_environments,
    check_environment_kwargs,
    env_supports,
    get_environment,
    supports_persistence,
    validate_custom_tools,
)
from rlm.logger import RLMLogger, VerbosePrinter
from rlm.utils.exceptions import CancellationError, ConfigurationError, LimitExceededError
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
from rlm.utils.structured import StructuredAnswer
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


#: rlms-era name of the run state (tests and tools import it from here).
_Run = Run


#: The Pydantic model class of a ``response_format`` (for the typed result).
_ModelT = TypeVar("_ModelT")
#: What ``response_format`` accepts: a Pydantic model class, a JSON Schema, or None.
ResponseFormat = type[Any] | dict[str, Any] | None


def _text_of(prompt: Any) -> str:
    return prompt if isinstance(prompt, str) else repr(prompt)[: ev.PREVIEW_CHARS]


class RLM:
    """A Recursive Language Model: a drop-in ``completion()`` for prompts of any size.

    The prompt becomes the variable ``context`` in a Python REPL; the root model writes
    ```` ```repl ```` code that reads it, calls sub-models (``llm_query``) and child RLMs
    (``rlm_query``) on pieces, and submits an answer. The arguments are rlms 0.1.3's;
    pass them by keyword. Clients are built lazily, at the first ``completion()``
    (``RLM(...)`` needs no API key); names and options are checked here.

    Args:
        backend: the root model's client, default ``"openai"``; also ``"anthropic"``,
            ``"gemini"``, ``"azure_openai"``, ``"openrouter"``, ``"vercel"``,
            ``"vllm"``, ``"litellm"``, ``"portkey"``, ``"llama_cpp"`` (the embedded
            offline model), ``"scripted"`` (tests), or a plugin's name.
        backend_kwargs: options of that client, default ``None``: ``model_name``,
            ``api_key``, ``base_url``, ``timeout`` (seconds per call)...
            Sampling settings (``temperature``, per-answer ``max_tokens``) go in
            ``backend_kwargs["sampling_args"]`` or ``sampling_args``, not here.
        environment: where the model's code runs, default ``"local"`` (this process);
            ``"subprocess"`` (an isolated worker), ``"docker"``, ``"ipython"``,
            ``"modal"``, ``"e2b"``, ``"daytona"``, ``"prime"``, or a plugin's name.
        environment_kwargs: options of that environment, default ``None``
            (``local``: ``setup_code``, ``cell_timeout`` seconds, ``max_output_chars``).
        depth: this RLM's depth in a tree of runs, default ``0``.
        max_depth: recursion depth, default ``1``: with ``max_depth=2`` ``rlm_query``
            starts child RLMs; at 1 it is a plain model call.
        max_iterations: root-model turns, default ``30``; then the model is asked once
            for its best answer (nothing is raised).
        max_budget: USD for the whole tree of runs, default ``None`` (no limit);
            passing it raises ``BudgetExceededError``. A model without a known price
            is refused at the first completion (``prices={name: "unpriced"}`` opts out).
        max_timeout: seconds for the whole completion, children included, default
            ``None``; passing it raises ``TimeoutExceededError``.
        max_tokens: a *total* token budget, input plus output over every call of the
            completion and its children (not a per-answer limit as in LLM SDKs),
            default ``None``; passing it raises ``TokenLimitExceededError``.
        max_errors: consecutive iterations whose code failed, default ``None``;
            reaching it raises ``ErrorThresholdExceededError``.
        custom_system_prompt: replaces the built-in system prompt, default ``None``
            (a ``str.format`` template; ``{custom_tools_section}`` lists the tools).
        other_backends: further backend names, default ``None``; the first answers
            sub-calls, each answers ``llm_query(..., model=its model_name)``.
        other_backend_kwargs: one options dict per entry of ``other_backends``.
        logger: an ``RLMLogger``, default ``None``; the trajectory (JSON lines) is then
            written to its folder and attached as ``result.metadata``.
        verbose: print each iteration with Rich, default ``False``.
        persistent: keep the REPL across ``completion()`` calls, default ``False``
            (later prompts become ``context_1``...; release with ``close()``).
        custom_tools: ``{name: value}`` or ``{name: {"tool": value, "description":
            "..."}}`` put in the REPL and listed in the prompt, default ``None``.
        custom_sub_tools: tools for child RLMs, default ``None`` (inherit
            ``custom_tools``); ``{}`` for none.
        compaction: summarise and restart the root history when it nears the model's
            context window, default ``False``.
        compaction_threshold_pct: the share of the window that triggers compaction,
            default ``0.85``; in (0, 1].
        max_concurrent_subcalls: child RLMs one ``rlm_query_batched`` runs at once,
            default ``4``.
        on_subcall_start: ``fn(depth, model, prompt_preview)`` before each
            ``rlm_query``, default ``None``.
        on_subcall_complete: ``fn(depth, model, seconds, error_or_None)`` after it.
        on_iteration_start: ``fn(depth, iteration)``, iteration counted from 1.
        on_iteration_complete: ``fn(depth, iteration, seconds)``. A callback that
            raises is ignored.
        sampling_args: sampling settings of the root client (``temperature``,
            ``max_tokens`` per answer, ``top_p``...), default ``None``.
        sub_sampling_args: sampling settings for sub-calls, default ``None``.
        orchestrator: tell the root model to let code and sub-calls do the reading,
            default ``True``.
        user_prologue: a user message inserted before the first turn, default ``None``.
        max_concurrent_lm_calls: model calls in flight at once across the tree,
            default ``None`` (16).
        depth_models: ``{depth: model_name}`` routing sub-calls by depth, default
            ``None``.
        context_window: the root model's window in tokens (for compaction), default
            ``None`` (the client's, else a table, else 128,000).
        model: ``"provider/model"`` shorthand for ``backend`` plus ``model_name``
            (LiteLLM's convention, e.g. ``"anthropic/claude-sonnet-4-5"``), default
            ``None``; ours.

    Raises:
        ConfigurationError: (a ``ValueError``) an unknown environment, an option it
            refuses, a negative limit, a reserved tool name, or ``persistent=True`` on
            an environment without it, here; an unknown backend, a missing key or
            model name at the first ``completion()``.

    ``completion(prompt, root_prompt=None)`` returns an ``RLMChatCompletion``
    (``.response``, ``.usage_summary``, ``.execution_time``, ``.metadata``); the limit
    errors above carry ``partial_answer``. ``acompletion`` is the same, async. See
    docs/api.md and docs/getting-started.md.
    """

    #: How many answers that do not match ``response_format`` go back to the model (with
    #: the validation message) before the run ends with ``StructuredOutputError``; the
    #: ``response_format_retries`` keyword of ``completion()`` overrides it for one call.
    response_format_retries: int = 2

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
        max_concurrent_lm_calls: int | None = None,
        depth_models: dict[int, str] | None = None,
        context_window: int | None = None,
        model: str | None = None,
    ):
        if model is not None:  # "provider/model" shorthand (LiteLLM's convention); ours
            backend, backend_kwargs = resolve_model(model, None, backend_kwargs)
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
        self._persistent_run: Run | None = None
        # Subscribers of every event of this RLM's runs (children's too): see subscribe().
        self._subscribers: list[Subscriber] = []
        # rlms' private seams, kept for code (and tests) that use them.
        self._completion_start_time: float | None = None
        self._compat_run: Run | None = None
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
            if name == "max_concurrent_lm_calls" and values[name] is None:
                continue  # None: llm_query_batched adapts (rlm.core.adaptive)
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
            limiter=None
            if parent is not None
            else CallLimiter(self.max_concurrent_lm_calls or adaptive.MAXIMUM),
            depth_models=self.depth_models,
        )
        if parent is not None:
            handler.attach_to(parent)  # one usage tree, one concurrency cap
        for client in others:
            handler.register_client(client.model_name, client)
        handler.guard = lambda request: ledger.refusal(run)
        # The child's depth is decided here, from this run, never from the request.
        handler.subcall_fn = lambda prompt, model, _depth: self._subcall(prompt, model, _run=run)
        if run.listening:
            handler.call_observer = _call_observer(run)
        run.handler = handler
        return handler

    # rlms-era seam: the refusal texts now live in the ledger.
    _refusal = staticmethod(ledger.refusal)

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
        budget, tokens, timeout = ledger.lease(self, run)
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
        label = model or (
            handler.get_client(model, depth).model_name if handler is not None else self.root_model
        )
        call_id = new_run_id()
        if depth >= self.max_depth:
            run.emit(
                ev.SubcallStarted, call_id=call_id, kind="rlm", model=label,
                prompt_preview=_text_of(prompt),
            )  # fmt: skip
            record = None
            try:
                if handler is not None:
                    record = handler.completion_record(prompt, model, depth)
                else:
                    record = self._leaf_completion(prompt, model, start)
                return record
            finally:
                _subcall_finished(run, call_id, "rlm", label, start, record)
        refusal = ledger.refusal(run)
        if refusal:
            return _error_completion(label, prompt, f"Error: {refusal}", start)
        child_run_id = new_run_id()
        run.emit(
            ev.SubcallStarted, call_id=call_id, kind="rlm", model=label,
            prompt_preview=_text_of(prompt), child_run_id=child_run_id,
        )  # fmt: skip
        error: str | None = None
        result: RLMChatCompletion | None = None
        try:
            child = self._spawn_child(run, model)
            question = prompt if isinstance(prompt, str) and len(prompt) <= 4000 else None
            child_run = Run(
                child,
                parent=run if _run is not None else None,
                subscribers=child._own_subscribers(),
                run_id=child_run_id,
                tree=run.tree,
            )
            with run.children_lock:
                run.children.add(child_run)
            if run.is_cancelled():  # cancelled while the child was being set up
                child_run.cancel()
            try:
                result = child._completion(prompt, question, child_run)
                return result
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
            _subcall_finished(run, call_id, "rlm", label, start, result, error, child_run_id)

    def _own_subscribers(self) -> list[Subscriber]:
        """This RLM's own subscribers: its logger, its printer (when enabled), its callbacks."""
        own: list[Subscriber] = []
        if self.logger is not None:
            own.append(self.logger.handle_event)
        if self.verbose.enabled:
            own.append(self.verbose.handle_event)
        callbacks = Callbacks(
            self.on_subcall_start,
            self.on_subcall_complete,
            self.on_iteration_start,
            self.on_iteration_complete,
        )
        if callbacks:
            own.append(callbacks)
        return own

    def _new_run(self) -> Run:
        """A root run of this RLM, with its own subscribers and the tree's."""
        return Run(self, subscribers=self._own_subscribers(), tree=Tree(self._subscribers))

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Call ``subscriber(event)`` with every event of every run of this RLM (children's
        included), from the thread that emits it; returns a function that unsubscribes.
        A subscriber that raises is reported once and skipped for the rest of that run."""
        self._subscribers.append(subscriber)
        return lambda: self._subscribers.remove(subscriber)

    def _standalone_run(self) -> Run:
        """A run for ``_subcall`` called from Python outside a completion (rlms' seam)."""
        run = self._new_run()
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
            assert env_supports(env, "persistence")
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

    # ------------------------------------------------------------------ rlms' private seams

    def _check_timeout(self, iteration: int, time_start: float) -> None:
        """rlms' seam: raise TimeoutExceededError when ``max_timeout`` has passed since
        ``time_start`` (a ``time.perf_counter()`` value)."""
        if self.max_timeout is None:
            return
        run = self._new_run()
        run.start, run.deadline = time_start, time_start + self.max_timeout
        ledger.check_time(run, f"after iteration {iteration}")

    def _check_iteration_limits(
        self, iteration: RLMIteration, iteration_num: int, lm_handler: Any
    ) -> None:
        """rlms' seam: the after-iteration checks (errors, budget, tokens) with the state
        kept on this RLM; ``iteration_num`` is 0-based as in rlms."""
        if self._compat_run is None:
            self._compat_run = self._new_run()
        ledger.check_after_iteration(self._compat_run, iteration, iteration_num + 1, lm_handler)

    @property
    def _consecutive_errors(self) -> int:
        return self._compat_run.consecutive_errors if self._compat_run is not None else 0

    # ------------------------------------------------------------------ model calls

    def _ask_root(self, run: Run, handler: LMHandler, messages: list[dict[str, Any]]) -> str:
        """One root-model call (streamed when a subscriber wants tokens), abandoned if it
        outlives ``max_timeout`` (TimeoutExceededError) or the run is cancelled meanwhile."""
        box: dict[str, Any] = {}
        done = threading.Event()
        on_token = run.on_token()

        def call() -> None:
            try:
                record = handler.completion_record(messages, on_token=on_token)
                box["text"] = self._measured(run, messages, record)
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
            ledger.check_time(run, "while waiting for the root model")
        if "error" in box:
            raise box["error"]
        return box["text"]

    @staticmethod
    def _measured(run: Run, messages: list[dict[str, Any]], record: RLMChatCompletion) -> str:
        """Remember how big the provider says the history is (prompt + answer), for compaction."""
        usage = record.usage_summary
        run.last_root_usage = usage
        if usage.total_input_tokens > 0:
            run.measured_tokens = usage.total_input_tokens + usage.total_output_tokens
            run.measured_messages = len(messages) + 1  # the answer becomes the next message
        return record.response

    # ------------------------------------------------------------------ compaction

    def _history_tokens(self, run: Run, messages: list[dict[str, Any]]) -> int:
        if run.measured_tokens is not None and run.measured_messages <= len(messages):
            return run.measured_tokens + count_tokens(messages[run.measured_messages :])
        return count_tokens(messages)

    def _maybe_compact(
        self,
        run: Run,
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
        run.emit(ev.CompactionStatus, tokens=tokens, threshold=threshold, window=window)
        if tokens < threshold:
            return messages, compactions
        compactions += 1
        summary = self._ask_root(run, handler, [*messages, build_compaction_prompt()])
        if env_supports(env, "compaction"):
            env.append_compaction_entry({"type": "summary", "content": summary})
        run.measured_tokens = None
        run.emit(
            ev.Compacted, tokens_before=tokens, threshold=threshold, summary_chars=len(summary)
        )
        restarted = [
            *messages[:setup_length],
            {"role": "assistant", "content": summary},
            build_after_compaction_prompt(compactions),
        ]
        return restarted, compactions

    def _run_cell(self, run: Run, env: BaseEnv, code: str, cell: int) -> Any:
        """Run one code block, with its cell events."""
        ledger.check_time(run, "before running a code block")
        run.emit(ev.CellStarted, cell=cell, code=code)
        start = time.perf_counter()
        if env_supports(env, "cell_timeout"):
            result = env.execute_code(code, timeout=run.remaining())  # type: ignore[call-arg]
        else:
            result = env.execute_code(code)
        if run.listening:
            # Environments hand back a cell's output when it ends; it goes out then.
            for stream in ("stdout", "stderr"):
                if getattr(result, stream, ""):
                    run.emit(ev.CellOutput, cell=cell, stream=stream, text=getattr(result, stream))
            run.emit(
                ev.CellFinished,
                cell=cell,
                result=result,
                execution_time=getattr(result, "execution_time", None)
                or time.perf_counter() - start,
            )
        return result

    def _run_iteration(
        self, run: Run, handler: LMHandler, env: BaseEnv, messages: list[dict[str, Any]]
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
        for cell, code in enumerate(find_code_blocks(response), start=1):
            result = self._run_cell(run, env, code, cell)
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

    def _fallback_completion(self, prompt: Any, run: Run) -> RLMChatCompletion:
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

    @overload
    def completion(
        self,
        prompt: Any,
        root_prompt: str | None = None,
        *,
        response_format: type[_ModelT],
        response_format_retries: int | None = None,
    ) -> StructuredCompletion[_ModelT]: ...

    @overload
    def completion(
        self,
        prompt: Any,
        root_prompt: str | None,
        response_format: type[_ModelT],
        *,
        response_format_retries: int | None = None,
    ) -> StructuredCompletion[_ModelT]: ...

    @overload
    def completion(
        self,
        prompt: Any,
        root_prompt: str | None = None,
        *,
        response_format: dict[str, Any],
        response_format_retries: int | None = None,
    ) -> StructuredCompletion[dict[str, Any]]: ...

    @overload
    def completion(
        self,
        prompt: Any,
        root_prompt: str | None,
        response_format: dict[str, Any],
        *,
        response_format_retries: int | None = None,
    ) -> StructuredCompletion[dict[str, Any]]: ...

    @overload
    def completion(
        self,
        prompt: Any,
        root_prompt: str | None = None,
        response_format: None = None,
        *,
        response_format_retries: int | None = None,
    ) -> RLMChatCompletion: ...

    def completion(
        self,
        prompt: Any,
        root_prompt: str | None = None,
        response_format: ResponseFormat = None,
        *,
        response_format_retries: int | None = None,
    ) -> RLMChatCompletion:
        """Answer ``prompt`` (any size; str, list, dict...) by running the RLM loop.

        ``root_prompt`` is an optional short question the root model sees
        directly (the context itself is only reachable through the REPL).
        ``response_format`` (a Pydantic model class or a JSON Schema dict) asks for a
        structured answer: the model is told the schema, its answer is validated and sent
        back with the validation message when invalid (at most
        ``response_format_retries`` times, default ``RLM.response_format_retries`` = 2),
        and the result is a ``StructuredCompletion`` whose ``parsed`` is the validated
        object (``response`` stays the JSON text).
        Raises a limit error (with ``partial_answer``) when a limit stops the
        run, ``CancellationError`` on Ctrl-C, ``StructuredOutputError`` when the answer
        never matched ``response_format``, and ``ConfigurationError`` for a
        ``response_format`` that is neither a model class nor a schema.
        """
        structured = self._structured(response_format, response_format_retries)
        run = self._new_run()
        self._completion_start_time = run.start
        return self._completion(prompt, root_prompt, run, structured=structured)

    @overload
    async def acompletion(
        self,
        prompt: Any,
        root_prompt: str | None = None,
        *,
        response_format: type[_ModelT],
        response_format_retries: int | None = None,
    ) -> StructuredCompletion[_ModelT]: ...

    @overload
    async def acompletion(
        self,
        prompt: Any,
        root_prompt: str | None,
        response_format: type[_ModelT],
        *,
        response_format_retries: int | None = None,
    ) -> StructuredCompletion[_ModelT]: ...

    @overload
    async def acompletion(
        self,
        prompt: Any,
        root_prompt: str | None = None,
        *,
        response_format: dict[str, Any],
        response_format_retries: int | None = None,
    ) -> StructuredCompletion[dict[str, Any]]: ...

    @overload
    async def acompletion(
        self,
        prompt: Any,
        root_prompt: str | None,
        response_format: dict[str, Any],
        *,
        response_format_retries: int | None = None,
    ) -> StructuredCompletion[dict[str, Any]]: ...

    @overload
    async def acompletion(
        self,
        prompt: Any,
        root_prompt: str | None = None,
        response_format: None = None,
        *,
        response_format_retries: int | None = None,
    ) -> RLMChatCompletion: ...

    async def acompletion(
        self,
        prompt: Any,
        root_prompt: str | None = None,
        response_format: ResponseFormat = None,
        *,
        response_format_retries: int | None = None,
    ) -> RLMChatCompletion:
        """``completion()`` without blocking the event loop; cancelling the task cancels the run."""
        structured = self._structured(response_format, response_format_retries)
        run = self._new_run()
        self._completion_start_time = run.start
        task = asyncio.ensure_future(
            asyncio.to_thread(self._completion, prompt, root_prompt, run, structured=structured)
        )
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            run.cancel()
            # The run ends with CancellationError in its thread; nobody awaits it any more.
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            raise

    def stream(
        self,
        prompt: Any,
        root_prompt: str | None = None,
        response_format: ResponseFormat = None,
        *,
        response_format_retries: int | None = None,
    ) -> Iterator[ev.Event]:
        """The run of ``completion(prompt, root_prompt)`` as its events (``rlm.core.events``),
        children's included, in order. The last is the root's ``RunFinished``, whose
        ``result`` is the ``RLMChatCompletion``; a run stopped by a limit yields
        ``LimitStopped`` and ``RunFinished(error=...)`` and then raises what ``completion()``
        raises. Closing the iterator early cancels the run. ``response_format`` works as in
        ``completion()``."""
        structured = self._structured(response_format, response_format_retries)
        events: queue.SimpleQueue[Any] = queue.SimpleQueue()
        run, thread, outcome = self._start_streamed(prompt, root_prompt, events.put, structured)
        try:
            while True:
                item = events.get()
                if item is _END:
                    break
                yield item
        finally:
            if thread.is_alive():
                run.cancel()
        thread.join()
        if "error" in outcome:
            raise outcome["error"]

    async def astream(
        self,
        prompt: Any,
        root_prompt: str | None = None,
        response_format: ResponseFormat = None,
        *,
        response_format_retries: int | None = None,
    ) -> AsyncIterator[ev.Event]:
        """``stream()`` as an async iterator; cancelling or closing it cancels the run."""
        structured = self._structured(response_format, response_format_retries)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Any] = asyncio.Queue()

        def put(item: Any) -> None:
            loop.call_soon_threadsafe(events.put_nowait, item)

        run, thread, outcome = self._start_streamed(prompt, root_prompt, put, structured)
        try:
            while True:
                item = await events.get()
                if item is _END:
                    break
                yield item
        finally:
            if thread.is_alive():
                run.cancel()
        await asyncio.to_thread(thread.join)
        if "error" in outcome:
            raise outcome["error"]

    def _start_streamed(
        self,
        prompt: Any,
        root_prompt: str | None,
        put: Callable[[Any], None],
        structured: StructuredAnswer | None = None,
    ) -> tuple[Run, threading.Thread, dict[str, Any]]:
        """Start a run in a thread whose every event (and then ``_END``) goes to ``put``."""
        run = self._new_run()
        run.tree.subscribers.append(_QueueSubscriber(put))
        self._completion_start_time = run.start
        outcome: dict[str, Any] = {}

        def work() -> None:
            try:
                outcome["result"] = self._completion(
                    prompt, root_prompt, run, structured=structured
                )
            except BaseException as exc:
                outcome["error"] = exc
            finally:
                put(_END)

        thread = threading.Thread(target=work, name="rlm-stream", daemon=True)
        thread.start()
        return run, thread, outcome

    def _structured(
        self, response_format: ResponseFormat, retries: int | None
    ) -> StructuredAnswer | None:
        """One call's ``response_format`` (checked now: ConfigurationError), or None."""
        if response_format is None:
            return None
        if retries is None:
            retries = self.response_format_retries
        return StructuredAnswer(response_format, retries)

    def _completion(
        self,
        prompt: Any,
        root_prompt: str | None,
        run: Run,
        structured: StructuredAnswer | None = None,
    ) -> RLMChatCompletion:
        if self.depth >= self.max_depth:
            result = self._fallback_completion(prompt, run)
            return result if structured is None else _structured_result(structured, result)
        handler = self._make_handler(run)
        handler.start()
        env: BaseEnv | None = None
        result: RLMChatCompletion | None = None
        failure: BaseException | None = None
        lock = self._persistent_lock if self.persistent else None
        if lock is not None:
            lock.acquire()
        try:
            env = run.env = self._environment(prompt, handler, run)
            self._emit_started(run, prompt, env)
            messages = self._setup_prompt(prompt, root_prompt)
            if structured is not None:
                system = messages[0]
                messages[0] = {
                    **system,
                    "content": f"{system['content']}\n\n{structured.instructions()}",
                }
            result = self._loop(
                run, handler, env, messages, prompt, root_prompt, structured=structured
            )
            return result
        except KeyboardInterrupt:
            run.cancelled.set()
            failure = CancellationError(
                partial_answer=run.best_partial, message="Execution cancelled by user (Ctrl-C)"
            )
            raise ledger.stop(run, "interrupted", failure) from None
        except BaseException as exc:
            failure = exc
            raise
        finally:
            handler.stop()
            if env is not None and not self.persistent:
                env.cleanup()
            if lock is not None:
                lock.release()
            run.emit(
                ev.RunFinished,
                result=result,
                error=None if failure is None else f"{type(failure).__name__}: {failure}",
                execution_time=run.elapsed(),
                iterations=run.iteration,
                usage=handler.get_usage_summary() if run.listening else None,
                iteration=None,
            )

    def _emit_started(self, run: Run, prompt: Any, env: BaseEnv) -> None:
        if not run.listening:
            return
        metadata = QueryMetadata(prompt)
        isolation = getattr(env, "isolation", None)
        run.emit(
            ev.RunStarted,
            model=self.root_model,
            environment=str(self.environment_type),
            max_iterations=self.max_iterations,
            prompt_preview=_text_of(prompt),
            backend=str(self.backend),
            max_depth=self.max_depth,
            context_type=metadata.context_type,
            context_length=metadata.context_total_length,
            other_backends=[str(b) for b in self.other_backends] if self.other_backends else None,
            metadata=self._metadata(),
            isolation=dict(isolation) if isinstance(isolation, dict) else None,
        )

    def _loop(
        self,
        run: Run,
        handler: LMHandler,
        env: BaseEnv,
        messages: list[dict[str, Any]],
        prompt: Any,
        root_prompt: str | None,
        structured: StructuredAnswer | None = None,
    ) -> RLMChatCompletion:
        context_count = env.get_context_count() if env_supports(env, "persistence") else 1
        history_count = env.get_history_count() if env_supports(env, "persistence") else 0
        setup_length = len(messages)
        compactions = 0
        for number in range(1, self.max_iterations + 1):
            run.iteration = number
            ledger.check_time(run, f"before iteration {number}")
            if self.compaction and number > 1:
                messages, compactions = self._maybe_compact(
                    run, handler, env, messages, setup_length, compactions
                )
            run.emit(ev.IterationStarted)
            messages.append(
                build_user_prompt(
                    root_prompt,
                    number - 1,
                    context_count,
                    history_count,
                    max_iterations=self.max_iterations,
                )
            )
            if structured is not None:
                turn = messages[-1]
                messages[-1] = {**turn, "content": f"{turn['content']}\n{structured.reminder()}"}
            iteration = self._run_iteration(run, handler, env, messages)
            if iteration.final_answer is not None:
                run.best_partial = iteration.final_answer
            run.emit(
                ev.IterationFinished,
                record=iteration,
                iteration_time=iteration.iteration_time or 0.0,
            )
            ledger.check_after_iteration(run, iteration, number, handler)
            rejection: dict[str, str] | None = None
            if iteration.final_answer is not None and structured is not None:
                # Raises StructuredOutputError once no try is left.
                parsed, data, rejection = structured.judge(iteration.final_answer)
                if rejection is None:
                    text = structured.response_text(iteration.final_answer, data)
                    result = self._finish(run, handler, env, messages, prompt, text)
                    return _with_parsed(result, parsed)
            elif iteration.final_answer is not None:
                return self._finish(run, handler, env, messages, prompt, iteration.final_answer)
            new_messages = format_iteration(iteration)
            if rejection is not None:
                new_messages = [*new_messages, rejection]
            messages.extend(new_messages)
            if self.compaction and env_supports(env, "compaction"):
                env.append_compaction_entry(list(new_messages))  # rlms: [assistant, REPL output]
        return self._forced_answer(
            run, handler, env, messages, prompt, root_prompt, structured=structured
        )

    def _forced_answer(
        self,
        run: Run,
        handler: LMHandler,
        env: BaseEnv,
        messages: list[dict[str, Any]],
        prompt: Any,
        root_prompt: str | None,
        structured: StructuredAnswer | None = None,
    ) -> RLMChatCompletion:
        """Out of iterations: ask once for the best answer from what was learned."""
        answer_format = None if structured is None else structured.answer_format
        final_messages = [*messages, build_final_answer_prompt(root_prompt, answer_format)]
        start = time.perf_counter()
        response = self._ask_root(run, handler, final_messages)
        answer = find_final_answer(response, environment=env) or response.strip()
        record = RLMIteration(
            prompt=final_messages,
            response=response,
            code_blocks=[],
            final_answer=answer,
            iteration_time=time.perf_counter() - start,
            root_usage=run.last_root_usage,
        )
        run.emit(
            ev.IterationFinished,
            record=record,
            iteration_time=record.iteration_time or 0.0,
            forced_answer=True,
        )
        if structured is not None:
            parsed, text = structured.last_chance(answer)  # raises when invalid
            return _with_parsed(self._finish(run, handler, env, messages, prompt, text), parsed)
        return self._finish(run, handler, env, messages, prompt, answer)

    def _finish(
        self,
        run: Run,
        handler: LMHandler,
        env: BaseEnv,
        messages: list[dict[str, Any]],
        prompt: Any,
        answer: str,
    ) -> RLMChatCompletion:
        usage = handler.get_usage_summary()
        elapsed = run.elapsed()
        run.emit(ev.FinalAnswer, answer=answer)
        if self.persistent and env_supports(env, "persistence"):
            env.add_history(messages)
        trajectory = self.logger.trajectory_of(run.run_id) if self.logger is not None else None
        return RLMChatCompletion(
            root_model=self.root_model,
            prompt=prompt,
            response=answer,
            usage_summary=usage,
            execution_time=elapsed,
            metadata=trajectory,
        )

    def batch(self, items: Any, output: Any = None, **kwargs: Any) -> Any:
        """Run this RLM's settings over a dataset (``rlm.batch.batch``): ``items`` is a
        JSON-lines path or an iterable of item dicts, ``output`` a JSON-lines path that makes
        it resumable; returns the ``BatchSummary``. See docs/batch.md."""
        from rlm.batch import batch

        return batch(items, output, rlm=self, **kwargs)

    async def abatch(self, items: Any, output: Any = None, **kwargs: Any) -> Any:
        """``batch()`` as a coroutine (``rlm.batch.abatch``)."""
        from rlm.batch import abatch

        return await abatch(items, output, rlm=self, **kwargs)

    def close(self) -> None:
        """Release the persistent environment, if any. Safe to call twice. Clients are
        not closed: they may be shared (a child RLM uses its parent's), and are garbage
        collected with this RLM; call ``rlm.client.close()`` to release one now."""
        if self._persistent_env is not None:
            self._persistent_env.cleanup()
            self._persistent_env = None

    def __enter__(self) -> RLM:
        return self

    def __exit__(self, *exc: object) -> bool:
        self.close()
        return False


#: The end of a streamed run (after its last event).
_END = object()


def _with_parsed(result: RLMChatCompletion, parsed: Any) -> StructuredCompletion[Any]:
    """``result`` as a ``StructuredCompletion`` carrying ``parsed``."""
    fields = {name: getattr(result, name) for name in result.__dataclass_fields__}
    fields["parsed"] = parsed
    return StructuredCompletion(**fields)


def _structured_result(
    structured: StructuredAnswer, result: RLMChatCompletion
) -> StructuredCompletion[Any]:
    """A plain call's answer (an RLM at its depth cap) checked against ``response_format``."""
    parsed, text = structured.last_chance(result.response)
    result.response = text
    return _with_parsed(result, parsed)


class _QueueSubscriber:
    """Feeds a stream's queue; wants root tokens."""

    wants_tokens = True

    def __init__(self, put: Callable[[Any], None]):
        self.put = put

    def __call__(self, event: ev.Event) -> None:
        self.put(event)


def _subcall_finished(
    run: Run,
    call_id: str,
    kind: str,
    model: str,
    start: float,
    record: RLMChatCompletion | None,
    error: str | None = None,
    child_run_id: str | None = None,
) -> None:
    if not run.listening:
        return
    usage = record.usage_summary if record is not None else None
    if error is None and record is not None and record.error:
        error = record.error
    run.emit(
        ev.SubcallFinished,
        call_id=call_id,
        kind=kind,
        model=model,
        duration=time.perf_counter() - start,
        error=error,
        input_tokens=usage.total_input_tokens if usage is not None else 0,
        output_tokens=usage.total_output_tokens if usage is not None else 0,
        cost=usage.total_cost if usage is not None else None,
        child_run_id=child_run_id,
        response_preview=record.response[: ev.PREVIEW_CHARS] if record is not None else "",
    )


def _call_observer(run: Run) -> Callable[..., Callable[..., None]]:
    """The handler's hook for ``llm_query`` calls: a SubcallStarted now, and a function
    that emits the SubcallFinished."""

    def observe(kind: str, prompt: Any, model: str | None) -> Callable[..., None]:
        call_id = new_run_id()
        label = model or run.handler.get_client(model, run.depth + 1).model_name
        run.emit(
            ev.SubcallStarted, call_id=call_id, kind=kind, model=label,
            prompt_preview=_text_of(prompt),
        )  # fmt: skip
        start = time.perf_counter()

        def finished(record: RLMChatCompletion | None, error: str | None = None) -> None:
            _subcall_finished(run, call_id, kind, label, start, record, error)

        return finished

    return observe
