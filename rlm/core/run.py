"""The state of one run (one ``completion()`` of one RLM, root or child) and the way its
events go out.

A run has its own subscribers (its RLM's logger, printer and callbacks: they see
that run's events only, as each RLM saw its own before the stream) and shares
the tree's subscribers with every run of its tree (``RLM.stream()``'s queue,
``RLM.subscribe()``'s observers: they see every event, children's included).
A subscriber that raises is reported once (a ``RuntimeWarning`` and a warning
on the ``rlm`` logger) and then left out of that tree.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from typing import Any

from rlm.core import events as ev
from rlm.datatypes import QueryMetadata

Subscriber = Callable[[ev.Event], Any]

log = logging.getLogger("rlm")


def new_run_id() -> str:
    return uuid.uuid4().hex[:16]


class Tree:
    """What every run of one tree shares: the tree's subscribers and the event counter."""

    def __init__(self, subscribers: list[Subscriber] | None = None):
        self.subscribers: list[Subscriber] = list(subscribers or [])
        self.failed: set[int] = set()
        self._seq = itertools.count(1)
        self._lock = threading.Lock()

    def next_seq(self) -> int:
        return next(self._seq)

    def report(self, subscriber: Subscriber, exc: BaseException) -> None:
        """Report a raising subscriber once per tree, then stop calling it."""
        with self._lock:
            if id(subscriber) in self.failed:
                return
            self.failed.add(id(subscriber))
        name = getattr(subscriber, "__qualname__", None) or type(subscriber).__name__
        report_failure(f"event subscriber {name}", exc, "; it is skipped for the rest of the run")


def report_failure(what: str, exc: BaseException, tail: str = "") -> None:
    """Report a raising subscriber or callback: a RuntimeWarning and the ``rlm`` logger."""
    message = f"rlm: {what} raised {type(exc).__name__}: {exc}{tail}"
    log.warning(message)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def wants_tokens(subscriber: Subscriber) -> bool:
    return bool(getattr(subscriber, "wants_tokens", False))


class Run:
    """The state of one completion() call (so concurrent calls on one RLM do not mix).

    A child RLM's run points at its parent's: cancellation and deadlines flow
    down the tree, limit checks walk up it, and events go out through the tree.
    """

    def __init__(
        self,
        rlm: Any,
        parent: Run | None = None,
        subscribers: list[Subscriber] | None = None,
        run_id: str | None = None,
        tree: Tree | None = None,
    ):
        self.rlm = rlm
        self.parent = parent
        self.run_id = run_id or new_run_id()
        self.depth: int = getattr(rlm, "depth", 0)
        self.tree = tree or (parent.tree if parent is not None else Tree())
        #: This run's own subscribers (its RLM's logger, printer, callbacks).
        self.subscribers: list[Subscriber] = list(subscribers or [])
        self.start = time.perf_counter()
        max_timeout = getattr(rlm, "max_timeout", None)
        own = self.start + max_timeout if max_timeout is not None else None
        inherited = parent.deadline if parent is not None else None
        self.deadline = (
            min(d for d in (own, inherited) if d is not None) if (own or inherited) else None
        )
        self.cancelled = threading.Event()
        self.best_partial: str | None = None
        self.consecutive_errors = 0
        self.last_error: str | None = None
        self.iteration = 0
        self.handler: Any = None
        self.env: Any = None
        # Size of the root history as last measured by the provider (for compaction).
        self.measured_tokens: int | None = None
        self.measured_messages = 0
        #: Where the root history's turns start (after the system prompt and setup, or
        #: a compaction's summary), whether a note stands for turns dropped for a model
        #: that refused the prompt as too long for its window, how many it stands for,
        #: and that window when a refusal gave it (rlm.utils.compaction).
        self.history_start = 0
        self.trim_note = False
        self.dropped_messages = 0
        self.refused_window: int | None = None
        self.last_root_usage: Any = None
        #: What this run does beyond rlms' loop (rlm.utils.turns.Guide), set at its start.
        self.guide: Any = None
        self.warned: set[str] = set()
        self.children: set[Run] = set()
        self.children_lock = threading.Lock()
        self._context_metadata: tuple[int, QueryMetadata] | None = None

    def context_metadata(self, prompt: Any) -> QueryMetadata:
        """``QueryMetadata(prompt)``, measured once per run: the system prompt and the
        ``RunStarted`` event both need it (a list of a million items takes ~0.1 s)."""
        cached = self._context_metadata
        if cached is None or cached[0] != id(prompt):
            cached = self._context_metadata = (id(prompt), QueryMetadata(prompt))
        return cached[1]

    # -- events -----------------------------------------------------------------

    @property
    def parent_run_id(self) -> str | None:
        return self.parent.run_id if self.parent is not None else None

    @property
    def listening(self) -> bool:
        """Whether anyone receives this run's events (else emitting is skipped)."""
        return bool(self.subscribers or self.tree.subscribers)

    @property
    def wants_tokens(self) -> bool:
        """Whether a subscriber wants root tokens (the root model is then streamed)."""
        return any(wants_tokens(s) for s in (*self.subscribers, *self.tree.subscribers))

    def emit(self, cls: type[ev.Event], **fields: Any) -> None:
        """Build one event of this run and hand it to its subscribers, then the tree's."""
        if not (self.subscribers or self.tree.subscribers):
            return
        fields.setdefault("iteration", self.iteration or None)
        event = cls(
            run_id=self.run_id,
            parent_run_id=self.parent_run_id,
            depth=self.depth,
            seq=self.tree.next_seq(),
            **fields,
        )
        self.deliver(event)

    def deliver(self, event: ev.Event) -> None:
        tree = self.tree
        for subscriber in (*self.subscribers, *tree.subscribers):
            if tree.failed and id(subscriber) in tree.failed:
                continue
            try:
                subscriber(event)
            except Exception as exc:
                tree.report(subscriber, exc)

    def on_token(self) -> Callable[[str], None] | None:
        """A callback for root-model tokens, when someone wants them."""
        if not self.wants_tokens:
            return None
        return lambda text: self.emit(ev.RootToken, text=text) if text else None

    # -- the tree ---------------------------------------------------------------

    def chain(self) -> list[Run]:
        runs, node = [], self
        while node is not None:
            runs.append(node)
            node = node.parent
        return runs

    def is_cancelled(self) -> bool:
        """Whether this run or an ancestor was cancelled (checked several times per
        iteration: a walk up the tree, no list)."""
        node: Run | None = self
        while node is not None:
            if node.cancelled.is_set():
                return True
            node = node.parent
        return False

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
