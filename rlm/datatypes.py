"""Plain data types shared by the loop, the handler, the environments and the logger.

Every type has ``to_dict()``; the ones that round-trip also have ``from_dict()``.
Field names and dict keys match the public ``rlms`` package so trajectories and
wire frames stay interchangeable.
"""

from __future__ import annotations

import json
import reprlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Generic, Literal, TypeVar

ClientBackend = Literal[
    "openai",
    "vllm",
    "openrouter",
    "vercel",
    "azure_openai",
    "anthropic",
    "gemini",
    "litellm",
    "portkey",
    "scripted",
    "llama_cpp",
]
EnvironmentType = Literal[
    "local", "ipython", "docker", "modal", "e2b", "daytona", "prime", "subprocess"
]


_MAX_NESTING = 100
#: Characters of one field that a ``repr()`` shows (the whole value stays in the attribute).
_REPR_FIELD = 60


def _short(value: Any, limit: int = _REPR_FIELD) -> str:
    """A ``repr`` of ``value`` of about ``limit`` characters, built without rendering the
    whole value (a 10 MB prompt costs what a short one does)."""
    if isinstance(value, str) and len(value) > limit:
        return repr(value[:limit]) + f"...({len(value):,} chars)"
    shortener = reprlib.Repr()
    shortener.maxstring = shortener.maxother = limit
    shortener.maxlist = shortener.maxtuple = shortener.maxdict = 3
    shortener.maxlevel = 2
    text = shortener.repr(value)
    return text if len(text) <= limit + 20 else text[:limit] + "..."


