"""Typed events of a run tree: the one description of what happens in a run.

``RLM.stream()`` / ``astream()`` yield these; the JSON-lines logger, the Rich
printer, the four callbacks, trajectories, the CLI's live status, tracing and
the server's SSE are subscribers of the same stream.

Every event carries the ids that place it in the tree: ``run_id`` (one per
completion, root or child), ``parent_run_id`` (None for the root), ``depth``
and ``iteration`` (1-based; None outside an iteration). ``seq`` numbers the
events of one root stream in order. ``to_dict()`` gives a JSON-able dict with
a ``"type"`` key (big values are previews, never whole contexts).

The contract, in the order a run emits them::

    run_started
      compaction_status? compacted?  (before an iteration, with compaction=True)
      iteration_started
        history_trimmed*             (the model refused a prompt too long for its window;
                                      also before compacted and the forced answer)
        root_token*                  (as the root model streams, when it can)
        cell_started  cell_output*  cell_finished       (per code block)
        subcall_started ... subcall_finished            (llm_query, each batch item,
                                                         rlm_query: a child run's own
                                                         events nest in between)
      iteration_finished
      limit_warning*                 (a limit past 80% after an iteration, once per limit)
      ...
      limit_stopped?  final_answer?
    run_finished                     (carries the RLMChatCompletion, or the error)
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

#: Characters of a prompt, code or output kept in an event's dict form.
PREVIEW_CHARS = 2_000


def preview(value: Any, limit: int = PREVIEW_CHARS) -> str:
    """A bounded text preview of ``value`` (never the whole of a huge context)."""
    text = value if isinstance(value, str) else repr(value)[: limit + 1]
    return text if len(text) <= limit else text[:limit] + f"... [{len(text):,} chars]"


@dataclass(frozen=True, kw_only=True)
class Event:
    """Base of every event; ``type`` names the kind (``"run_started"``, ...)."""

    type: ClassVar[str] = "event"
    run_id: str
    parent_run_id: str | None = None
    depth: int = 0
    iteration: int | None = None
    seq: int = 0
    timestamp: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if hasattr(value, "to_dict"):
                value = value.to_dict()
            elif isinstance(value, str) and f.name in _PREVIEWED:
                value = preview(value)
            out[f.name] = value
        return out


_PREVIEWED = {
    "prompt_preview",
    "response_preview",
    "code",
    "text",
    "response",
    "answer",
    "message",
}


@dataclass(frozen=True, kw_only=True)
class RunStarted(Event):
    type: ClassVar[str] = "run_started"
    model: str
    environment: str
    max_iterations: int
    prompt_preview: str = ""
    backend: str = ""
    max_depth: int = 1
    context_type: str = ""
    context_length: Any = 0
    other_backends: list[str] | None = None
    #: The run's ``RLMMetadata`` (what the logger writes as its first line).
    metadata: Any = None
    #: ``env.isolation`` of the run's environment, when it reports one.
    isolation: dict[str, Any] | None = None


@dataclass(frozen=True, kw_only=True)
class RunFinished(Event):
    """The last event of a run. ``result`` is its ``RLMChatCompletion`` (None when the run
    stopped with an exception, named in ``error``)."""

    type: ClassVar[str] = "run_finished"
    result: Any = None
    error: str | None = None
    execution_time: float = 0.0
    iterations: int = 0
    #: ``UsageSummary`` of the whole subtree so far (also set when the run failed).
    usage: Any = None


@dataclass(frozen=True, kw_only=True)
class IterationStarted(Event):
    type: ClassVar[str] = "iteration_started"


@dataclass(frozen=True, kw_only=True)
class IterationFinished(Event):
    """``record`` is the ``RLMIteration`` (what the logger writes as one line)."""

    type: ClassVar[str] = "iteration_finished"
    record: Any = None
    iteration_time: float = 0.0
    #: True for the answer-forcing turn after ``max_iterations`` (logged; no callbacks).
    forced_answer: bool = False


@dataclass(frozen=True, kw_only=True)
class RootToken(Event):
    type: ClassVar[str] = "root_token"
    text: str


@dataclass(frozen=True, kw_only=True)
class CellStarted(Event):
    type: ClassVar[str] = "cell_started"
    cell: int
    code: str


@dataclass(frozen=True, kw_only=True)
class CellOutput(Event):
    type: ClassVar[str] = "cell_output"
    cell: int
    stream: str  # "stdout" or "stderr"
    text: str


@dataclass(frozen=True, kw_only=True)
class CellFinished(Event):
    """``result`` is the cell's ``REPLResult``."""

    type: ClassVar[str] = "cell_finished"
    cell: int
    result: Any = None
    execution_time: float = 0.0


@dataclass(frozen=True, kw_only=True)
class SubcallStarted(Event):
    """``kind`` is ``"llm"`` (llm_query), ``"llm_batch_item"`` or ``"rlm"`` (rlm_query;
    ``child_run_id`` names the child run when one is started)."""

    type: ClassVar[str] = "subcall_started"
    call_id: str
    kind: str
    model: str
    prompt_preview: str = ""
    child_run_id: str | None = None


@dataclass(frozen=True, kw_only=True)
class SubcallFinished(Event):
    type: ClassVar[str] = "subcall_finished"
    call_id: str
    kind: str
    model: str
    duration: float = 0.0
    error: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float | None = None
    child_run_id: str | None = None
    response_preview: str = ""


@dataclass(frozen=True, kw_only=True)
class LimitWarning(Event):
    """A limit is nearly spent (``used`` of ``maximum``, in the limit's unit)."""

    type: ClassVar[str] = "limit_warning"
    limit: str  # "budget", "tokens", "timeout", "iterations", "errors"
    used: float
    maximum: float
    message: str = ""


@dataclass(frozen=True, kw_only=True)
class LimitStopped(Event):
    type: ClassVar[str] = "limit_stopped"
    limit: str  # "budget", "tokens", "timeout", "errors", "cancelled"
    message: str = ""
    used: float | None = None
    maximum: float | None = None


@dataclass(frozen=True, kw_only=True)
class CompactionStatus(Event):
    """The history's size, measured before each iteration of a run with compaction."""

    type: ClassVar[str] = "compaction_status"
    tokens: int
    threshold: int
    window: int


@dataclass(frozen=True, kw_only=True)
class Compacted(Event):
    type: ClassVar[str] = "compacted"
    tokens_before: int
    threshold: int
    summary_chars: int = 0


@dataclass(frozen=True, kw_only=True)
class HistoryTrimmed(Event):
    """The model refused a root call whose prompt did not fit its context window: the
    ``dropped`` oldest messages of the history gave way to a note, and the call is made
    again. ``window``: the window (tokens) when the refusal gave it; ``tokens``: the
    history's estimated size now."""

    type: ClassVar[str] = "history_trimmed"
    dropped: int
    window: int | None = None
    tokens: int = 0


@dataclass(frozen=True, kw_only=True)
class FinalAnswer(Event):
    type: ClassVar[str] = "final_answer"
    answer: str


#: Every event class by its ``type``.
EVENT_TYPES: dict[str, type[Event]] = {
    cls.type: cls
    for cls in (
        RunStarted,
        RunFinished,
        IterationStarted,
        IterationFinished,
        RootToken,
        CellStarted,
        CellOutput,
        CellFinished,
        SubcallStarted,
        SubcallFinished,
        LimitWarning,
        LimitStopped,
        CompactionStatus,
        Compacted,
        HistoryTrimmed,
        FinalAnswer,
    )
}

__all__ = ["Event", "EVENT_TYPES", "preview", *(c.__name__ for c in EVENT_TYPES.values())]
