"""Trajectory logging in JSON lines (the public ``rlms`` format).

The first line is ``{"type": "metadata", ...}``; then one
``{"type": "iteration", ...}`` line per iteration. Each line is written with a
single append, so a run that is killed leaves a file whose every line parses.
Large values -- the context, long strings, big REPL variables -- are
summarised (head, tail and size), never copied whole into every line.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from datetime import datetime
from typing import Any

from rlm.datatypes import RLMIteration, RLMMetadata
from rlm.environments.repl_core import LOG_VALUE_CHARS, loggable
from rlm.utils.rlm_utils import collect_secrets, redact, register_secrets
from rlm.utils.text import truncate_middle

#: Strings longer than this are cut (head and tail kept) in logs.
MAX_LOG_STRING = 20_000
#: Unused since REPL variables are logged as data (see summarize_variable); kept for importers.
MAX_LOG_VARIABLE = 500
#: Containers inside logged values keep at most this many items.
MAX_LOG_ITEMS = 1000
#: Containers larger than this are described, not listed, when shown as a REPL variable.
MAX_REPR_ITEMS = 100


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


def iteration_record(iteration: RLMIteration) -> dict[str, Any]:
    """The bounded dict logged for one iteration."""
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
    record = {
        "prompt": iteration.prompt,
        "response": iteration.response,
        "code_blocks": blocks,
        "final_answer": iteration.final_answer,
        "iteration_time": iteration.iteration_time,
    }
    if iteration.root_usage is not None:
        record["root_usage"] = iteration.root_usage.to_dict()
    return compact(record)


class _RunLog:
    """The lines of one run: its file, its metadata and its iterations."""

    def __init__(self, path: str | None, run_metadata: dict[str, Any] | None = None):
        self.path = path
        self.run_metadata = run_metadata
        self.iterations: list[dict[str, Any]] = []

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
    """

    def __init__(self, log_dir: str | os.PathLike[str] | None = None, file_name: str = "rlm"):
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

    def _append(self, path: str | None, entry: dict[str, Any]) -> None:
        if path is None:
            return
        line = (json.dumps(entry, ensure_ascii=False, default=repr) + "\n").encode("utf-8")
        # 0600: a trajectory holds prompts, context and outputs; only its owner reads it.
        # (os.path.join keeps an absolute path as it is.)
        fd = os.open(os.path.join(self._cwd, path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            written = os.write(fd, line)
            while written < len(line):  # a short write only happens on a full disk or a signal
                written += os.write(fd, line[written:])
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

    @staticmethod
    def _metadata_line(data: dict[str, Any]) -> dict[str, Any]:
        return {"type": "metadata", "timestamp": datetime.now().isoformat(), **data}

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
            self._runs.pop(run_id, None)

    def trajectory_of(self, run_id: str) -> dict[str, Any] | None:
        """``{"run_metadata": ..., "iterations": [...]}`` of one run (None if unknown)."""
        with self._lock:
            state = self._runs.get(run_id)
            return state.trajectory() if state is not None else self._main.trajectory()

    def log(self, iteration: RLMIteration, run_id: str | None = None) -> None:
        """Record one iteration (of the run ``run_id``; else of the current one)."""
        record = redact(iteration_record(iteration))  # secrets by value, wherever they appear
        with self._lock:
            state = self._runs.get(run_id) if run_id is not None else None
            state = state or self._main
            entry = {
                "type": "iteration",
                "iteration": len(state.iterations) + 1,
                "timestamp": datetime.now().isoformat(),
                **record,
            }
            state.iterations.append(entry)
            self._append(state.path, entry)

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


def read_runs(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The runs of one log file, in order, each ``{"run_metadata", "iterations"}``: a new
    run starts at each metadata line and wherever the iteration numbers restart at 1."""
    runs: list[dict[str, Any]] = []
    metadata: dict[str, Any] | None = None
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            entry = json.loads(line)
            if entry.get("type") == "metadata":
                metadata = {k: v for k, v in entry.items() if k not in ("type", "timestamp")}
                runs.append({"run_metadata": metadata, "iterations": []})
            elif entry.get("type") == "iteration":
                if not runs or (entry.get("iteration") == 1 and runs[-1]["iterations"]):
                    runs.append({"run_metadata": metadata, "iterations": []})
                runs[-1]["iterations"].append(entry)
    return runs
