"""Trajectory objects: a recorded RLM run you can read, navigate, flatten and render.

A trajectory comes from a JSON-lines log (ours, or one written by the public
``rlms`` package, 0.1.1 or 0.1.3), from a JSON dump of
``RLMLogger.get_trajectory()``, or from an ``RLMChatCompletion`` whose
``metadata`` holds one. Reading is tolerant: missing fields become ``None``
or empty, unknown fields are kept in ``raw``, and a broken last line (a run
that was killed mid-write) is skipped with a warning in ``warnings``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rlm.datatypes import RLMChatCompletion, UsageSummary
from rlm.utils.text import truncate_end

if TYPE_CHECKING:
    from rlm.trajectory.replay import Replay

#: How ``compact`` (rlm.logger) and ``truncate_middle`` announce a cut in a long string.
CUT_MARKER = re.compile(r"\n\.\.\. \[([\d,]+) characters cut\] \.\.\.\n")

_PREVIEW = 60


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=repr)


def _final_text(value: Any) -> str | None:
    """A final answer as text. Early logs may hold ``[kind, text]`` pairs."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] in ("FINAL", "FINAL_VAR"):
        return _final_text(value[1])
    return value if isinstance(value, str) else _text(value)


def _float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def is_cut(text: str) -> bool:
    """Whether ``text`` was shortened by the logger (head and tail kept around a marker)."""
    return bool(text) and CUT_MARKER.search(text) is not None


def same_output(recorded: str, actual: str) -> bool:
    """Whether ``actual`` is what ``recorded`` describes.

    An exact match, or -- when the log kept only the head and tail of a long
    output -- an output that starts with the kept head, ends with the kept
    tail, and has the length the marker announces.
    """
    if recorded == actual:
        return True
    for match in CUT_MARKER.finditer(recorded):
        head, tail = recorded[: match.start()], recorded[match.end() :]
        cut = int(match.group(1).replace(",", ""))
        if (
            len(actual) == len(head) + cut + len(tail)
            and actual.startswith(head)
            and actual.endswith(tail)
        ):
            return True
    return False


def _one_line(text: str, limit: int = _PREVIEW) -> str:
    line = " ".join(text.split())
    return truncate_end(line, limit)


# ---------------------------------------------------------------------------
# Sub-calls, code blocks, iterations
# ---------------------------------------------------------------------------


@dataclass
class SubCall:
    """One call made from the REPL (``llm_query``, ``rlm_query``...), as recorded.

    ``child`` is the child run's trajectory when the call was a recursive RLM
    whose record carries one in its ``metadata``.
    """

    model: str
    prompt: Any
    response: str
    usage: UsageSummary
    execution_time: float | None
    error: str | None = None
    depth: int = 1
    child: Trajectory | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_record(cls, data: dict[str, Any], depth: int) -> SubCall:
        """A sub-call from its logged record (``rlm_calls`` item) at ``depth``."""
        metadata = data.get("metadata")
        child = None
        if isinstance(metadata, dict) and isinstance(metadata.get("iterations"), list):
            child = Trajectory.from_dict(metadata, depth=depth)
        return cls(
            model=str(data.get("root_model") or "unknown"),
            prompt=data.get("prompt"),
            response=_text(data.get("response")),
            usage=UsageSummary.from_dict(data.get("usage_summary")),
            execution_time=_float(data.get("execution_time")),
            error=data.get("error"),
            depth=depth,
            child=child,
            raw=data,
        )

    @property
    def prompt_text(self) -> str:
        """The prompt as one string (the last message's content for a message list)."""
        prompt = self.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[-1], dict):
            return _text(prompt[-1].get("content"))
        if isinstance(prompt, dict) and "content" in prompt:
            return _text(prompt.get("content"))
        return _text(prompt)

    def walk(self) -> Iterator[SubCall]:
        """This call, then every call below it (depth first)."""
        yield self
        if self.child is not None:
            yield from self.child.subcalls()

    def __str__(self) -> str:
        tokens = self.usage.total_tokens
        flag = f" ERROR {self.error}" if self.error else ""
        child = f" [child run: {len(self.child.iterations)} iterations]" if self.child else ""
        return (
            f"{'  ' * (self.depth - 1)}{self.model} (depth {self.depth}, {tokens} tokens)"
            f"{flag}{child}: {_one_line(self.prompt_text)!r} -> {_one_line(self.response)!r}"
        )

    def __repr__(self) -> str:
        return (
            f"SubCall(model={self.model!r}, depth={self.depth}, "
            f"prompt={_one_line(self.prompt_text)!r}, response={_one_line(self.response)!r})"
        )

    def __rich__(self) -> Any:
        from rich.text import Text

        return Text(str(self))