def _seconds(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else repr(value)


def cost_text(cost: float | None, form: str = "{:.6g}") -> str:
    """A cost in USD for people to read (``form`` formats it), or ``unknown`` when it is not
    known: an unpriced call is never shown as free."""
    return "unknown" if cost is None else form.format(cost)


def _serialize_value(value: Any, _path: set[int] | None = None) -> Any:
    """A JSON-safe rendering of an arbitrary REPL value (full size; see logger for summaries).

    Self-referencing and very deeply nested containers are cut with a marker
    instead of recursing without end.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, ModuleType):
        return f"<module '{value.__name__}'>"
    if isinstance(value, (list, tuple, dict)):
        path = set() if _path is None else _path
        if id(value) in path:
            return f"<circular reference to {type(value).__name__}>"
        if len(path) >= _MAX_NESTING:
            return f"<{type(value).__name__} nested too deep>"
        path.add(id(value))
        try:
            if isinstance(value, dict):
                return {str(k): _serialize_value(v, path) for k, v in value.items()}
            return [_serialize_value(v, path) for v in value]
        finally:
            path.discard(id(value))
    if callable(value):
        return f"<{type(value).__name__} '{getattr(value, '__name__', '?')}'>"
    try:
        return repr(value)
    except Exception:
        return f"<{type(value).__name__}>"


# --------------------------------------------------------------------------
# Usage accounting
# --------------------------------------------------------------------------


@dataclass(repr=False)
class ModelUsageSummary:
    """Usage of one model: calls, tokens and cost (USD, ``None`` when unknown)."""

    total_calls: int = 0
    total_input_tokens: int = 0
    total_output_tokens: int = 0
    total_cost: float | None = None
    total_cached_tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        """This object as a JSON-able dict, with the keys rlms uses."""
        out: dict[str, Any] = {
            "total_calls": self.total_calls,
            "total_input_tokens": self.total_input_tokens,
            "total_output_tokens": self.total_output_tokens,
        }
        if self.total_cost is not None:
            out["total_cost"] = self.total_cost
        if self.total_cached_tokens:
            out["total_cached_tokens"] = self.total_cached_tokens
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelUsageSummary:
        """Build one from :meth:`to_dict`'s output (and rlms' dicts)."""
        return cls(
            total_calls=int(data.get("total_calls") or 0),
            total_input_tokens=int(data.get("total_input_tokens") or 0),
            total_output_tokens=int(data.get("total_output_tokens") or 0),
            total_cost=data.get("total_cost"),
            total_cached_tokens=int(data.get("total_cached_tokens") or 0),
        )

    def __repr__(self) -> str:
        return (
            f"ModelUsageSummary(calls={self.total_calls}, input_tokens={self.total_input_tokens}"
            f", output_tokens={self.total_output_tokens}, cached_tokens="
            f"{self.total_cached_tokens}, cost={cost_text(self.total_cost)})"
        )

    def add(self, other: ModelUsageSummary) -> None:
        """Add ``other`` into this summary (cost stays ``None`` only if both are unknown)."""
        self.total_calls += other.total_calls
        self.total_input_tokens += other.total_input_tokens
        self.total_output_tokens += other.total_output_tokens
        self.total_cached_tokens += other.total_cached_tokens
        if other.total_cost is not None:
            self.total_cost = (self.total_cost or 0.0) + other.total_cost


@dataclass(repr=False)
class UsageSummary:
    """Usage per model name."""

    model_usage_summaries: dict[str, ModelUsageSummary] = field(default_factory=dict)

    @property
    def total_cost(self) -> float | None:
        """USD over every model; None when no model's cost is known."""
        costs = [
            s.total_cost for s in self.model_usage_summaries.values() if s.total_cost is not None
        ]
        return sum(costs) if costs else None

    @property
    def total_input_tokens(self) -> int:
        """Input (prompt) tokens over every model."""
        return sum(s.total_input_tokens for s in self.model_usage_summaries.values())

    @property
    def total_output_tokens(self) -> int:
        """Output (completion) tokens over every model."""
        return sum(s.total_output_tokens for s in self.model_usage_summaries.values())

    @property
    def total_cached_tokens(self) -> int:
        """Cached input tokens over every model (those the provider reports)."""
        return sum(s.total_cached_tokens for s in self.model_usage_summaries.values())

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens over every model."""
        return self.total_input_tokens + self.total_output_tokens

    @property
    def total_calls(self) -> int:
        """Model calls over every model."""
        return sum(s.total_calls for s in self.model_usage_summaries.values())

    def __repr__(self) -> str:
        models = list(self.model_usage_summaries)
        shown = ", ".join(_short(m, 24) for m in models[:1]) + (", ..." if len(models) > 1 else "")
        return (
            f"UsageSummary(models=[{shown}], calls={self.total_calls}, input_tokens="
            f"{self.total_input_tokens}, output_tokens={self.total_output_tokens}, "
            f"cost={cost_text(self.total_cost)})"
        )

    def merge(self, other: UsageSummary) -> UsageSummary:
        """Return a new summary with ``other`` added to this one."""
        merged = UsageSummary()
        for source in (self, other):
            for model, summary in source.model_usage_summaries.items():
                merged.model_usage_summaries.setdefault(model, ModelUsageSummary()).add(summary)
        return merged

    def to_dict(self) -> dict[str, Any]:
        """This object as a JSON-able dict, with the keys rlms uses."""
        out: dict[str, Any] = {
            "model_usage_summaries": {
                model: summary.to_dict() for model, summary in self.model_usage_summaries.items()
            }
        }
        if self.total_cost is not None:
            out["total_cost"] = self.total_cost
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> UsageSummary:
        """Build one from :meth:`to_dict`'s output (and rlms' dicts)."""
        data = data or {}
        return cls(
            model_usage_summaries={
                model: ModelUsageSummary.from_dict(summary)
                for model, summary in (data.get("model_usage_summaries") or {}).items()
            }
        )


# --------------------------------------------------------------------------
# Completions, REPL results and iterations
# --------------------------------------------------------------------------


@dataclass(repr=False)
class RLMChatCompletion:
    """The result of ``RLM.completion()`` and of every sub-call made from the REPL."""

    root_model: str
    prompt: Any
    response: str
    usage_summary: UsageSummary
    execution_time: float
    metadata: dict[str, Any] | None = None
    error: str | None = None
    #: With ``completion(response_format=...)``: the validated answer (a Pydantic instance
    #: for a model class, the JSON value for a JSON Schema); otherwise None.
    parsed: Any = None

    def __repr__(self) -> str:
        """A few hundred characters, whatever the prompt holds (the full data: attributes
        and ``to_dict()``)."""
        meta = None if self.metadata is None else f"<{len(self.metadata)} keys>"
        return (
            f"{type(self).__name__}(root_model={_short(self.root_model, 30)}, response="
            f"{_short(self.response)}, prompt={_short(self.prompt, 40)}, usage_summary="
            f"{self.usage_summary!r}, execution_time={_seconds(self.execution_time)}, metadata={meta}"
            + (f", error={_short(self.error, 40)}" if self.error is not None else "")
            + (f", parsed={_short(self.parsed)}" if self.parsed is not None else "")
            + ")"
        )

    def to_dict(self) -> dict[str, Any]:
        """This object as a JSON-able dict, with the keys rlms uses."""
        out: dict[str, Any] = {
            "root_model": self.root_model,
            "prompt": self.prompt,
            "response": self.response,
            "usage_summary": self.usage_summary.to_dict(),
            "execution_time": self.execution_time,
        }
        if self.metadata is not None:
            out["metadata"] = self.metadata
        if self.error is not None:
            out["error"] = self.error
        if self.parsed is not None:
            out["parsed"] = _parsed_json(self.parsed)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RLMChatCompletion:
        """Build one from :meth:`to_dict`'s output (and rlms' dicts)."""
        return cls(
            root_model=data.get("root_model") or "unknown",
            prompt=data.get("prompt"),
            response=data.get("response") or "",
            usage_summary=UsageSummary.from_dict(data.get("usage_summary")),
            execution_time=float(data.get("execution_time") or 0.0),
            metadata=data.get("metadata"),
            error=data.get("error"),
            parsed=data.get("parsed"),
        )


def _parsed_json(value: Any) -> Any:
    """``parsed`` as JSON data: a Pydantic instance as its ``model_dump(mode="json")``."""
    dump = getattr(value, "model_dump", None)
    if callable(dump) and not isinstance(value, type):
        return dump(mode="json")
    return _serialize_value(value)


#: The type of ``StructuredCompletion.parsed``.
ParsedT = TypeVar("ParsedT")


class StructuredCompletion(RLMChatCompletion, Generic[ParsedT]):
    """The result of ``completion(..., response_format=...)``: an ``RLMChatCompletion``
    whose ``parsed`` is the validated answer, typed for checkers (``parsed`` is an
    instance of the Pydantic model passed, or a ``dict`` for a JSON Schema). ``to_dict()``
    writes ``parsed`` as JSON; ``from_dict()`` gives it back as JSON data."""

    parsed: ParsedT


@dataclass(repr=False, eq=False)
class REPLResult:
    """What one executed code block produced.

    A dataclass, as in rlms, with rlms' ``__str__``; ``repr()`` is short (the
    namespace can hold the whole context). ``error`` is ours: the exception
    text when the block raised (``None`` when it ran to the end), written to
    logs only when set.
    """

    stdout: str
    stderr: str
    locals: dict[str, Any]
    execution_time: float | None = None
    rlm_calls: list[RLMChatCompletion] = field(default_factory=list)
    final_answer: str | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        if self.rlm_calls is None:
            self.rlm_calls = []

    # The 0.1.x dataclass declared this field name; some user code reads it.
    @property
    def llm_calls(self) -> list[RLMChatCompletion]:
        """The model calls made by this block (rlms' name for ``rlm_calls``)."""
        return self.rlm_calls

    def __str__(self) -> str:
        return (
            f"REPLResult(stdout={self.stdout}, stderr={self.stderr}, locals={self.locals}, "
            f"execution_time={self.execution_time}, rlm_calls={len(self.rlm_calls)})"
        )

    def __repr__(self) -> str:
        return (
            f"REPLResult(stdout={_short(self.stdout)}, stderr={_short(self.stderr)}, "
            f"locals={len(self.locals)} names, execution_time={self.execution_time}, "
            f"rlm_calls={len(self.rlm_calls)}, final_answer={_short(self.final_answer)}"
            + (f", error={_short(self.error)}" if self.error is not None else "")
            + ")"
        )

    def __eq__(self, other: object) -> bool:
        # Equal when they log the same: a value and its JSON round trip compare equal.
        if not isinstance(other, REPLResult):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    def to_dict(self) -> dict[str, Any]:
        """This object as a JSON-able dict, with the keys rlms uses."""
        out = {
            "stdout": self.stdout,
            "stderr": self.stderr,
            "locals": {k: _serialize_value(v) for k, v in self.locals.items()},
            "execution_time": self.execution_time,
            "rlm_calls": [call.to_dict() for call in self.rlm_calls],
            "final_answer": self.final_answer,
        }
        if self.error is not None:
            out["error"] = self.error
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> REPLResult:
        """Build one from :meth:`to_dict`'s output (and rlms' dicts)."""
        return cls(
            stdout=data.get("stdout") or "",
            stderr=data.get("stderr") or "",
            locals=dict(data.get("locals") or {}),
            execution_time=data.get("execution_time"),
            rlm_calls=[RLMChatCompletion.from_dict(c) for c in data.get("rlm_calls") or []],
            final_answer=data.get("final_answer"),
            error=data.get("error"),
        )


@dataclass
class CodeBlock:
    code: str
    result: REPLResult

    def to_dict(self) -> dict[str, Any]:
        """This object as a JSON-able dict, with the keys rlms uses."""
        return {"code": self.code, "result": self.result.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CodeBlock:
        """Build one from :meth:`to_dict`'s output (and rlms' dicts)."""
        return cls(
            code=data.get("code") or "", result=REPLResult.from_dict(data.get("result") or {})
        )


@dataclass(repr=False)
class RLMIteration:
    prompt: Any
    response: str
    code_blocks: list[CodeBlock]
    final_answer: str | None = None
    iteration_time: float | None = None
    #: Ours: usage of this iteration's root-model call (sub-calls are in the blocks).
    root_usage: UsageSummary | None = None

    def __repr__(self) -> str:
        return (
            f"RLMIteration(response={_short(self.response)}, code_blocks="
            f"{len(self.code_blocks)}, final_answer={_short(self.final_answer)}, "
            f"iteration_time={_seconds(self.iteration_time)}, prompt={_short(self.prompt, 60)})"
        )

    def to_dict(self) -> dict[str, Any]:
        """This object as a JSON-able dict, with the keys rlms uses."""
        out = {
            "prompt": self.prompt,
            "response": self.response,
            "code_blocks": [block.to_dict() for block in self.code_blocks],
            "final_answer": self.final_answer,
            "iteration_time": self.iteration_time,
        }
        if self.root_usage is not None:
            out["root_usage"] = self.root_usage.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RLMIteration:
        """Build one from :meth:`to_dict`'s output (and rlms' dicts)."""
        return cls(
            prompt=data.get("prompt"),
            response=data.get("response") or "",
            code_blocks=[CodeBlock.from_dict(b) for b in data.get("code_blocks") or []],
            final_answer=data.get("final_answer"),
            iteration_time=data.get("iteration_time"),
            root_usage=UsageSummary.from_dict(data["root_usage"])
            if data.get("root_usage")
            else None,
        )


# --------------------------------------------------------------------------
# Run metadata and query metadata
# --------------------------------------------------------------------------


@dataclass
class RLMMetadata:
    """Configuration of one RLM run (the first line of a trajectory log)."""

    root_model: str
    max_depth: int
    max_iterations: int
    backend: str
    backend_kwargs: dict[str, Any]
    environment_type: str
    environment_kwargs: dict[str, Any]
    other_backends: list[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        """This object as a JSON-able dict, with the keys rlms uses."""
        return {
            "root_model": self.root_model,
            "max_depth": self.max_depth,
            "max_iterations": self.max_iterations,
            "backend": self.backend,
            "backend_kwargs": {k: _serialize_value(v) for k, v in self.backend_kwargs.items()},
            "environment_type": self.environment_type,
            "environment_kwargs": {
                k: _serialize_value(v) for k, v in self.environment_kwargs.items()
            },
            "other_backends": self.other_backends,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RLMMetadata:
        """Build one from :meth:`to_dict`'s output (and rlms' dicts)."""
        return cls(
            root_model=data.get("root_model") or "unknown",
            max_depth=int(1 if data.get("max_depth") is None else data["max_depth"]),
            max_iterations=int(data.get("max_iterations") or 0),
            backend=data.get("backend") or "unknown",
            backend_kwargs=dict(data.get("backend_kwargs") or {}),
            environment_type=data.get("environment_type") or "local",
            environment_kwargs=dict(data.get("environment_kwargs") or {}),
            other_backends=data.get("other_backends"),
        )


_MEASURING = json.JSONEncoder(default=repr)


def _measure(chunk: Any) -> int:
    """Size of one piece of context, in characters (bytes for binary data)."""
    if isinstance(chunk, (str, bytes, bytearray, memoryview)):
        return len(chunk)
    if isinstance(chunk, dict) and "content" in chunk and isinstance(chunk["content"], str):
        return len(chunk["content"])
    try:
        return len(_MEASURING.encode(chunk))  # json.dumps(chunk, default=repr), built once
    except Exception:
        try:
            return len(repr(chunk))
        except Exception:
            return 0


@dataclass(init=False)
class QueryMetadata:
    """Shape of the context: its type and the size of each piece.

    Accepts anything a user may pass as a prompt (str, bytes, list of anything,
    dict, nested or unserialisable objects) and never raises.
    """

    context_lengths: list[int]
    context_total_length: int
    context_type: str

    def __init__(self, prompt: Any):
        if isinstance(prompt, str):
            self.context_type = "str"
            self.context_lengths = [len(prompt)]
        elif isinstance(prompt, (bytes, bytearray, memoryview)):
            self.context_type = "bytes"
            self.context_lengths = [len(prompt)]
        elif isinstance(prompt, dict):
            self.context_type = "dict"
            self.context_lengths = [_measure(v) for v in prompt.values()]
        elif isinstance(prompt, (list, tuple)):
            self.context_type = "list"
            self.context_lengths = [_measure(v) for v in prompt] or [0]
        else:
            self.context_type = type(prompt).__name__
            self.context_lengths = [_measure(prompt)]
        self.context_total_length = sum(self.context_lengths)

    def to_dict(self) -> dict[str, Any]:
        """This object as a JSON-able dict, with the keys rlms uses."""
        return {
            "context_lengths": list(self.context_lengths),
            "context_total_length": self.context_total_length,
            "context_type": self.context_type,
        }
