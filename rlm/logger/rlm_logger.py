"""Trajectory logging in JSON lines (the public ``rlms`` format).

The first line is ``{"type": "metadata", ...}``; then one
``{"type": "iteration", ...}`` line per iteration. Each line is written with a
single append, so a run that is killed leaves a file whose every line parses.
Large values -- the context, long strings, big REPL variables -- are
summarised (head, tail and size), never copied whole into every line.
"""

from __future__ import annotations

import json
import operator
import os
import threading
import uuid
from datetime import datetime
from typing import Any

from rlm.datatypes import RLMIteration, RLMMetadata
from rlm.environments.repl_core import LOG_VALUE_CHARS, loggable
from rlm.utils.exceptions import ConfigurationError
from rlm.utils.rlm_utils import collect_secrets, redact, register_secrets, registered_secrets
from rlm.utils.text import truncate_middle

#: Strings longer than this are cut (head and tail kept) in logs.
MAX_LOG_STRING = 20_000
#: Unused since REPL variables are logged as data (see summarize_variable); kept for importers.
MAX_LOG_VARIABLE = 500
#: Containers inside logged values keep at most this many items.
MAX_LOG_ITEMS = 1000
#: Containers larger than this are described, not listed, when shown as a REPL variable.
MAX_REPR_ITEMS = 100
#: RLMLogger's file formats: rlms' (the default, every line holds its whole prompt) and
#: the compact one (each line holds the messages its prompt adds to the previous line's).
LOG_FORMATS = ("rlms", "compact")


def _bounded_repr(value: Any, limit: int) -> str:
    if isinstance(value, (str, bytes, bytearray)):
        head = value[:limit]
        text = repr(head)
        if len(value) > limit:
            text += f"... [{type(value).__name__} of {len(value):,} characters]"
        return text
    if isinstance(value, (list, tuple, dict, set, frozenset)) and len(value) > MAX_REPR_ITEMS:
        return f"<{type(value).__name__} of {len(value):,} items>"
    try:
        text = repr(value)
    except Exception:
        return f"<{type(value).__name__}>"
    return text if len(text) <= limit else f"{text[:limit]}... [{len(text):,} characters]"


def summarize_variable(value: Any) -> Any:
    """How a REPL variable appears in a log, as rlms writes it: JSON data (numbers,
    strings, dicts -- the ``answer`` dict too --, lists; tuples as lists) stays data
    while its JSON form is at most about ``LOG_VALUE_CHARS`` characters; a bigger
    value (the context, a long string, a large list) becomes a short summary string
    with its size, and a value JSON has no form for becomes rlms' text for it
    (``<module 'math'>``, ``<function 'f'>``, a bounded repr). Values from isolated
    environments arrive already rendered this way; rendering again keeps them."""
    return loggable(value, LOG_VALUE_CHARS)


