"""Batch items: reading them, checking them, and turning one into an RLM configuration.

An item is a JSON object (one per line of the input file)::

    {"id": "doc-17",                       # any string or number; default: the line number
     "context": ... | "context_file": "docs/17.txt",   # the prompt, or a file holding it
     "question": "Who signed it?",          # the root prompt (optional)
     "metadata": {...},                     # copied to the output as is (optional)
     # per-item overrides of the batch's RLM settings (all optional):
     "model": "gpt-4o", "backend": "openai", "backend_kwargs": {...},
     "environment": "subprocess", "environment_kwargs": {...}, "sampling_args": {...},
     "max_iterations": 10, "max_depth": 2, "max_budget": 0.5, "max_timeout": 120,
     "max_tokens": 100000, "max_errors": 3, "custom_system_prompt": "..."}

A relative ``context_file`` is read from the input file's folder. Any other key is
an error of that item (recorded in the output; put free-form data under
``metadata``).
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The RLM limits, by their argument names (also the options of ``rlm run``, ``batch``, ``serve``).
LIMITS = ("max_iterations", "max_depth", "max_budget", "max_timeout", "max_tokens", "max_errors")
#: Overrides that replace the batch's RLM argument of the same name.
_REPLACED = (*LIMITS, "custom_system_prompt")
#: Keys of an item that override the batch's RLM settings.
OVERRIDES = (
    "model",
    "backend",
    "backend_kwargs",
    "environment",
    "environment_kwargs",
    "sampling_args",
    *_REPLACED,
)
ITEM_KEYS = ("id", "context", "context_file", "question", "metadata", *OVERRIDES)

#: RLM constructor arguments a batch never copies from the RLM it was started from:
#: per-run observers (a logger file, a printer, callbacks) and persistence.
_NOT_COPIED = {
    "logger",
    "verbose",
    "persistent",
    "on_subcall_start",
    "on_subcall_complete",
    "on_iteration_start",
    "on_iteration_complete",
    "sampling_args",  # already merged into backend_kwargs by RLM.__init__
    "sub_sampling_args",  # already merged into other_backend_kwargs
}
#: Constructor argument -> attribute of RLM where the two names differ.
_ATTRIBUTE = {"environment": "environment_type"}


@dataclass
class BatchItem:
    """One parsed item. ``problem`` is set when the item is malformed (it then fails alone)."""

    id: str
    line: int
    context: Any = None
    context_file: str | None = None
    question: str | None = None
    metadata: Any = None
    overrides: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None

    def load_context(self, base_dir: Path | None) -> Any:
        if self.context_file is None:
            return self.context
        path = Path(self.context_file)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        return path.read_text(encoding="utf-8", errors="replace")

    def to_payload(self, base_dir: Path | None) -> dict[str, Any]:
        """What a worker needs (the context read here, so workers need no shared disk)."""
        return {
            "id": self.id,
            "context": self.load_context(base_dir),
            "question": self.question,
            "overrides": self.overrides,
        }


def parse_item(data: Any, line: int) -> BatchItem:
    if not isinstance(data, dict):
        return BatchItem(id=str(line), line=line, problem="an item must be a JSON object")
    raw_id = data.get("id", line)
    item = BatchItem(
        id=str(raw_id),
        line=line,
        context=data.get("context"),
        context_file=data.get("context_file"),
        question=data.get("question"),
        metadata=data.get("metadata"),
        overrides={k: data[k] for k in OVERRIDES if k in data},
    )
    unknown = sorted(k for k in data if k not in ITEM_KEYS)
    if unknown:
        item.problem = (
            f"unknown item key(s) {', '.join(map(repr, unknown))}; accepted: "
            f"{', '.join(ITEM_KEYS)} (put free-form data under 'metadata')"
        )
    elif ("context" in data) == ("context_file" in data):
        item.problem = "an item needs exactly one of 'context' and 'context_file'"
    elif item.question is not None and not isinstance(item.question, str):
        item.problem = "'question' must be a string"
    elif item.context_file is not None and not isinstance(item.context_file, str):
        item.problem = "'context_file' must be a path string"
    return item


def read_items(source: Any) -> tuple[list[BatchItem], Path | None]:
    """Items from a JSON-lines path, or from an iterable of dicts (or of BatchItems).

    Returns the items and the folder relative ``context_file`` paths are read from.
    Raises ``ValueError`` on a line that is not JSON or on a repeated id (a batch
    must be able to tell its items apart to resume)."""
    items: list[BatchItem] = []
    # Relative context_file paths of in-memory items: this directory, fixed now (local REPL
    # cells change the working directory while they run).
    base_dir: Path | None = Path.cwd()
    if isinstance(source, (str, Path)):
        path = Path(source)
        base_dir = path.resolve().parent
        with path.open(encoding="utf-8") as fh:
            for number, text in enumerate(fh, start=1):
                if not text.strip():
                    continue
                try:
                    data = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{number}: not a JSON line ({exc.msg})") from None
                items.append(parse_item(data, number))
    else:
        for number, data in enumerate(source, start=1):
            items.append(data if isinstance(data, BatchItem) else parse_item(data, number))
    seen: dict[str, int] = {}
    for item in items:
        if item.id in seen:
            raise ValueError(
                f"item id {item.id!r} appears twice (lines {seen[item.id]} and {item.line}); "
                "ids must be unique for the output to be resumable"
            )
        seen[item.id] = item.line
    return items, base_dir


def config_of(rlm: Any) -> dict[str, Any]:
    """The constructor arguments that rebuild ``rlm`` (minus its observers)."""
    from rlm.core.rlm import RLM

    config: dict[str, Any] = {}
    for name in inspect.signature(RLM.__init__).parameters:
        if name == "self" or name in _NOT_COPIED:
            continue
        attribute = _ATTRIBUTE.get(name, name)
        if hasattr(rlm, attribute):
            config[name] = getattr(rlm, attribute)
    return config


def item_config(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` RLM arguments with one item's overrides applied."""
    config = dict(base)
    backend_kwargs = dict(config.get("backend_kwargs") or {})
    if "backend" in overrides and overrides["backend"] != config.get("backend"):
        backend_kwargs = {}  # another provider: the batch's keys and URLs do not carry over
        config["backend"] = overrides["backend"]
    backend_kwargs.update(overrides.get("backend_kwargs") or {})
    if "model" in overrides:
        backend_kwargs["model_name"] = overrides["model"]
    if "sampling_args" in overrides:
        backend_kwargs["sampling_args"] = {
            **(backend_kwargs.get("sampling_args") or {}),
            **(overrides["sampling_args"] or {}),
        }
    config["backend_kwargs"] = backend_kwargs
    if "environment" in overrides and overrides["environment"] != config.get("environment"):
        config["environment_kwargs"] = {}
        config["environment"] = overrides["environment"]
    if "environment_kwargs" in overrides:
        config["environment_kwargs"] = {
            **(config.get("environment_kwargs") or {}),
            **(overrides["environment_kwargs"] or {}),
        }
    for key in _REPLACED:
        if key in overrides:
            config[key] = overrides[key]
    return config
