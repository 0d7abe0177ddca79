"""Human-readable progress of an RLM run, rendered with Rich.

Every event (header, iteration, model response, code execution, sub-call,
limits, final answer, usage summary) becomes one Rich renderable printed to a
``Console``. Three rules keep this safe for arbitrary model and program output:

- Text that comes from a model, a program or a user is always wrapped in
  ``rich.text.Text`` and never parsed as console markup, so ``"[bold]"`` or
  ``"[/]"`` prints literally. Terminal control characters (ESC and friends) are
  shown as visible escapes instead of reaching the terminal.
- Every long string is cut with :func:`rlm.utils.text.truncate_middle` (or
  ``truncate_end`` for one-line previews) *before* a renderable is built, so
  the cost of rendering does not depend on how big the output was.
- A disabled printer is a null object: its ``print_*`` methods are no-ops bound
  in the constructor, so callers never guard with ``if verbose:``.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.rule import Rule
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from rlm.datatypes import (
    CodeBlock,
    ModelUsageSummary,
    RLMChatCompletion,
    RLMIteration,
    RLMMetadata,
    UsageSummary,
)
from rlm.utils.rlm_utils import redact_text
from rlm.utils.text import truncate_end, truncate_middle

# Longest single-line preview of a sub-call's prompt or response.
_PREVIEW_CHARS = 80
# Longest configuration value shown in the header (model names, backend names).
_FIELD_CHARS = 200
# Most sub-call lines shown under one code block; the rest are summarised in one line.
_MAX_SUBCALL_LINES = 32

# C0 and C1 control characters other than tab and newline are shown as visible
# escapes: an ESC sequence printed by a model or a program must not drive the
# terminal. Carriage returns are dropped (Rich drops them too).
_CONTROL_ESCAPES: dict[int, str | None] = {
    code: f"\\x{code:02x}"
    for code in (*range(0x00, 0x20), *range(0x7F, 0xA0))
    if code not in (0x09, 0x0A, 0x0D)
}
_CONTROL_ESCAPES[0x0D] = None


def _neutralise(text: str) -> str:
    """Replace terminal control characters by visible escapes (O(len(text))), and every
    registered secret (API keys, tokens; see ``rlm.utils.rlm_utils``) by a marker."""
    return redact_text(text).translate(_CONTROL_ESCAPES)


def _one_line(text: str, limit: int) -> str:
    """A bounded single-line preview: cut first, then fold newlines and tabs."""
    return _neutralise(truncate_end(text, limit)).replace("\n", " ").replace("\t", " ")


def _prompt_text(prompt: Any) -> str:
    """The text worth previewing from a sub-call prompt, without repr-ing a huge object.

    A string is itself; a chat message is its ``content``; a list of messages
    previews its last one (the newest turn). Anything else is described by type.
    """
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, dict) and isinstance(prompt.get("content"), str):
        return prompt["content"]
    if isinstance(prompt, (list, tuple)) and prompt:
        last = prompt[-1]
        if isinstance(last, str):
            return last
        if isinstance(last, dict) and isinstance(last.get("content"), str):
            return last["content"]
        return f"<{type(prompt).__name__} of {len(prompt)} items>"
    return f"<{type(prompt).__name__}>"


def _format_seconds(seconds: float) -> str:
    return f"{seconds:.2f}s"


def _format_cost(cost: float | None) -> str:
    """USD with enough digits to tell small costs from zero; ``unknown`` when not priced."""
    if cost is None:
        return "unknown"
    return f"${cost:,.6f}" if abs(cost) < 0.01 else f"${cost:,.4f}"


def _section(label: str, style: str) -> Rule:
    """A left-aligned rule naming one part of a code-execution panel."""
    return Rule(Text(label, style=style), align="left", style="dim")


def _display(text: str, limit: int, style: str = "") -> Text:
    """A long piece of model or program output, cut to ``limit`` characters.

    The trailing newline that ``print()`` leaves is dropped after the cut,
    so the strip never scans more than the bounded text.
    """
    return Text(_neutralise(truncate_middle(text, limit)).rstrip("\n"), style=style)


def _field(value: object) -> Text:
    """A short configuration value (a name, a number) shown literally."""
    return Text(_neutralise(truncate_end(str(value), _FIELD_CHARS)))


# ----------------------------------------------------------------------
# Renderables: each event's Rich object, built from bounded text
# ----------------------------------------------------------------------


def _header_panel(rows: list[tuple[str, object]]) -> Panel:
    """The run header: one ``label  value`` row per configuration field."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for label, value in rows:
        grid.add_row(label, _field(value))
    return Panel(
        grid,
        title=Text("Recursive Language Model", style="bold"),
        title_align="left",
        border_style="cyan",
        expand=False,
    )