def compact(value: Any, max_string: int = MAX_LOG_STRING, _depth: int = 0) -> Any:
    """A JSON-safe copy of ``value`` whose size is bounded, whatever the input size."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return truncate_middle(value, max_string) if len(value) > max_string else value
    if _depth > 80:  # child trajectories nest several levels per RLM depth
        return _bounded_repr(value, 200)
    if isinstance(value, dict):
        items = list(value.items())
        out = {str(k): compact(v, max_string, _depth + 1) for k, v in items[:MAX_LOG_ITEMS]}
        if len(items) > MAX_LOG_ITEMS:
            out["..."] = f"[{len(items) - MAX_LOG_ITEMS:,} more keys]"
        return out
    if isinstance(value, (list, tuple)):
        out_list = [compact(v, max_string, _depth + 1) for v in value[:MAX_LOG_ITEMS]]
        if len(value) > MAX_LOG_ITEMS:
            out_list.append(f"[{len(value) - MAX_LOG_ITEMS:,} more items]")
        return out_list
    if isinstance(value, (bytes, bytearray)):
        return _bounded_repr(value, 200)
    return _bounded_repr(value, 200)


def _code_blocks(iteration: RLMIteration) -> list[dict[str, Any]]:
    blocks = []
    for block in iteration.code_blocks:
        result = block.result
        entry: dict[str, Any] = {
            "stdout": result.stdout,
            "stderr": result.stderr,
            "locals": {
                k: summarize_variable(v) for k, v in list(result.locals.items())[:MAX_LOG_ITEMS]
            },
            "execution_time": result.execution_time,
            "rlm_calls": [call.to_dict() for call in result.rlm_calls],
            "final_answer": result.final_answer,
        }
        if result.error is not None:
            entry["error"] = result.error
        blocks.append({"code": block.code, "result": entry})
    return blocks


def iteration_fields(iteration: RLMIteration) -> dict[str, Any]:
    """The bounded, redacted fields logged for one iteration after its prompt (``response``,
    ``code_blocks``, ``final_answer``, ``iteration_time``, ``root_usage``)."""
    record: dict[str, Any] = {
        "response": iteration.response,
        "code_blocks": _code_blocks(iteration),
        "final_answer": iteration.final_answer,
        "iteration_time": iteration.iteration_time,
    }
    if iteration.root_usage is not None:
        record["root_usage"] = iteration.root_usage.to_dict()
    return redact(compact(record))  # secrets by value, wherever they appear


def iteration_record(iteration: RLMIteration) -> dict[str, Any]:
    """The bounded dict logged for one iteration (its prompt, then :func:`iteration_fields`)."""
    return {"prompt": _PromptLog().encode(iteration.prompt)[0], **iteration_fields(iteration)}


# ---------------------------------------------------------------------------
# Lines: each value serialised once
# ---------------------------------------------------------------------------


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=repr)


def _object(fields: list[tuple[str, str]]) -> str:
    """A JSON object from its keys and their values' JSON text: exactly what
    ``json.dumps`` writes for the same dict (the default separators)."""
    return "{" + ", ".join(f"{_dumps(key)}: {text}" for key, text in fields) + "}"


def _array(texts: list[str]) -> str:
    return "[" + ", ".join(texts) + "]"


class _PromptLog:
    """A run's root prompts as logged. The history grows by a few messages per iteration and
    every rlms-format line repeats it: each message is bounded, redacted and serialised
    once, when it first appears, and later prompts reuse that (the same dicts in memory,
    the same text in the file). The loop never changes a message once sent (a change is
    a new dict), so a message of the previous prompt is recognised by identity."""

    def __init__(self) -> None:
        self._secrets: frozenset[str] | None = None
        self._raw: list[Any] = []  # the previous prompt, as given
        self._values: list[Any] = []  # its elements, as logged
        self._texts: list[str] = []  # their JSON text

    def encode(self, prompt: Any) -> tuple[Any, list[str] | None, int]:
        """The prompt as logged; when it is a list, each element's JSON text (else None);
        and how many leading elements of the previous prompt it repeats."""
        secrets = registered_secrets()
        if secrets != self._secrets:  # a new secret: what was redacted before may not be
            self._secrets, self._raw, self._values, self._texts = secrets, [], [], []
        if not isinstance(prompt, list):
            self._raw, self._values, self._texts = [], [], []
            return _bounded_prompt(prompt), None, 0
        head = prompt[:MAX_LOG_ITEMS]
        same = list(map(operator.is_, head, self._raw))
        kept = same.index(False) if False in same else len(same)
        fresh = _bounded_prompt(head[kept:]) if kept < len(head) else []
        values = self._values[:kept] + fresh  # exactly sized: one list per logged iteration
        texts = self._texts[:kept] + [_dumps(value) for value in fresh]
        self._raw, self._values, self._texts = head, values, texts
        if len(prompt) > MAX_LOG_ITEMS:  # what compact() does to a long list
            marker = _bounded_prompt([f"[{len(prompt) - MAX_LOG_ITEMS:,} more items]"])[0]
            values, texts = [*values, marker], [*texts, _dumps(marker)]
        return values, texts, kept


def _bounded_prompt(prompt: Any) -> Any:
    """``prompt`` bounded and redacted exactly as it is as the ``prompt`` of a record."""
    return redact(compact({"prompt": prompt}))["prompt"]


def _prompt_fields(texts: list[str], kept: int | None) -> list[tuple[str, str]]:
    """A prompt's fields in a line: ``prompt`` whole (``kept`` None, rlms' form), or the
    compact form: ``prompt_kept`` (how many leading elements of the previous line's
    prompt this prompt repeats) and ``prompt_new`` (the elements after them)."""
    if kept is None:
        return [("prompt", _array(texts))]
    return [("prompt_kept", str(kept)), ("prompt_new", _array(texts[kept:]))]


def _iteration_line(
    number: int,
    timestamp: str,
    prompt: Any,
    texts: list[str] | None,
    fields: dict[str, Any],
    kept: int | None = None,
) -> str:
    """One iteration line; ``texts`` is the JSON text of each element of a list prompt."""
    head = [
        ("type", '"iteration"'),
        ("iteration", str(number)),
        ("timestamp", _dumps(timestamp)),
    ]
    if texts is None:
        head.append(("prompt", _dumps(prompt)))
    else:
        head += _prompt_fields(texts, kept)
    rest = [(key, _dumps(value)) for key, value in fields.items()]
    return _object(head + rest) + "\n"


def iteration_line_from(entry: dict[str, Any], texts: list[str], kept: int | None) -> str:
    """The iteration record ``entry`` (either form) as a line whose prompt is ``texts``
    (each element's JSON text), in rlms' form (``kept`` None) or the compact one; the
    other fields keep their order and values."""
    fields: list[tuple[str, str]] = []
    for key, value in entry.items():
        if key in ("prompt", "prompt_kept"):
            fields += _prompt_fields(texts, kept)
        elif key != "prompt_new":
            fields.append((key, _dumps(value)))
    return _object(fields) + "\n"


class _RunLog:
    """The lines of one run: its file, its metadata and its iterations."""

    def __init__(self, path: str | None, run_metadata: dict[str, Any] | None = None):
        self.path = path
        self.run_metadata = run_metadata
        self.iterations: list[dict[str, Any]] = []
        self.prompts: _PromptLog | None = _PromptLog()

    def trajectory(self) -> dict[str, Any] | None:
        if self.run_metadata is None:
            return None
        return {"run_metadata": self.run_metadata, "iterations": list(self.iterations)}


class RLMLogger:
    """Keeps the trajectory of each completion in memory; with ``log_dir``, also appends it
    to a file. It subscribes to a run's events (``handle_event``): nothing else writes it.

    The file is ``{log_dir}/{file_name}_{YYYY-mm-dd_HH-MM-SS}_{8 hex}.jsonl`` (rlms' format:
    a metadata line, then each run's iterations, numbered from 1). Runs that overlap in
    time (one logger shared by threads or tasks) never share a file: a run that starts
    while another is writing ``log_file_path`` gets a file of its own, named the same way,
    with its own metadata line. ``run_log_paths`` lists every file written.

    ``format="compact"`` writes the opt-in compact format instead: each iteration line
    stores only the messages its prompt adds to the previous line's (``prompt_kept``,
    ``prompt_new``), so the file grows linearly with the run instead of quadratically.
    ``rlm.load_trajectory``, ``rlm view`` and ``rlm replay`` read both formats, and
    ``rlm export --format rlms`` turns a compact log into the default one. The
    in-memory trajectory (``get_trajectory()``) is the same in both formats.
    """

    def __init__(
        self,
        log_dir: str | os.PathLike[str] | None = None,
        file_name: str = "rlm",
        *,
        format: str = "rlms",
    ):
        if format not in LOG_FORMATS:
            raise ConfigurationError(
                f"RLMLogger(format={format!r}): the formats are {', '.join(map(repr, LOG_FORMATS))}"
            )
        self.format = format
        self.log_dir = os.fspath(log_dir) if log_dir is not None else None
        # A relative log_dir means this directory: the working directory may change later
        # (a local REPL cell runs in its own temp dir while other runs are logging).
        self._cwd = os.getcwd()
        self.file_name = file_name
        self.log_file_path: str | None = self._new_path()
        self.run_log_paths: list[str] = [self.log_file_path] if self.log_file_path else []
        self._lock = threading.Lock()
        self._run_metadata: dict[str, Any] | None = None
        # The run writing log_file_path (rlms' single-run view: get_trajectory()).
        self._main = _RunLog(self.log_file_path)
        self._runs: dict[str, _RunLog] = {}
        self._local = threading.local()

    def _new_path(self) -> str | None:
        if self.log_dir is None:
            return None
        os.makedirs(os.path.join(self._cwd, self.log_dir), exist_ok=True)
        stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        return os.path.join(self.log_dir, f"{self.file_name}_{stamp}_{uuid.uuid4().hex[:8]}.jsonl")

    def _append(self, path: str | None, line: str) -> None:
        if path is None:
            return
        data = line.encode("utf-8")
        # 0600: a trajectory holds prompts, context and outputs; only its owner reads it.
        # (os.path.join keeps an absolute path as it is.)
        fd = os.open(os.path.join(self._cwd, path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            written = os.write(fd, data)
            while written < len(data):  # a short write only happens on a full disk or a signal
                written += os.write(fd, data[written:])
        finally:
            os.close(fd)

    @staticmethod
    def _metadata_dict(metadata: RLMMetadata) -> dict[str, Any]:
        data = metadata.to_dict()
        # Secrets in the configuration are redacted here and, by value, in every line after.
        register_secrets(
            collect_secrets(data.get("backend_kwargs"), data.get("environment_kwargs"))
        )
        return redact(compact(data))

    def _metadata_line(self, data: dict[str, Any]) -> str:
        return metadata_line(datetime.now().isoformat(), data, self.format)

    def log_metadata(self, metadata: RLMMetadata) -> None:
        """Record the run configuration (written once per logger file)."""
        with self._lock:
            if self._run_metadata is not None:
                return
            self._run_metadata = self._metadata_dict(metadata)
            self._main.run_metadata = self._run_metadata
            self._append(self.log_file_path, self._metadata_line(self._run_metadata))

    # -- runs ---------------------------------------------------------------------

    def handle_event(self, event: Any) -> None:
        """The logger as a subscriber of one run's events."""
        kind = event.type
        if kind == "iteration_finished":
            self.log(event.record, run_id=event.run_id)
        elif kind == "run_started":
            self.begin_run(event.run_id, event.metadata, event.isolation)
        elif kind == "run_finished":
            self.end_run(event.run_id)

    def begin_run(
        self,
        run_id: str,
        metadata: RLMMetadata | None = None,
        isolation: dict[str, Any] | None = None,
    ) -> None:
        """Start the log of one run: iteration numbers restart at 1. ``isolation`` (the
        environment's) is added to the run's ``run_metadata`` as the key ``isolation``."""
        data = self._metadata_dict(metadata) if metadata is not None else None
        with self._lock:
            busy = any(r is self._main for r in self._runs.values())
            if not busy:
                if self._run_metadata is None and data is not None:
                    self._run_metadata = data
                    self._append(self.log_file_path, self._metadata_line(data))
                state = self._main = _RunLog(self.log_file_path, self._run_metadata)
            else:
                path = self._new_path()
                state = _RunLog(path, data or self._run_metadata)
                if path is not None:
                    self.run_log_paths.append(path)
                    if state.run_metadata is not None:
                        self._append(path, self._metadata_line(state.run_metadata))
            if isolation and state.run_metadata is not None:
                state.run_metadata = {**state.run_metadata, "isolation": compact(isolation)}
            self._runs[run_id] = state
        self._local.current = state

    def end_run(self, run_id: str) -> None:
        """Forget the run ``run_id`` (its lines are already written)."""
        with self._lock:
            state = self._runs.pop(run_id, None)
            if state is not None:
                state.prompts = None  # its messages' text is needed no more

    def trajectory_of(self, run_id: str) -> dict[str, Any] | None:
        """``{"run_metadata": ..., "iterations": [...]}`` of one run (None if unknown)."""
        with self._lock:
            state = self._runs.get(run_id)
            return state.trajectory() if state is not None else self._main.trajectory()

    def log(self, iteration: RLMIteration, run_id: str | None = None) -> None:
        """Record one iteration (of the run ``run_id``; else of the current one)."""
        fields = iteration_fields(iteration)
        with self._lock:
            state = self._runs.get(run_id) if run_id is not None else None
            state = state or self._main
            if state.prompts is None:  # an iteration after the end of its run
                state.prompts = _PromptLog()
            prompt, texts, kept = state.prompts.encode(iteration.prompt)
            number = len(state.iterations) + 1
            timestamp = datetime.now().isoformat()
            entry = {
                "type": "iteration",
                "iteration": number,
                "timestamp": timestamp,
                "prompt": prompt,
                **fields,
            }
            state.iterations.append(entry)
            if state.path is not None:
                compact_form = self.format == "compact" and texts is not None
                line = _iteration_line(
                    number, timestamp, prompt, texts, fields, kept if compact_form else None
                )
                self._append(state.path, line)

    def clear_iterations(self) -> None:
        """Start a new completion: iteration numbers restart at 1."""
        with self._lock:
            self._main = _RunLog(self.log_file_path, self._run_metadata)

    def get_trajectory(self) -> dict[str, Any] | None:
        """``{"run_metadata": ..., "iterations": [...]}`` of the current completion (this
        thread's latest run, else the latest run of the logger's own file)."""
        with self._lock:
            state = getattr(self._local, "current", None) or self._main
            if state.run_metadata is None:
                return None
            return state.trajectory()

    @property
    def _iterations(self) -> list[dict[str, Any]]:
        return self._main.iterations

    @property
    def iteration_count(self) -> int:
        """How many iterations the current run has logged."""
        return len(self._main.iterations)


def metadata_line(timestamp: str, data: dict[str, Any], format: str = "rlms") -> str:
    """The metadata line of a log (the compact format marks itself with ``log_format``)."""
    return metadata_line_from({"type": "metadata", "timestamp": timestamp, **data}, format)


def metadata_line_from(entry: dict[str, Any], format: str = "rlms") -> str:
    """The metadata record ``entry`` as a line of ``format``: ``log_format`` after
    ``timestamp`` for the compact format, absent for rlms'; the rest as it is."""
    out: dict[str, Any] = {}
    for key, value in entry.items():
        if key == "log_format":
            continue
        out[key] = value
        if key == "timestamp" and format == "compact":
            out["log_format"] = "compact"
    if format == "compact" and "log_format" not in out:
        out = {"type": out.pop("type", "metadata"), "log_format": "compact", **out}
    return _dumps(out) + "\n"


class LogFormatError(ValueError):
    """A log line that is neither format's (a compact line whose base is missing, say)."""


class LogReader:
    """Reads a log's lines in order, in either format, and gives each back in rlms' form:
    a compact iteration line gets its whole ``prompt`` again (the first ``prompt_kept``
    elements of the previous line's prompt, then ``prompt_new``, where ``prompt`` was),
    and a metadata line loses its ``log_format``. Lines in rlms' form come back as they are.

    ``strict``: a compact line that cannot be rebuilt (it keeps more elements than the
    previous line's prompt has: a line is missing) raises :class:`LogFormatError`; else it
    keeps what is there and the reason goes to ``warnings``. ``texts=True`` also keeps each
    prompt element's JSON text, serialised once (``prompt_texts``, for writing lines)."""

    def __init__(self, strict: bool = True, texts: bool = False):
        self.strict = strict
        self.warnings: list[str] = []
        self._texts_wanted = texts
        self._prompt: list[Any] = []
        self._texts: list[str] | None = None  # computed when first needed

    @property
    def prompt_texts(self) -> list[str] | None:
        """The JSON text of each element of the latest line's prompt (with ``texts=True``)."""
        if not self._texts_wanted:
            return None
        if self._texts is None:
            self._texts = [_dumps(m) for m in self._prompt]
        return self._texts

    def read(self, entry: dict[str, Any], where: str = "a line") -> dict[str, Any]:
        kind = entry.get("type")
        if kind == "metadata":
            self._keep([], [])
            if "log_format" in entry:
                entry = {k: v for k, v in entry.items() if k != "log_format"}
            return entry
        if "prompt_kept" not in entry and "prompt_new" not in entry:
            if kind == "iteration" or "code_blocks" in entry:
                prompt = entry.get("prompt")
                prompt = prompt if isinstance(prompt, list) else []
                self._keep(prompt, None)
            return entry
        kept, new = entry.get("prompt_kept"), entry.get("prompt_new")
        if not isinstance(kept, int) or isinstance(kept, bool) or kept < 0:
            raise LogFormatError(f"{where}: prompt_kept is {kept!r}, not a count of messages")
        if not isinstance(new, list):
            raise LogFormatError(f"{where}: prompt_new is {type(new).__name__}, not a list")
        if kept > len(self._prompt):
            problem = (
                f"{where}: iteration {entry.get('iteration')} repeats {kept} messages of the "
                f"previous prompt, which has {len(self._prompt)} (a line before it is missing)"
            )
            if self.strict:
                raise LogFormatError(problem)
            self.warnings.append(problem + "; its prompt is incomplete")
            kept = len(self._prompt)
        prompt = self._prompt[:kept] + new
        texts = None
        if self._texts_wanted:
            base = self.prompt_texts or []
            texts = base[:kept] + [_dumps(message) for message in new]
        self._keep(prompt, texts)
        out: dict[str, Any] = {}
        for key, value in entry.items():
            if key == "prompt_kept":
                out["prompt"] = prompt
            elif key != "prompt_new":
                out[key] = value
        return out

    def _keep(self, prompt: list[Any], texts: list[str] | None) -> None:
        self._prompt = prompt
        self._texts = texts


def read_runs(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The runs of one log file (either format), in order, each ``{"run_metadata",
    "iterations"}``: a new run starts at each metadata line and wherever the iteration
    numbers restart at 1."""
    runs: list[dict[str, Any]] = []
    metadata: dict[str, Any] | None = None
    reader = LogReader()
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            entry = reader.read(json.loads(line), f"line {number}")
            if entry.get("type") == "metadata":
                metadata = {k: v for k, v in entry.items() if k not in ("type", "timestamp")}
                runs.append({"run_metadata": metadata, "iterations": []})
            elif entry.get("type") == "iteration":
                if not runs or (entry.get("iteration") == 1 and runs[-1]["iterations"]):
                    runs.append({"run_metadata": metadata, "iterations": []})
                runs[-1]["iterations"].append(entry)
    return runs
