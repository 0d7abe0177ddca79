"""Recursion: ``rlm_query`` served by a child RLM one level down, or by a plain model
call at the depth cap, and the sub-call events of both.

:class:`Recursion` is a base class of :class:`rlm.core.rlm.RLM`. A child's configuration
is ``dataclasses.replace`` of its parent's (``RLMConfig.child``); the child itself is
built by calling ``rlm.core.rlm.RLM`` with rlms' keyword arguments, and clients come from
``rlm.core.rlm.get_client``: both names are looked up on that module at call time, so a
patch of either (what rlms' tests do) applies.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rlm.clients.base_lm import call_client, reports_usage_per_call
from rlm.core import events as ev
from rlm.core import ledger
from rlm.core.run import Run, new_run_id
from rlm.datatypes import RLMChatCompletion, UsageSummary
from rlm.logger import RLMLogger
from rlm.logger.subscriptions import _text_of
from rlm.utils.exceptions import CancellationError, LimitExceededError

if TYPE_CHECKING:
    from rlm.core.rlm import RLM


def _error_completion(model: str, prompt: Any, message: str, start: float) -> RLMChatCompletion:
    return RLMChatCompletion(
        root_model=model,
        prompt=prompt,
        response=message,
        usage_summary=UsageSummary(),
        execution_time=time.perf_counter() - start,
        error=message,
    )


class Recursion:
    """How an RLM serves ``rlm_query``: ``_subcall`` and the child it spawns."""

    def _configured_models(self, run: Run) -> set[str]:
        """Model names model code may choose: the root, other_backends and depth_models."""
        root, others = self._clients()
        names = {getattr(c, "model_name", None) for c in (root, *others)}
        if run.handler is not None:
            names.update(run.handler.clients)
        names.update(self.depth_models.values())
        return {n for n in names if isinstance(n, str)}

    def _spawn_child(self, run: Run, model: str | None) -> RLM:
        """A child RLM one level down, built with the arguments rlms passes its children.

        It gets the full ``max_iterations`` (as in rlms); money, tokens and time are leased
        from what ``run`` and its ancestors have left. It shares this RLM's clients.
        """
        child_backend_kwargs = dict(self.backend_kwargs)
        if model is not None:
            child_backend_kwargs["model_name"] = model
        budget, tokens, timeout = ledger.lease(self, run)
        config = self._config.child(
            backend_kwargs=child_backend_kwargs,
            max_budget=budget,
            max_timeout=timeout,
            max_tokens=tokens,
            logger=RLMLogger() if self.logger is not None else None,
            custom_tools=self.custom_sub_tools,
        )
        # rlm.core.rlm.RLM, looked up at call time like rlms does (its tests patch it).
        child = self._seam("RLM")(**config.child_arguments())
        root, others = self._clients()
        if model is not None and model != root.model_name:
            registered = run.handler.clients.get(model) if run.handler is not None else None
            registered = registered or next((c for c in others if c.model_name == model), None)
            root = registered or self._seam("get_client")(self.backend, child_backend_kwargs)
        child._client_cache = (None, root, others)
        return child

    def _subcall(
        self, prompt: Any, model: str | None = None, _run: Run | None = None
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
            client = self._seam("get_client")(
                self.backend, {**self.backend_kwargs, "model_name": model}
            )
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

    def _subcall_fn(self, run: Run) -> Callable[..., RLMChatCompletion]:
        """rlms' ``subcall_fn(prompt, model=None)`` for the environment, tied to ``run`` (or,
        for a persistent environment, to whichever run is using it at the time)."""

        def subcall_fn(prompt: Any, model: str | None = None) -> RLMChatCompletion:
            current = self._persistent_run if self.persistent else None
            return self._subcall(prompt, model, _run=current or run)

        # Our own environments route rlm_query through the handler instead (the same
        # _subcall), so that nothing the model's helpers hold can reach this RLM.
        subcall_fn.rlm_routed_via_handler = True  # type: ignore[attr-defined]
        return subcall_fn

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