@dataclass
class Block:
    """One executed code block: the code, what it printed, and the calls it made."""

    iteration_index: int
    index: int
    code: str
    stdout: str
    stderr: str
    locals: dict[str, Any]
    execution_time: float | None
    final_answer: str | None
    error: str | None
    calls: list[SubCall]
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_record(
        cls, data: dict[str, Any], iteration_index: int, index: int, depth: int
    ) -> Block:
        """A code block from its logged record (``code_blocks`` item)."""
        result = data.get("result") or {}
        calls = result.get("rlm_calls")
        if calls is None:
            calls = result.get("llm_calls") or []
        return cls(
            iteration_index=iteration_index,
            index=index,
            code=_text(data.get("code")),
            stdout=_text(result.get("stdout")),
            stderr=_text(result.get("stderr")),
            locals=dict(result.get("locals") or {}),
            execution_time=_float(result.get("execution_time")),
            final_answer=_final_text(result.get("final_answer")),
            error=result.get("error"),
            calls=[SubCall.from_record(c, depth + 1) for c in calls if isinstance(c, dict)],
            raw=data,
        )

    @property
    def failed(self) -> bool:
        """The block raised (its ``error``; in logs without that field, a traceback in stderr)."""
        return self.error is not None or "Traceback (most recent call last)" in self.stderr

    @property
    def output_cut(self) -> bool:
        """The log kept only the head and tail of this block's stdout."""
        return is_cut(self.stdout)

    def __str__(self) -> str:
        lines = [f"--- block {self.index} of iteration {self.iteration_index + 1} ---", self.code]
        if self.stdout:
            lines += ["--- stdout ---", self.stdout.rstrip("\n")]
        if self.stderr:
            lines += ["--- stderr ---", self.stderr.rstrip("\n")]
        if self.error:
            lines.append(f"--- error: {self.error}")
        lines += [str(call) for call in self.calls]
        if self.final_answer is not None:
            lines.append(f"--- final answer: {self.final_answer}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        status = "error" if self.failed else "ok"
        return (
            f"<Block {self.iteration_index + 1}.{self.index} {status}: "
            f"{_one_line(self.code, 40)!r} -> {_one_line(self.stdout, 40)!r}, "
            f"{len(self.calls)} sub-calls>"
        )

    def __rich__(self) -> Any:
        from rich.console import Group
        from rich.panel import Panel
        from rich.syntax import Syntax
        from rich.text import Text

        parts: list[Any] = [Syntax(self.code, "python", word_wrap=True)]
        if self.stdout:
            parts.append(Text(self.stdout.rstrip("\n")))
        if self.stderr:
            parts.append(Text(self.stderr.rstrip("\n"), style="red"))
        parts += [Text(str(call), style="cyan") for call in self.calls]
        if self.final_answer is not None:
            parts.append(Text(f"final answer: {self.final_answer}", style="bold green"))
        return Panel(
            Group(*parts),
            title=f"block {self.iteration_index + 1}.{self.index}",
            border_style="red" if self.failed else "blue",
        )


@dataclass
class Iteration:
    """One turn of the loop: the root model's prompt and response, and the blocks that ran."""

    index: int
    number: int
    timestamp: str | None
    prompt: Any
    response: str
    blocks: list[Block]
    final_answer: str | None
    iteration_time: float | None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    #: Usage of this iteration's root-model call, when the log records it (ours does).
    root_usage: UsageSummary | None = None

    @classmethod
    def from_record(cls, data: dict[str, Any], index: int, depth: int) -> Iteration:
        """An iteration from its logged line."""
        number = data.get("iteration")
        return cls(
            index=index,
            number=int(number) if isinstance(number, int) else index + 1,
            timestamp=data.get("timestamp"),
            prompt=data.get("prompt"),
            response=_text(data.get("response")),
            blocks=[
                Block.from_record(b, index, i, depth)
                for i, b in enumerate(data.get("code_blocks") or [])
                if isinstance(b, dict)
            ],
            final_answer=_final_text(data.get("final_answer")),
            iteration_time=_float(data.get("iteration_time")),
            raw=data,
            root_usage=UsageSummary.from_dict(data["root_usage"])
            if isinstance(data.get("root_usage"), dict)
            else None,
        )

    @property
    def calls(self) -> list[SubCall]:
        """Every sub-call made by this iteration's blocks."""
        return [call for block in self.blocks for call in block.calls]

    @property
    def failed(self) -> bool:
        """Whether any of this iteration's blocks failed."""
        return any(block.failed for block in self.blocks)

    def __str__(self) -> str:
        head = f"=== iteration {self.number}"
        if self.iteration_time is not None:
            head += f" ({self.iteration_time:.2f}s)"
        lines = [head + " ===", self.response.rstrip("\n")]
        lines += [str(block) for block in self.blocks]
        if self.final_answer is not None:
            lines.append(f"=== final answer: {self.final_answer}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        extra = f", final_answer={_one_line(self.final_answer, 40)!r}" if self.final_answer else ""
        errors = sum(block.failed for block in self.blocks)
        return (
            f"<Iteration {self.number}: {len(self.blocks)} blocks, {len(self.calls)} sub-calls, "
            f"{errors} errors{extra}>"
        )

    def __rich__(self) -> Any:
        from rich.console import Group
        from rich.panel import Panel
        from rich.text import Text

        parts: list[Any] = [Panel(Text(self.response), title="response", border_style="magenta")]
        parts += [block.__rich__() for block in self.blocks]
        return Group(Text(f"Iteration {self.number}", style="bold cyan"), *parts)


# ---------------------------------------------------------------------------
# The trajectory
# ---------------------------------------------------------------------------


class Trajectory:
    """A recorded run: metadata, iterations, blocks, the sub-call tree, usage and timings.

    Build one with :func:`load_trajectory`, :meth:`from_completion`,
    :meth:`from_dict` or :meth:`from_records`. ``context`` is the run's
    context when it is known (a completion carries it; a log file holds only
    a summary of it), which :meth:`replay` needs.
    """

    def __init__(
        self,
        metadata: dict[str, Any] | None,
        iterations: list[Iteration],
        *,
        path: str | None = None,
        depth: int = 0,
        context: Any = None,
        has_context: bool = False,
        completion: RLMChatCompletion | None = None,
        warnings: list[str] | None = None,
    ):
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.iterations = iterations
        self.path = path
        self.depth = depth
        self.context = context
        self.has_context = has_context
        self.completion = completion
        self.warnings = list(warnings or [])

    # -- construction ----------------------------------------------------------------

    @classmethod
    def from_records(
        cls,
        metadata: dict[str, Any] | None,
        iterations: list[dict[str, Any]],
        **kwargs: Any,
    ) -> Trajectory:
        """A trajectory from a log's parsed lines (a metadata line, then iterations)."""
        depth = int(kwargs.get("depth", 0))
        items = [
            Iteration.from_record(record, i, depth)
            for i, record in enumerate(r for r in iterations if isinstance(r, dict))
        ]
        return cls(metadata, items, **kwargs)

    @classmethod
    def from_dict(cls, data: dict[str, Any], **kwargs: Any) -> Trajectory:
        """From ``{"run_metadata": ..., "iterations": [...]}`` (``RLMLogger.get_trajectory()``)."""
        metadata = data.get("run_metadata")
        if metadata is None:
            metadata = {k: v for k, v in data.items() if k != "iterations"}
        return cls.from_records(metadata, list(data.get("iterations") or []), **kwargs)

    @classmethod
    def from_completion(cls, result: RLMChatCompletion | dict[str, Any]) -> Trajectory:
        """The trajectory attached to a completion (run with a logger attached).

        The completion also carries the context (``result.prompt``), so the
        returned trajectory can be replayed without passing it again.
        """
        completion = RLMChatCompletion.from_dict(result) if isinstance(result, dict) else result
        if not isinstance(completion.metadata, dict) or "iterations" not in completion.metadata:
            raise ValueError(
                "this completion carries no trajectory: run the RLM with a logger attached, "
                "e.g. RLM(..., logger=RLMLogger())"
            )
        return cls.from_dict(
            completion.metadata,
            context=completion.prompt,
            has_context=True,
            completion=completion,
        )

    # -- run metadata ------------------------------------------------------------------

    @property
    def root_model(self) -> str:
        """The root model's name (``unknown`` when the log does not say)."""
        return str(self.metadata.get("root_model") or "unknown")

    @property
    def backend(self) -> str | None:
        """The root client's backend name, when logged."""
        return self.metadata.get("backend")

    @property
    def environment_type(self) -> str | None:
        """The REPL environment's name, when logged."""
        return self.metadata.get("environment_type")

    @property
    def timestamp(self) -> str | None:
        """When the run started (ISO 8601), when logged."""
        return self.metadata.get("timestamp") or (
            self.iterations[0].timestamp if self.iterations else None
        )

    @property
    def name(self) -> str:
        """A short name: the log file's name, else ``run of <root model>``."""
        if self.path:
            return os.path.basename(self.path)
        return f"run of {self.root_model}"

    # -- contents ---------------------------------------------------------------------

    @property
    def final_answer(self) -> str | None:
        """The answer the run ended with (the completion's response when known)."""
        for iteration in reversed(self.iterations):
            if iteration.final_answer is not None:
                return iteration.final_answer
        if self.completion is not None:
            return self.completion.response
        return None

    @property
    def blocks(self) -> list[Block]:
        """Every code block of every iteration, in order."""
        return [block for iteration in self.iterations for block in iteration.blocks]

    def subcalls(self) -> Iterator[SubCall]:
        """Every sub-call of the run, depth first, child runs included."""
        for block in self.blocks:
            for call in block.calls:
                yield from call.walk()

    @property
    def errors(self) -> list[Block]:
        """The code blocks that failed."""
        return [block for block in self.blocks if block.failed]

    # -- usage and timings -------------------------------------------------------------

    @property
    def subcall_usage(self) -> UsageSummary:
        """Tokens and cost per model of the run's sub-calls, each counted once.

        In our logs a child run's recorded usage covers its whole subtree, so only
        this run's own calls are added. In logs of the public ``rlms`` package a
        child's usage covers its own calls (its ``llm_query`` calls included) but not
        the child runs it started, so those are added, recursively.
        """
        usage = UsageSummary()
        ours = self.usage_complete
        for block in self.blocks:
            for call in block.calls:
                usage = usage.merge(call.usage if ours else _with_child_runs(call))
        return usage

    @property
    def usage(self) -> UsageSummary:
        """Tokens and cost per model, root and sub-calls.

        Exact for a trajectory built from a completion, and for our logs, which
        record each iteration's root-model usage. Logs written by the public
        ``rlms`` package record sub-calls only; ``usage_complete`` says which.
        """
        if self.completion is not None:
            return self.completion.usage_summary
        usage = self.subcall_usage
        for iteration in self.iterations:
            if iteration.root_usage is not None:
                usage = usage.merge(iteration.root_usage)
        return usage

    @property
    def usage_complete(self) -> bool:
        """True when usage covers root and sub-calls (a completion, or one of our logs)."""
        if self.completion is not None:
            return True
        return bool(self.iterations) and all(i.root_usage is not None for i in self.iterations)

    @property
    def total_time(self) -> float | None:
        """Seconds: the completion's execution time, else the sum of iteration times."""
        if self.completion is not None:
            return self.completion.execution_time
        times = [it.iteration_time for it in self.iterations if it.iteration_time is not None]
        return sum(times) if times else None

    @property
    def code_time(self) -> float:
        """Seconds spent running code blocks."""
        return sum(block.execution_time or 0.0 for block in self.blocks)

    # -- flattening -------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """``{"run_metadata": ..., "iterations": [...]}`` as read (the log's own records)."""
        return {
            "run_metadata": self.metadata,
            "iterations": [iteration.raw for iteration in self.iterations],
        }

    def to_records(self, kind: str = "blocks") -> list[dict[str, Any]]:
        """Flat rows for analysis: ``kind`` is ``"blocks"``, ``"iterations"`` or ``"subcalls"``."""
        from rlm.trajectory.records import records

        return records(self, kind)

    def to_dataframe(self, kind: str = "blocks") -> Any:
        """:meth:`to_records` as a ``pandas.DataFrame`` (needs pandas)."""
        try:
            import pandas as pd
        except ImportError as exc:
            from rlm.utils.exceptions import ConfigurationError

            raise ConfigurationError(
                "to_dataframe() needs pandas: pip install pandas (or use to_records())"
            ) from exc
        return pd.DataFrame.from_records(self.to_records(kind))

    # -- display ----------------------------------------------------------------------

    def _repr_html_(self) -> str:
        from rlm.trajectory.html import render_html

        return render_html(self)

    def summary(self) -> str:
        """A few lines of text: models, iterations, calls, tokens, errors, answer."""
        usage = self.usage
        time = f"{self.total_time:.2f}s" if self.total_time is not None else "?"
        answer = self.final_answer
        lines = [
            f"Trajectory {self.name}: {self.root_model} ({self.backend or '?'}, "
            f"{self.environment_type or '?'})",
            f"  {len(self.iterations)} iterations, {len(self.blocks)} blocks, "
            f"{sum(1 for _ in self.subcalls())} sub-calls, {len(self.errors)} errors, {time}",
        ]
        for model, s in usage.model_usage_summaries.items():
            cost = f", ${s.total_cost:.6f}" if s.total_cost is not None else ""
            lines.append(
                f"  {model}: {s.total_calls} calls, {s.total_input_tokens:,} in, "
                f"{s.total_output_tokens:,} out{cost}"
            )
        lines.append(
            f"  final answer: {_one_line(answer, 200)!r}" if answer else "  no final answer"
        )
        return "\n".join(lines)

    __str__ = summary

    def __repr__(self) -> str:
        return (
            f"<Trajectory {self.name!r}: {self.root_model}, {len(self.iterations)} iterations, "
            f"final_answer={_one_line(self.final_answer or '', 40)!r}>"
        )

    def __rich__(self) -> Any:
        from rich.console import Group
        from rich.text import Text

        return Group(Text(self.summary(), style="bold"), *(it.__rich__() for it in self.iterations))

    def __len__(self) -> int:
        return len(self.iterations)

    def __iter__(self) -> Iterator[Iteration]:
        return iter(self.iterations)

    def __getitem__(self, index: int) -> Iteration:
        return self.iterations[index]

    # -- replay -----------------------------------------------------------------------

    def recording_client(self) -> Any:
        """A :class:`~rlm.trajectory.replay.RecordingLM` answering from this trajectory."""
        from rlm.trajectory.replay import RecordingLM

        return RecordingLM(self)

    def replay_steps(self, context: Any = ..., **kwargs: Any) -> Replay:
        """Re-run the recorded blocks one at a time; yields a ``ReplayStep`` per block.

        See :func:`rlm.trajectory.replay.replay_steps`.
        """
        from rlm.trajectory.replay import replay_steps

        return replay_steps(self, context=context, **kwargs)

    def replay(self, context: Any = ..., **kwargs: Any) -> RLMChatCompletion:
        """Re-run the whole recording offline; see :func:`rlm.trajectory.replay.replay`."""
        from rlm.trajectory.replay import replay

        return replay(self, context=context, **kwargs)

    def compare(self, context: Any = ..., **kwargs: Any) -> Any:
        """The first ``ReplayDivergence`` of a replay, or ``None`` when it matches."""
        from rlm.trajectory.replay import run_replay

        return run_replay(self, context=context, **kwargs)[1]


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


def _split_runs(
    lines: list[dict[str, Any]],
) -> list[tuple[dict[str, Any] | None, list[dict[str, Any]]]]:
    """Group JSON-lines records into runs.

    A logger writes one metadata line, then the iterations of each completion;
    iteration numbers restart at 1 for each completion, and a new metadata line
    starts a new logger's runs.
    """
    runs: list[tuple[dict[str, Any] | None, list[dict[str, Any]]]] = []
    metadata: dict[str, Any] | None = None
    current: list[dict[str, Any]] | None = None
    for record in lines:
        kind = record.get("type")
        if kind == "metadata":
            metadata = {k: v for k, v in record.items() if k != "type"}
            current = None
            continue
        if kind != "iteration" and not (kind is None and "code_blocks" in record):
            continue
        number = record.get("iteration")
        if current is None or (number == 1 and current):
            current = []
            runs.append((metadata, current))
        current.append(record)
    if not runs and metadata is not None:
        runs.append((metadata, []))
    return runs


def _read_jsonl(path: str) -> tuple[list[dict[str, Any]], list[str]]:
    """A log's records in rlms' form, whichever format wrote it (a compact log's prompts
    are rebuilt: see ``RLMLogger(format="compact")``), and what could not be read."""
    from rlm.logger.rlm_logger import LogFormatError, LogReader

    records: list[dict[str, Any]] = []
    warnings: list[str] = []
    reader = LogReader(strict=False)
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                warnings.append(f"line {number} is not valid JSON ({exc.msg}); skipped")
                continue
            if not isinstance(record, dict):
                continue
            try:
                records.append(reader.read(record, f"line {number}"))
            except LogFormatError as exc:
                warnings.append(f"{exc}; skipped")
            warnings.extend(reader.warnings)
            reader.warnings.clear()
    return records, warnings


def load_trajectories(path: str | os.PathLike[str]) -> list[Trajectory]:
    """Every run in a log file (a JSON-lines log may hold several completions).

    Also reads a ``.json`` file holding ``RLMLogger.get_trajectory()`` or an
    ``RLMChatCompletion.to_dict()`` with its trajectory in ``metadata``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such log file: {path}")
    if path.endswith(".json"):
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        if isinstance(data, dict) and "iterations" in data:
            return [Trajectory.from_dict(data, path=path)]
        if isinstance(data, dict) and isinstance(data.get("metadata"), dict):
            trajectory = Trajectory.from_completion(data)
            trajectory.path = path
            return [trajectory]
        raise ValueError(f"{path} holds neither a trajectory nor a completion with one")
    records, warnings = _read_jsonl(path)
    if not records:
        raise ValueError(f"{path} holds no trajectory records (is it an RLM log?)")
    runs = _split_runs(records)
    if not runs:
        raise ValueError(f"{path} holds no metadata or iteration records (is it an RLM log?)")
    return [
        Trajectory.from_records(metadata, iterations, path=path, warnings=warnings)
        for metadata, iterations in runs
    ]


def load_trajectory(path: str | os.PathLike[str], run: int = -1) -> Trajectory:
    """Read one run from a trajectory log (ours, or the public ``rlms`` 0.1.1/0.1.3 format).

    A log file written by one ``RLMLogger`` holds every completion of that
    logger; ``run`` picks one (default: the last). Use
    :func:`load_trajectories` for all of them.
    """
    runs = load_trajectories(path)
    try:
        return runs[run]
    except IndexError:
        raise IndexError(
            f"{os.fspath(path)} holds {len(runs)} runs; run={run} is out of range"
        ) from None


def find_logs(path: str | os.PathLike[str]) -> list[str]:
    """Log files under ``path`` (a file is returned as is), newest first."""
    path = os.fspath(path)
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no such log file or directory: {path}")
    found = []
    for root, _dirs, files in os.walk(path):
        for name in files:
            if name.endswith(".jsonl"):
                found.append(os.path.join(root, name))
    found.sort(key=lambda p: (os.path.getmtime(p), p), reverse=True)
    return found


__all__ = [
    "Block",
    "Iteration",
    "SubCall",
    "Trajectory",
    "find_logs",
    "is_cut",
    "load_trajectories",
    "load_trajectory",
    "same_output",
]


def _with_child_runs(call: SubCall) -> UsageSummary:
    """A call's usage plus, recursively, that of the child runs its child run started
    (the accounting of logs written by the public ``rlms`` package)."""
    usage = call.usage
    if call.child is not None:
        for block in call.child.blocks:
            for nested in block.calls:
                if nested.child is not None:
                    usage = usage.merge(_with_child_runs(nested))
    return usage