def _labelled(label: str, text: str, style: str, limit: int) -> list[RenderableType]:
    """A rule naming one part of a code-execution panel, then that part's text."""
    return [_section(label, f"bold {style}".strip()), _display(text, limit, style=style)]


def _code_panel(code_block: CodeBlock, limit: int) -> Panel:
    """One executed block: its code, then stdout, stderr, error and final answer."""
    result = code_block.result
    failed = bool(result.error) or bool(result.stderr)
    code = _neutralise(truncate_middle(code_block.code, limit))
    parts: list[RenderableType] = [
        Syntax(code, "python", word_wrap=True, background_color="default")
    ]
    if result.stdout:
        parts += _labelled("stdout", result.stdout, "", limit)
    if result.stderr:
        parts += _labelled("stderr", result.stderr, "red", limit)
    if result.error:
        parts += _labelled("error", result.error, "red", limit)
    if result.final_answer is not None:
        parts += _labelled("final answer set", str(result.final_answer), "green", limit)
    return Panel(
        Group(*parts),
        title=Text("Code execution", style="bold red" if failed else "bold blue"),
        title_align="left",
        subtitle=None if result.execution_time is None else _format_seconds(result.execution_time),
        subtitle_align="right",
        border_style="red" if failed else "blue",
    )


def _subcall_kind(metadata: dict[str, Any] | None, depth: int | None) -> tuple[Text, int | None]:
    """``sub-call``, or ``RLM sub-call N iterations`` with the depth rlms' metadata holds."""
    if not isinstance(metadata, dict):
        return Text("sub-call", style="bold"), depth
    kind = Text("RLM sub-call", style="bold")
    iterations = metadata.get("iterations")
    if isinstance(iterations, list):
        kind.append(f" {len(iterations)} iterations", style="dim")
    run_meta = metadata.get("run_metadata")
    if depth is None and isinstance(run_meta, dict) and isinstance(run_meta.get("depth"), int):
        depth = run_meta["depth"]
    return kind, depth


def _usage_cells(summary: ModelUsageSummary) -> list[Text]:
    return [
        Text(f"{summary.total_calls:,}"),
        Text(f"{summary.total_input_tokens:,}"),
        Text(f"{summary.total_output_tokens:,}"),
        Text(f"{summary.total_cached_tokens:,}"),
        Text(_format_cost(summary.total_cost)),
    ]


def _usage_table(usage: UsageSummary) -> Table:
    """One row per model, then the totals (a total cost of priced and unpriced models
    says ``+ unknown``)."""
    table = Table(title=None, header_style="bold", expand=False)
    table.add_column("Model")
    for heading in ("Calls", "Input tokens", "Output tokens", "Cached tokens", "Cost"):
        table.add_column(heading, justify="right")
    for model, summary in usage.model_usage_summaries.items():
        table.add_row(_field(model), *_usage_cells(summary))
    total = ModelUsageSummary()
    for summary in usage.model_usage_summaries.values():
        total.add(summary)
    total_cells = _usage_cells(total)
    priced = [s.total_cost is not None for s in usage.model_usage_summaries.values()]
    if any(priced) and not all(priced):
        total_cells[-1] = Text(f"{_format_cost(total.total_cost)} + unknown")
    table.add_section()
    table.add_row(Text("Total", style="bold"), *total_cells, style="bold")
    return table


def _noop(*_args: Any, **_kwargs: Any) -> None:
    """What every ``print_*`` method of a disabled printer is."""


