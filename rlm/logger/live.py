"""A live one-line status of a run tree for terminals (``rlm run``), as a subscriber.

``iteration 2 · cells 1 · sub-calls 3 · tokens 1,234 · $0.0012 · 4.2s``: the root's
iteration, the code cells and sub-calls in flight across the tree, the tokens and
cost so far, and the elapsed time. It redraws on every event and four times a second.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.text import Text


class LiveStatus:
    """Subscribe with ``rlm.subscribe(status)`` inside ``with status:``."""

    wants_tokens = True

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self._lock = threading.Lock()
        self.start = time.perf_counter()
        self.iteration = 0
        self.cells = 0
        self.subcalls = 0
        self.tokens = 0
        self.streamed = 0  # root tokens of the call in progress (until its usage is known)
        self.cost = 0.0
        self.priced = False
        self._live = Live(
            console=self.console,
            get_renderable=self.render,
            refresh_per_second=4,
            transient=True,
        )

    def __enter__(self) -> LiveStatus:
        self.start = time.perf_counter()
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.__exit__(*exc)

    def line(self) -> str:
        with self._lock:
            cost = f"${self.cost:.4f}" if self.priced else "$-"
            return (
                f"iteration {self.iteration} · cells {self.cells} · sub-calls {self.subcalls} · "
                f"tokens {self.tokens + self.streamed:,} · {cost} · "
                f"{time.perf_counter() - self.start:.1f}s"
            )

    def render(self) -> Text:
        return Text(self.line(), style="cyan")

    def _add_usage(self, tokens: int, cost: float | None) -> None:
        self.tokens += tokens
        if cost is not None:
            self.cost += cost
            self.priced = True

    def __call__(self, event: Any) -> None:
        kind = event.type
        with self._lock:
            if kind == "iteration_started" and event.parent_run_id is None:
                self.iteration = event.iteration
            elif kind == "cell_started":
                self.cells += 1
            elif kind == "cell_finished":
                self.cells -= 1
            elif kind == "subcall_started":
                self.subcalls += 1
            elif kind == "subcall_finished":
                self.subcalls -= 1
                if event.child_run_id is None:  # a child's own calls are counted as they come
                    self._add_usage(event.input_tokens + event.output_tokens, event.cost)
            elif kind == "root_token":
                self.streamed += 1
            elif kind == "iteration_finished":
                self.streamed = 0
                usage = getattr(event.record, "root_usage", None)
                if usage is not None:
                    self._add_usage(usage.total_tokens, usage.total_cost)
            else:
                return
        if kind != "root_token" or self.streamed % 8 == 1:
            self._live.refresh()
