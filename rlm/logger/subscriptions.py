"""An RLM's subscribers: its logger, its printer, its callbacks and ``subscribe()``'s, and
the run metadata they are given (the log's first line, ``RunStarted``).

:class:`Subscriptions` is a base class of :class:`rlm.core.rlm.RLM`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rlm.core import events as ev
from rlm.core.run import Run, Subscriber, Tree
from rlm.datatypes import RLMMetadata
from rlm.logger.callbacks import Callbacks
from rlm.utils.rlm_utils import is_sensitive_key, redact

if TYPE_CHECKING:
    from rlm.environments import BaseEnv


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


def _text_of(prompt: Any) -> str:
    return prompt if isinstance(prompt, str) else repr(prompt)[: ev.PREVIEW_CHARS]


class Subscriptions:
    """Who hears the events of an RLM's runs, and what the log's metadata says."""

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

    def _emit_started(self, run: Run, prompt: Any, env: BaseEnv) -> None:
        if not run.listening:
            return
        metadata = run.context_metadata(prompt)  # measured once per run
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
