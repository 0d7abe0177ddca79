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

from rlm.core.types import RLMIteration, RLMMetadata
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


class RLMLogger:
    """Keeps the trajectory of each completion in memory; with ``log_dir``, also appends it to a file.

    The file is ``{log_dir}/{file_name}_{YYYY-mm-dd_HH-MM-SS}_{8 hex}.jsonl``.
    """

    def __init__(self, log_dir: str | os.PathLike[str] | None = None, file_name: str = "rlm"):
        self.log_dir = os.fspath(log_dir) if log_dir is not None else None
        self.log_file_path: str | None = None
        if self.log_dir is not None:
            os.makedirs(self.log_dir, exist_ok=True)
            stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
            self.log_file_path = os.path.join(
                self.log_dir, f"{file_name}_{stamp}_{uuid.uuid4().hex[:8]}.jsonl"
            )
        self._lock = threading.Lock()
        self._run_metadata: dict[str, Any] | None = None
        self._iterations: list[dict[str, Any]] = []
        self._iteration_count = 0

    def _append(self, entry: dict[str, Any]) -> None:
        if self.log_file_path is None:
            return
        line = (json.dumps(entry, ensure_ascii=False, default=repr) + "\n").encode("utf-8")
        # 0600: a trajectory holds prompts, context and outputs; only its owner reads it.
        fd = os.open(self.log_file_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            written = os.write(fd, line)
            while written < len(line):  # a short write only happens on a full disk or a signal
                written += os.write(fd, line[written:])
        finally:
            os.close(fd)

    def log_metadata(self, metadata: RLMMetadata) -> None:
        """Record the run configuration (written once per logger)."""
        with self._lock:
            if self._run_metadata is not None:
                return
            data = metadata.to_dict()
            # Secrets in the configuration are redacted here and, by value, in every line after.
            register_secrets(
                collect_secrets(data.get("backend_kwargs"), data.get("environment_kwargs"))
            )
            self._run_metadata = redact(compact(data))
            self._append(
                {"type": "metadata", "timestamp": datetime.now().isoformat(), **self._run_metadata}
            )

    def log(self, iteration: RLMIteration) -> None:
        """Record one iteration."""
        record = redact(iteration_record(iteration))  # secrets by value, wherever they appear
        with self._lock:
            self._iteration_count += 1
            entry = {
                "type": "iteration",
                "iteration": self._iteration_count,
                "timestamp": datetime.now().isoformat(),
                **record,
            }
            self._iterations.append(entry)
            self._append(entry)

    def clear_iterations(self) -> None:
        """Start a new completion: iteration numbers restart at 1."""
        with self._lock:
            self._iterations = []
            self._iteration_count = 0

    def get_trajectory(self) -> dict[str, Any] | None:
        """``{"run_metadata": ..., "iterations": [...]}`` of the current completion."""
        with self._lock:
            if self._run_metadata is None:
                return None
            return {"run_metadata": self._run_metadata, "iterations": list(self._iterations)}

    @property
    def iteration_count(self) -> int:
        return self._iteration_count
