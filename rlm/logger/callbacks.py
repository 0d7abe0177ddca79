"""Subscribers that turn a run's events into what the RLM's arguments ask for.

The four callbacks keep rlms' signatures and firing rules: ``on_iteration_*``
for each iteration of the run (root or child) with its depth, ``on_subcall_*``
for child RLMs only (``rlm_query`` below the depth cap), with the child's depth.
The logger and the Rich printer subscribe themselves (``handle_event``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from rlm.core.run import report_failure


class Callbacks:
    """The four user callbacks as one subscriber of a run's own events."""

    def __init__(
        self,
        on_subcall_start: Callable[..., Any] | None = None,
        on_subcall_complete: Callable[..., Any] | None = None,
        on_iteration_start: Callable[..., Any] | None = None,
        on_iteration_complete: Callable[..., Any] | None = None,
    ):
        self.on_subcall_start = on_subcall_start
        self.on_subcall_complete = on_subcall_complete
        self.on_iteration_start = on_iteration_start
        self.on_iteration_complete = on_iteration_complete
        self._failed: set[str] = set()
        self._lock = threading.Lock()

    def _fire(self, name: str, *args: Any) -> None:
        """Call one callback; one that raises is reported once and keeps being called
        (a callback never breaks the run)."""
        try:
            callback = getattr(self, name)
            if callback is not None:
                callback(*args)
        except Exception as exc:
            with self._lock:
                first = name not in self._failed
                self._failed.add(name)
            if first:
                report_failure(f"callback {name}", exc)

    def __bool__(self) -> bool:
        return any(
            (
                self.on_subcall_start,
                self.on_subcall_complete,
                self.on_iteration_start,
                self.on_iteration_complete,
            )
        )

    def __call__(self, event: Any) -> None:
        kind = event.type
        if kind == "iteration_started":
            if self.on_iteration_start is not None:
                self._fire("on_iteration_start", event.depth, event.iteration)
        elif kind == "iteration_finished":
            if self.on_iteration_complete is not None and not event.forced_answer:
                self._fire(
                    "on_iteration_complete", event.depth, event.iteration, event.iteration_time
                )
        elif kind == "subcall_started" and event.child_run_id is not None:
            if self.on_subcall_start is not None:
                self._fire(
                    "on_subcall_start", event.depth + 1, event.model, event.prompt_preview[:80]
                )
        elif kind == "subcall_finished" and event.child_run_id is not None:
            self._fire(
                "on_subcall_complete", event.depth + 1, event.model, event.duration, event.error
            )
