"""The RLM loop.

``RLM(...).completion(prompt)`` puts ``prompt`` into a REPL as ``context``,
lets the root model write ```repl code that inspects it and calls sub-models,
and returns the answer the model submits, as an :class:`RLMChatCompletion`.

The configuration is a frozen :class:`~rlm.core.config.RLMConfig`, the limits are the
ledger (:mod:`rlm.core.ledger`); the entry points (``completion``, ``stream``...) are in
:mod:`rlm.api.calls`, recursion (``rlm_query``, child RLMs) in :mod:`rlm.recursion.children`
client construction in :mod:`rlm.clients.cache` and the root model's turns (stopping at
the end of a block, feedback, the answer check) in :mod:`rlm.utils.turns`, each a base
class of :class:`RLM`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from rlm.api.calls import CompletionAPI, _structured_result, _with_parsed
from rlm.clients import get_client, resolve_model
from rlm.clients.cache import ClientCache
from rlm.comms import adaptive
from rlm.comms.limiter import CallLimiter
from rlm.comms.lm_handler import LMHandler
from rlm.core import events as ev
from rlm.core import ledger
from rlm.core.config import ConfigAttributes, RLMConfig
from rlm.core.run import Run, Subscriber
from rlm.datatypes import (
    ClientBackend,
    CodeBlock,
    EnvironmentType,
    QueryMetadata,
    RLMChatCompletion,
    RLMIteration,
)
from rlm.environments import BaseEnv, env_supports, get_environment
from rlm.environments.binding import EnvironmentBinding
from rlm.logger import RLMLogger, VerbosePrinter
from rlm.logger.subscriptions import Subscriptions
from rlm.recursion.children import Recursion, _call_observer
from rlm.utils.compaction import Compaction, ask_fitting
from rlm.utils.exceptions import CancellationError
from rlm.utils.parsing import find_code_blocks, find_final_answer, format_iteration
from rlm.utils.prompts import (
    COMPACTION_NOTE,
    RLM_SYSTEM_PROMPT,
    SMALL_MODEL_SYSTEM_PROMPT,
    build_final_answer_prompt,
    build_rlm_system_prompt,
    build_user_prompt,
)
from rlm.utils.rlm_utils import collect_secrets, register_secrets
from rlm.utils.structured import StructuredAnswer
from rlm.utils.turns import Guide, Turns

#: Names rlms-era code imports or patches here (looked up here at call time).
__all__ = ["RLM", "RLMConfig", "get_client", "get_environment"]


#: rlms-era name of the run state (tests and tools import it from here).
_Run = Run


#: ``RLM``'s docstring: what it does and every argument (kept out of the class body).
_RLM_DOC = """A Recursive Language Model: a drop-in ``completion()`` for prompts of any size.

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
        small_model: run the loop for a small model, default ``None``: yes for the
            embedded ``llama_cpp`` backend and for model names of at most 4B parameters
            (``"...-1.5b-..."``). A small model gets a shorter system prompt (unless
            ``custom_system_prompt`` is set) and, when its client knows its window,
            REPL output cut to half the window in characters and compaction before the
            window fills; ``stop_at_block_end`` and ``feedback`` follow it. Ours.
        stop_at_block_end: end each root response at the end of its first complete
            ```` ```repl ```` block (a stop sequence where the client takes one, else a
            cut), so the model sees real output before it goes on; default ``None``
            (``small_model``). Off, every block of a response runs, as in rlms. Ours.
        feedback: notes in the REPL output the model reads: a search that matched
            nothing, an ``llm_query`` prompt without any of the context, a block that
            repeats the previous one; default
            ``None`` (``small_model``). Ours.
        verify_answer: send a final answer that is in neither the context nor any
            output back to the model once before accepting it; with a small model, its
            first final answer always goes back, with the question restated and a search
            for the answer and the names the outputs gave (small models often submit a
            step of the answer, such as the first hop of two), and a changed answer once
            more. Default ``None`` (``small_model``). Ours.
        sub_window_tokens: the sub-model's window in tokens; a sub-call whose prompt
            does not fit gets an ``Error:`` answer instead of being sent. Default
            ``None``: the client's own window (``n_ctx`` for llama.cpp), else no limit.

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


class RLM(
    ConfigAttributes,
    ClientCache,
    Subscriptions,
    EnvironmentBinding,
    Recursion,
    Compaction,
    Turns,
    CompletionAPI,
):
    __doc__ = _RLM_DOC  # the arguments, documented above

    @staticmethod
    def _seam(name: str) -> Any:
        """``RLM``, ``get_client`` or ``get_environment`` as this module has them now.

        Read from the globals of the module that defined this class (patches of
        ``rlm.core.rlm.<name>`` included), not from ``sys.modules``: code that re-imports
        ``rlm.core.rlm`` (rlms' import tests do) leaves the classes already bound to their
        own module, and a patch of that module must still reach them.
        """
        return globals()[name]

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
        small_model: bool | None = None,
        stop_at_block_end: bool | None = None,
        feedback: bool | None = None,
        verify_answer: bool | None = None,
        sub_window_tokens: int | None = None,
    ):
        arguments = {k: v for k, v in locals().items() if k not in ("self", "model")}
        if model is not None:  # "provider/model" shorthand (LiteLLM's convention); ours
            arguments["backend"], arguments["backend_kwargs"] = resolve_model(
                model, None, backend_kwargs
            )
        self._config = RLMConfig.from_arguments(**arguments)
        self.system_prompt = custom_system_prompt or RLM_SYSTEM_PROMPT
        self.verbose = VerbosePrinter(enabled=verbose)
        # Clients are built at the first completion(), as in rlms: RLM(...) constructs without
        # an API key, and a patch of rlm.core.rlm.get_client made after construction applies.
        self._client_cache = None
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
        # Every secret given to a client or an environment is redacted by value wherever it
        # would be logged or printed, with or without a logger.
        register_secrets(
            collect_secrets(self.backend_kwargs, self.other_backend_kwargs, environment_kwargs)
        )
        # The log's first line, written here as rlms does when the model is named; when the
        # backend picks its own default model, at the first completion (once it is known).
        self._metadata_logged = False
        if self.logger is not None and self.backend_kwargs.get("model_name"):
            self._log_metadata()

    @property
    def config(self) -> RLMConfig:
        """This RLM's configuration (frozen; ``dataclasses.replace`` makes a changed copy)."""
        return self._config

    def _make_handler(self, run: Run) -> LMHandler:
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
        handler.guard = lambda request: (
            ledger.refusal(run) or self._sub_window_refusal(run, request)
        )
        # The child's depth is decided here, from this run, never from the request.
        handler.subcall_fn = lambda prompt, model, _depth: self._subcall(prompt, model, _run=run)
        if run.listening:
            handler.call_observer = _call_observer(run)
        run.handler = handler
        return handler

    # rlms-era seam: the refusal texts now live in the ledger.
    _refusal = staticmethod(ledger.refusal)

    def _setup_prompt(
        self,
        prompt: Any,
        root_prompt: str | None = None,
        small: bool = False,
        metadata: QueryMetadata | None = None,
    ) -> list[dict[str, Any]]:
        system = self.system_prompt
        if small and system == RLM_SYSTEM_PROMPT:
            system = SMALL_MODEL_SYSTEM_PROMPT
        messages = build_rlm_system_prompt(
            system_prompt=system,
            query_metadata=metadata or QueryMetadata(prompt),
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

    def _run_iteration(
        self, run: Run, handler: LMHandler, env: BaseEnv, messages: list[dict[str, Any]]
    ) -> RLMIteration:
        start = time.perf_counter()
        response, prompt_snapshot = ask_fitting(
            run, messages, lambda sent: self._ask_turn(run, handler, sent)
        )
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
        run.guide = self._guide(prompt, root_prompt)
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
            messages = self._setup_prompt(
                prompt, root_prompt, small=run.guide.small, metadata=run.context_metadata(prompt)
            )
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
        setup_length = run.history_start = len(messages)
        compactions = 0
        guide = run.guide = run.guide or Guide()
        for number in range(1, self.max_iterations + 1):
            run.iteration = number
            ledger.check_time(run, f"before iteration {number}")
            if (self.compaction or guide.compact) and number > 1:
                messages, compactions = self._maybe_compact(
                    run, handler, env, messages, setup_length, compactions, guide.reserve
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
            answer, rejection = iteration.final_answer, None
            if answer is not None and structured is None:
                rejection = self._unverified(run, iteration, number == self.max_iterations)
                if rejection is None:
                    return self._finish(run, handler, env, messages, prompt, answer)
            elif answer is not None:
                # Raises StructuredOutputError once no try is left.
                parsed, data, rejection = structured.judge(answer)
                if rejection is None:
                    text = structured.response_text(answer, data)
                    result = self._finish(run, handler, env, messages, prompt, text)
                    return _with_parsed(result, parsed)
            if guide.output_chars is None:
                new_messages = format_iteration(iteration)
            else:
                new_messages = format_iteration(iteration, guide.output_chars)
            self._add_feedback(run, iteration, new_messages)
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
        start = time.perf_counter()
        response, final_messages = ask_fitting(
            run,
            messages,
            lambda sent: self._ask_root(run, handler, sent),
            (build_final_answer_prompt(root_prompt, answer_format),),
        )
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