class VerbosePrinter:
    """Prints the progress of an RLM run to a Rich console.

    ``VerbosePrinter(enabled=False)`` is a null printer: every ``print_*`` method
    does nothing and builds nothing. ``max_display_chars`` bounds every long
    string shown (model response, code, stdout, stderr, final answer); the cut
    is announced in place.
    """

    def __init__(
        self,
        enabled: bool = True,
        console: Console | None = None,
        max_display_chars: int = 4000,
    ) -> None:
        if max_display_chars < 1:
            raise ValueError(f"max_display_chars must be at least 1, got {max_display_chars!r}")
        self.enabled = enabled
        self.max_display_chars = max_display_chars
        self.console = console if console is not None else Console(stderr=False)
        if not enabled:
            for name in _EVENT_METHODS:
                setattr(self, name, _noop)

    # ------------------------------------------------------------------
    # As a subscriber of a run's events
    # ------------------------------------------------------------------

    def handle_event(self, event: Any) -> None:
        """Print one event of the run (root tokens as they arrive)."""
        handler = _HANDLERS.get(event.type)
        if handler is not None and self.enabled:
            handler(self, event)

    handle_event.wants_tokens = True  # type: ignore[attr-defined]

    def _on_run_started(self, event: Any) -> None:
        self._streamed: int | None = None
        self.print_metadata(
            event.metadata, context_type=event.context_type, context_length=event.context_length
        )

    def _on_root_token(self, event: Any) -> None:
        if getattr(self, "_streamed", None) != event.iteration:
            self._streamed = event.iteration
            if event.iteration is not None:
                self.print_iteration_start(event.iteration)
        self.console.print(Text(_neutralise(event.text), style="dim"), end="")

    def _on_iteration_finished(self, event: Any) -> None:
        record, number = event.record, event.iteration
        if event.forced_answer:
            return
        if getattr(self, "_streamed", None) == number and number is not None:
            self.console.print()
            with self.console:
                for block in record.code_blocks:
                    self.print_code_execution(block)
            return
        self.print_iteration(record, number)

    def _on_limit_stopped(self, event: Any) -> None:
        used, maximum = event.used, event.maximum
        if event.limit == "budget" and used is not None and maximum is not None:
            self.print_budget_exceeded(used, maximum)
        elif event.limit == "timeout" and used is not None and maximum is not None:
            self.print_limit_exceeded("timeout", f"{used:.1f}s of {maximum:g}s")
        elif event.limit == "tokens" and used is not None and maximum is not None:
            self.print_limit_exceeded("tokens", f"{int(used):,} of {int(maximum):,}")
        elif event.limit == "errors" and used is not None and maximum is not None:
            self.print_limit_exceeded(
                "errors", f"{int(used)} consecutive errors (limit {int(maximum)})"
            )
        elif event.limit == "interrupted":
            self.print_limit_exceeded("cancelled", "interrupted by the user")

    def _on_run_finished(self, event: Any) -> None:
        if event.result is not None:
            self.print_summary(event.iterations, event.execution_time, event.usage)

    # ------------------------------------------------------------------
    # Helpers
    # ------------------------------------------------------------------

    def _emit(self, *renderables: RenderableType) -> None:
        self.console.print(*renderables)

    def _display(self, text: str, style: str = "") -> Text:
        return _display(text, self.max_display_chars, style)

    # ------------------------------------------------------------------
    # Run header
    # ------------------------------------------------------------------

    def print_header(
        self,
        backend: str,
        model: str,
        environment: str,
        max_iterations: int,
        max_depth: int,
        other_backends: list[str] | None = None,
        *,
        context_type: str | None = None,
        context_length: int | None = None,
    ) -> None:
        """The configuration of a run, printed once before the first iteration
        (rlms' positional signature; the context fields are ours, by keyword)."""
        rows: list[tuple[str, object]] = [
            ("Backend", backend),
            ("Model", model),
            ("Environment", environment),
            ("Max iterations", max_iterations),
            ("Max depth", max_depth),
        ]
        context = [] if context_type is None else [context_type]
        if context_length is not None:
            context.append(f"{context_length:,} characters")
        if context:
            rows.append(("Context", ", ".join(context)))
        if other_backends:
            rows.append(("Other backends", ", ".join(map(str, other_backends))))
        self._emit(_header_panel(rows))

    def print_metadata(
        self,
        metadata: RLMMetadata,
        *,
        context_type: str | None = None,
        context_length: int | None = None,
    ) -> None:
        """The run header, taken from the metadata the logger records (a run's own header
        adds its context, which the metadata does not hold)."""
        self.print_header(
            metadata.backend,
            metadata.root_model,
            metadata.environment_type,
            metadata.max_iterations,
            metadata.max_depth,
            metadata.other_backends,
            context_type=context_type,
            context_length=context_length,
        )

    # ------------------------------------------------------------------
    # Iterations
    # ------------------------------------------------------------------

    def print_iteration_start(self, iteration: int) -> None:
        """A rule announcing iteration ``iteration`` (1-based)."""
        self._emit(Rule(Text(f"Iteration {iteration}", style="bold cyan"), style="cyan"))

    def print_completion(self, response: str, iteration_time: float | None = None) -> None:
        """The root model's response, printed literally."""
        self._emit(
            Panel(
                self._display(response),
                title=Text("Model response", style="bold magenta"),
                title_align="left",
                subtitle=None if iteration_time is None else _format_seconds(iteration_time),
                subtitle_align="right",
                border_style="magenta",
            )
        )

    def print_code_execution(self, code_block: CodeBlock) -> None:
        """One executed block: code, stdout, stderr/error, time, then one line per sub-call."""
        # One buffered write: sub-call lines printed from other threads cannot
        # land between the panel and its own sub-calls.
        with self.console:
            self._emit(_code_panel(code_block, self.max_display_chars))
            calls = code_block.result.rlm_calls
            for call in calls[:_MAX_SUBCALL_LINES]:
                self._print_call(call)
            hidden = calls[_MAX_SUBCALL_LINES:]
            if hidden:
                seconds = sum(call.execution_time or 0.0 for call in hidden)
                self._emit(
                    Text(
                        f"  ... {len(hidden):,} more sub-calls ({_format_seconds(seconds)})",
                        style="dim",
                    )
                )

    def _print_call(self, call: RLMChatCompletion) -> None:
        self.print_subcall(
            model=call.root_model,
            prompt_preview=_prompt_text(call.prompt),
            response_preview=call.response,
            execution_time=call.execution_time,
            metadata=call.metadata if isinstance(call.metadata, dict) else None,
            error=call.error,
        )

    def print_subcall(
        self,
        model: str,
        prompt_preview: str,
        response_preview: str,
        execution_time: float | None = None,
        metadata: dict[str, Any] | None = None,
        *,
        error: str | None = None,
        depth: int | None = None,
    ) -> None:
        """One line for one sub-call (``llm_query`` or a child RLM).

        ``metadata`` is rlms': a child RLM's trajectory (``iterations`` and
        ``run_metadata``); when given, the line says it was an RLM sub-call, with
        its iteration count and depth.
        """
        limit = min(_PREVIEW_CHARS, self.max_display_chars)
        line = Text("  ↳ ", style="dim")
        kind, depth = _subcall_kind(metadata, depth)
        line.append_text(kind)
        if depth is not None:
            line.append(f" depth {depth}", style="dim")
        line.append(" ")
        line.append(_one_line(model, _FIELD_CHARS), style="cyan")
        if execution_time is not None:
            line.append(f" {_format_seconds(execution_time)}", style="dim")
        line.append(": ")
        line.append(_one_line(prompt_preview, limit))
        if error:
            line.append(" -> error: ", style="bold red")
            line.append(_one_line(error, limit), style="red")
        else:
            line.append(" -> ", style="dim")
            line.append(_one_line(response_preview, limit), style="green")
        self._emit(line)

    def print_iteration(self, iteration: RLMIteration, iteration_num: int) -> None:
        """A whole iteration: its start rule, the response and every code block."""
        with self.console:
            self.print_iteration_start(iteration_num)
            self.print_completion(iteration.response, iteration.iteration_time)
            for block in iteration.code_blocks:
                self.print_code_execution(block)

    # ------------------------------------------------------------------
    # Limits and compaction
    # ------------------------------------------------------------------

    def print_budget_exceeded(self, spent: float, budget: float) -> None:
        """The run stopped because it spent more than ``max_budget`` (USD)."""
        self._emit(
            Panel(
                Text(f"Spent {_format_cost(spent)} of a {_format_cost(budget)} budget."),
                title=Text("Budget exceeded", style="bold red"),
                title_align="left",
                border_style="red",
            )
        )

    def print_limit_exceeded(self, limit_type: str, details: str) -> None:
        """The run stopped on a limit (timeout, tokens, errors, iterations...)."""
        self._emit(
            Panel(
                self._display(details),
                title=Text(f"Limit exceeded: {_one_line(limit_type, _FIELD_CHARS)}", "bold red"),
                title_align="left",
                border_style="red",
            )
        )

    def print_compaction_status(
        self, current_tokens: int, threshold_tokens: int, max_tokens: int
    ) -> None:
        """How full the root model's context is, and where compaction starts."""
        share = f" ({current_tokens / max_tokens:.0%})" if max_tokens > 0 else ""
        self._emit(
            Text(
                f"Context: {current_tokens:,} / {max_tokens:,} tokens{share}, "
                f"compaction at {threshold_tokens:,}",
                style="yellow" if current_tokens >= threshold_tokens else "dim",
            )
        )

    def print_compaction(self) -> None:
        """The history is being summarised to fit the context window."""
        self._emit(Rule(Text("Compacting history", style="bold yellow"), style="yellow"))

    def print_history_trimmed(self, dropped: int, window: int | None) -> None:
        """The model refused the history as too long for its window: the oldest messages
        went, and the call is made again."""
        size = f" ({window:,} tokens)" if window else ""
        self._emit(
            Text(
                f"History refused as too long for the window{size}: "
                f"dropped the {dropped} oldest messages",
                style="yellow",
            )
        )

    # ------------------------------------------------------------------
    # End of run
    # ------------------------------------------------------------------

    def print_final_answer(self, answer: object) -> None:
        """The final answer, printed literally."""
        text = answer if isinstance(answer, str) else str(answer)
        self._emit(
            Panel(
                self._display(text),
                title=Text("Final answer", style="bold green"),
                title_align="left",
                border_style="green",
            )
        )

    def print_summary(
        self,
        total_iterations: int,
        total_time: float,
        usage_summary: dict[str, Any] | UsageSummary | None = None,
    ) -> None:
        """Iterations, time, and a usage table with one row per model plus totals
        (no table without ``usage_summary``, which is optional as in rlms)."""
        heading = Text(
            f"Iterations: {total_iterations}   Total time: {_format_seconds(total_time)}"
        )
        if isinstance(usage_summary, dict):
            usage_summary = UsageSummary.from_dict(usage_summary)
        self._emit(
            Panel(
                heading if usage_summary is None else Group(heading, _usage_table(usage_summary)),
                title=Text("Summary", style="bold"),
                title_align="left",
                border_style="cyan",
                expand=False,
            )
        )


#: What the printer does with each kind of event of its run.
_HANDLERS: dict[str, Any] = {
    "run_started": VerbosePrinter._on_run_started,
    "root_token": VerbosePrinter._on_root_token,
    "iteration_finished": VerbosePrinter._on_iteration_finished,
    "limit_stopped": VerbosePrinter._on_limit_stopped,
    "compaction_status": lambda p, e: p.print_compaction_status(e.tokens, e.threshold, e.window),
    "compacted": lambda p, e: p.print_compaction(),
    "history_trimmed": lambda p, e: p.print_history_trimmed(e.dropped, e.window),
    "final_answer": lambda p, e: p.print_final_answer(e.answer),
    "run_finished": VerbosePrinter._on_run_finished,
}

# Every event method; a disabled printer replaces each of these by ``_noop``.
_EVENT_METHODS: tuple[str, ...] = tuple(
    name for name in vars(VerbosePrinter) if name.startswith("print_")
)
