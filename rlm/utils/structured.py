"""Structured answers: ``completion(..., response_format=Model_or_schema)``.

A ``response_format`` is a Pydantic model class or a JSON Schema (a dict). The root
model is told the schema; the answer it submits (the usual way) is parsed as JSON and
validated; an invalid one goes back to the model with the validation message, a bounded
number of times (``response_format_retries``); then the run ends with
:class:`~rlm.utils.exceptions.StructuredOutputError`.

Pydantic is imported only when a model class is used. A JSON Schema is checked with
``jsonschema`` when it is installed, otherwise with the small validator below, which
covers the common keywords: ``type``, ``properties``, ``required``, ``items``,
``enum``, ``const``, ``additionalProperties``, ``anyOf``/``oneOf``/``allOf``, local
``$ref``, and the length/size/range bounds. Other keywords (``format``...) are not
checked by it.

:func:`from_openai_response_format` turns the OpenAI chat-completions
``response_format`` field into what ``completion()`` takes (``rlm serve`` uses it).
"""

from __future__ import annotations

import ast
import importlib
import json
import math
import re
from typing import Any

from rlm.utils.exceptions import ConfigurationError, StructuredOutputError
from rlm.utils.prompts import (
    build_rejected_answer_prompt,
    build_response_format_note,
    build_response_format_reminder,
)

__all__ = [
    "StructuredAnswer",
    "from_openai_response_format",
    "parse_json_answer",
    "validate_schema",
    "schema_errors",
    "own_schema_errors",
]

#: Validation problems listed to the model at most (the rest are counted).
_MAX_PROBLEMS = 8
#: Characters of a rejected answer quoted back to the model.
_QUOTE_CHARS = 1500

_JSON_TYPES = ("object", "array", "string", "integer", "number", "boolean", "null")


# ---------------------------------------------------------------------------
# OpenAI's response_format field
# ---------------------------------------------------------------------------


def from_openai_response_format(value: Any) -> dict[str, Any] | None:
    """The ``response_format`` of an OpenAI chat-completions request, as a JSON Schema
    for ``RLM.completion(response_format=...)``; None when no structure is asked.

    - ``{"type": "text"}`` (or None) -> None;
    - ``{"type": "json_object"}`` -> ``{"type": "object"}`` (any JSON object);
    - ``{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}`` -> the
      schema.

    Raises :class:`ConfigurationError` (a ``ValueError``; answer HTTP 400) for anything
    else, naming what is accepted.
    """
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigurationError(
            f"response_format must be an object, got {type(value).__name__}; accepted: "
            '{"type": "text"}, {"type": "json_object"}, {"type": "json_schema", ...}'
        )
    kind = value.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise ConfigurationError(
                'response_format {"type": "json_schema"} needs "json_schema": '
                '{"name": ..., "schema": {...}}'
            )
        schema: dict[str, Any] = spec["schema"]
        validate_schema(schema)
        return schema
    raise ConfigurationError(
        f"response_format type {kind!r} is not supported; accepted: text, json_object, json_schema"
    )


# ---------------------------------------------------------------------------
# Parsing the submitted text
# ---------------------------------------------------------------------------

_FENCE = re.compile(r"^```[a-zA-Z0-9_-]*\s*\n(.*?)\n?```\s*$", re.DOTALL)


def parse_json_answer(text: str) -> tuple[Any, str | None]:
    """``(value, None)`` for a submitted answer that is JSON, or ``(None, problem)``.

    Accepted, in order: the text as JSON; the text inside a ```json fence; a Python
    literal (what ``answer["content"] = {...}`` turns into: ``str()`` of a dict); the
    first ``{...}`` or ``[...]`` span of the text (an object wrapped in prose).
    """
    stripped = text.strip()
    candidates = [stripped]
    fenced = _FENCE.match(stripped)
    if fenced:
        candidates.append(fenced.group(1).strip())
    for candidate in candidates:
        try:
            return json.loads(candidate), None
        except (ValueError, RecursionError):
            pass
    for candidate in candidates:
        value = _python_literal(candidate)
        if value is not _NOT_LITERAL:
            return value, None
    for open_, close in (("{", "}"), ("[", "]")):
        start, end = stripped.find(open_), stripped.rfind(close)
        if 0 <= start < end:
            span = stripped[start : end + 1]
            try:
                return json.loads(span), None
            except (ValueError, RecursionError):
                value = _python_literal(span)
                if value is not _NOT_LITERAL:
                    return value, None
    try:
        json.loads(stripped)
    except (ValueError, RecursionError) as exc:
        return None, f"the answer is not valid JSON ({exc})"
    return None, "the answer is not valid JSON"  # pragma: no cover


_NOT_LITERAL = object()


def _python_literal(text: str) -> Any:
    if not text or text[0] not in "{[" or len(text) > 1_000_000:
        return _NOT_LITERAL
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        return _NOT_LITERAL
    try:
        # Only values JSON can hold (no sets, bytes, complex, tuples as keys...).
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError):
        return _NOT_LITERAL


# ---------------------------------------------------------------------------
# A small JSON Schema validator (the common keywords)
# ---------------------------------------------------------------------------


def validate_schema(schema: Any) -> None:
    """Raise :class:`ConfigurationError` when ``schema`` is not a usable JSON Schema."""
    if not isinstance(schema, dict):
        raise ConfigurationError(
            f"a JSON Schema must be a dict, got {type(schema).__name__}; or pass a "
            "Pydantic model class"
        )
    jsonschema = _jsonschema()
    if jsonschema is None:
        _check_schema_node(schema, "schema")
        return
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.exceptions.SchemaError as exc:
        raise ConfigurationError(
            f"response_format is not a valid JSON Schema: {exc.message}"
        ) from None


def _check_schema_node(node: Any, where: str) -> None:
    if isinstance(node, bool):
        return
    if not isinstance(node, dict):
        raise ConfigurationError(f"{where} must be a JSON Schema (a dict), got {node!r}")
    kind = node.get("type")
    kinds = kind if isinstance(kind, list) else [kind] if kind is not None else []
    for k in kinds:
        if k not in _JSON_TYPES:
            raise ConfigurationError(
                f"{where}: unknown type {k!r}; JSON Schema types: {', '.join(_JSON_TYPES)}"
            )
    for key in ("properties", "$defs", "definitions"):
        if key in node:
            if not isinstance(node[key], dict):
                raise ConfigurationError(f"{where}.{key} must be a dict of schemas")
            for name, sub in node[key].items():
                _check_schema_node(sub, f"{where}.{key}.{name}")
    if "required" in node and not (
        isinstance(node["required"], list) and all(isinstance(r, str) for r in node["required"])
    ):
        raise ConfigurationError(f"{where}.required must be a list of property names")
    if "enum" in node and not isinstance(node["enum"], list):
        raise ConfigurationError(f"{where}.enum must be a list")
    items = node.get("items")
    if isinstance(items, list):
        for i, sub in enumerate(items):
            _check_schema_node(sub, f"{where}.items[{i}]")
    elif items is not None:
        _check_schema_node(items, f"{where}.items")
    extra = node.get("additionalProperties")
    if extra is not None:
        _check_schema_node(extra, f"{where}.additionalProperties")
    for key in ("anyOf", "oneOf", "allOf"):
        if key in node:
            if not isinstance(node[key], list) or not node[key]:
                raise ConfigurationError(f"{where}.{key} must be a non-empty list of schemas")
            for i, sub in enumerate(node[key]):
                _check_schema_node(sub, f"{where}.{key}[{i}]")


def schema_errors(value: Any, schema: dict[str, Any]) -> list[str]:
    """What is wrong with ``value`` against ``schema`` (empty when it is valid), each
    problem as ``"$.path: message"``. Uses ``jsonschema`` when it is installed."""
    jsonschema = _jsonschema()
    if jsonschema is None:
        return own_schema_errors(value, schema)
    validator = jsonschema.validators.validator_for(schema)(schema)
    found = sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))
    return [f"{_json_path(e.absolute_path)}: {e.message}" for e in found]


def own_schema_errors(value: Any, schema: dict[str, Any]) -> list[str]:
    """:func:`schema_errors` by our own validator (what runs without ``jsonschema``)."""
    problems: list[str] = []
    _Validator(schema).check(value, schema, "$", problems)
    return problems


def _jsonschema() -> Any:
    """The ``jsonschema`` module when it is installed (an optional extra), else None."""
    try:
        return importlib.import_module("jsonschema")
    except ImportError:
        return None


def _json_path(parts: Any) -> str:
    out = "$"
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


#: JSON Schema's type name of each Python type a parsed JSON value has, in the order they are
#: tried (``bool`` before ``int``: a bool is an int).
_TYPE_NAMES: tuple[tuple[type, str], ...] = (
    (type(None), "null"),
    (bool, "boolean"),
    (int, "integer"),
    (float, "number"),
    (str, "string"),
    (list, "array"),
    (dict, "object"),
)


def _type_name(value: Any) -> str:
    for python_type, name in _TYPE_NAMES:
        if isinstance(value, python_type):
            return name
    return type(value).__name__


def _is_type(value: Any, kind: str) -> bool:
    if kind == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and math.isfinite(value) and value.is_integer()
        )
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return _type_name(value) == kind


def _short(value: Any) -> str:
    """``value`` as JSON (its repr when it is not JSON), cut to 60 characters."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _Validator:
    def __init__(self, root: dict[str, Any]):
        self.root = root

    def resolve(self, ref: str) -> Any:
        if not ref.startswith("#"):
            raise ConfigurationError(f"only local $ref ('#/...') is supported, got {ref!r}")
        node: Any = self.root
        for part in [p for p in ref[1:].split("/") if p]:
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, dict) or part not in node:
                raise ConfigurationError(f"$ref {ref!r} does not point into the schema")
            node = node[part]
        return node

    def check(self, value: Any, schema: Any, path: str, out: list[str], depth: int = 0) -> None:
        if depth > 200:
            out.append(f"{path}: nested too deep to check")
            return
        if schema is True or schema == {}:
            return
        if schema is False:
            out.append(f"{path}: no value is allowed here")
            return
        if not isinstance(schema, dict):
            return
        if "$ref" in schema:
            self.check(value, self.resolve(schema["$ref"]), path, out, depth + 1)
        kind = schema.get("type")
        if kind is not None:
            kinds = kind if isinstance(kind, list) else [kind]
            if not any(_is_type(value, k) for k in kinds):
                expected = " or ".join(kinds)
                out.append(f"{path}: expected {expected}, got {_type_name(value)} {_short(value)}")
                return
        if "enum" in schema and value not in schema["enum"]:
            choices = ", ".join(_short(v) for v in schema["enum"])
            out.append(f"{path}: {_short(value)} is not one of {choices}")
        if "const" in schema and value != schema["const"]:
            out.append(f"{path}: must be {_short(schema['const'])}")
        for key in ("allOf", "anyOf", "oneOf"):
            if key in schema:
                self._combinator(key, value, schema[key], path, out, depth)
        if isinstance(value, dict):
            self._object(value, schema, path, out, depth)
        elif isinstance(value, list):
            self._array(value, schema, path, out, depth)
        elif isinstance(value, str):
            self._string(value, schema, path, out)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            self._number(value, schema, path, out)

    def _combinator(
        self, key: str, value: Any, subs: list[Any], path: str, out: list[str], depth: int
    ) -> None:
        results = []
        for sub in subs:
            found: list[str] = []
            self.check(value, sub, path, found, depth + 1)
            results.append(found)
        passed = sum(1 for r in results if not r)
        if key == "allOf":
            for found in results:
                out.extend(found)
        elif key == "anyOf" and passed == 0:
            out.append(f"{path}: matches none of the allowed forms ({'; '.join(results[0])})")
        elif key == "oneOf" and passed != 1:
            if passed == 0:
                out.append(f"{path}: matches none of the allowed forms ({'; '.join(results[0])})")
            else:
                out.append(f"{path}: matches {passed} of the forms; exactly one is allowed")

    def _object(
        self, value: dict[str, Any], schema: dict[str, Any], path: str, out: list[str], depth: int
    ) -> None:
        properties = schema.get("properties") or {}
        for name in schema.get("required") or []:
            if name not in value:
                out.append(f"{path}: missing required property {name!r}")
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            where = f"{path}.{name}"
            if name in properties:
                self.check(item, properties[name], where, out, depth + 1)
            elif extra is False:
                allowed = ", ".join(properties) or "none"
                out.append(f"{path}: property {name!r} is not allowed (allowed: {allowed})")
            elif isinstance(extra, dict):
                self.check(item, extra, where, out, depth + 1)
        if "minProperties" in schema and len(value) < schema["minProperties"]:
            out.append(f"{path}: needs at least {schema['minProperties']} properties")
        if "maxProperties" in schema and len(value) > schema["maxProperties"]:
            out.append(f"{path}: allows at most {schema['maxProperties']} properties")

    def _array(
        self, value: list[Any], schema: dict[str, Any], path: str, out: list[str], depth: int
    ) -> None:
        items = schema.get("items")
        prefix = schema.get("prefixItems")
        if isinstance(items, list):  # the older tuple form
            prefix, items = items, schema.get("additionalItems")
        if isinstance(prefix, list):
            for i, (item, sub) in enumerate(zip(value, prefix, strict=False)):
                self.check(item, sub, f"{path}[{i}]", out, depth + 1)
        start = len(prefix) if isinstance(prefix, list) else 0
        if items is not None:
            for i in range(start, len(value)):
                self.check(value[i], items, f"{path}[{i}]", out, depth + 1)
        if "minItems" in schema and len(value) < schema["minItems"]:
            out.append(f"{path}: needs at least {schema['minItems']} items, has {len(value)}")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            out.append(f"{path}: allows at most {schema['maxItems']} items, has {len(value)}")
        if schema.get("uniqueItems"):
            seen: list[Any] = []
            for item in value:
                if item in seen:
                    out.append(f"{path}: items must be unique ({_short(item)} repeats)")
                    break
                seen.append(item)

    @staticmethod
    def _string(value: str, schema: dict[str, Any], path: str, out: list[str]) -> None:
        if "minLength" in schema and len(value) < schema["minLength"]:
            out.append(f"{path}: needs at least {schema['minLength']} characters")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            out.append(f"{path}: allows at most {schema['maxLength']} characters")
        pattern = schema.get("pattern")
        if isinstance(pattern, str):
            try:
                matched = re.search(pattern, value) is not None
            except re.error:
                matched = True  # a pattern Python cannot read is not checked
            if not matched:
                out.append(f"{path}: {_short(value)} does not match the pattern {pattern!r}")

    @staticmethod
    def _number(value: float, schema: dict[str, Any], path: str, out: list[str]) -> None:
        if "minimum" in schema and value < schema["minimum"]:
            out.append(f"{path}: must be >= {schema['minimum']}, got {value}")
        if "maximum" in schema and value > schema["maximum"]:
            out.append(f"{path}: must be <= {schema['maximum']}, got {value}")
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            out.append(f"{path}: must be > {schema['exclusiveMinimum']}, got {value}")
        if "exclusiveMaximum" in schema and value >= schema["exclusiveMaximum"]:
            out.append(f"{path}: must be < {schema['exclusiveMaximum']}, got {value}")


# ---------------------------------------------------------------------------
# The schema as the model sees it
# ---------------------------------------------------------------------------

#: Keys whose value maps names to schemas (a property may be called "title").
_NAME_MAPS = ("properties", "$defs", "definitions", "patternProperties")


def compact_schema(schema: Any) -> Any:
    """``schema`` without the ``title`` keys Pydantic adds everywhere (noise for a model)."""
    if isinstance(schema, list):
        return [compact_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "title":
            continue
        if key in _NAME_MAPS and isinstance(value, dict):
            out[key] = {name: compact_schema(sub) for name, sub in value.items()}
        else:
            out[key] = compact_schema(value)
    return out


def example_of(schema: Any, root: dict[str, Any] | None = None, depth: int = 0) -> Any:
    """A value of the shape ``schema`` describes, with placeholder values (for the prompt)."""
    root = root if root is not None else schema if isinstance(schema, dict) else {}
    if not isinstance(schema, dict) or depth > 6:
        return "..."
    if "$ref" in schema:
        try:
            return example_of(_Validator(root).resolve(schema["$ref"]), root, depth + 1)
        except ConfigurationError:
            return "..."
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        subs = [s for s in schema.get(key) or [] if not (isinstance(s, dict) and _only_null(s))]
        if subs:
            return example_of(subs[0], root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        props = schema.get("properties") or {}
        return {name: example_of(sub, root, depth + 1) for name, sub in props.items()}
    if kind == "array":
        items = schema.get("items")
        return [example_of(items, root, depth + 1)] if isinstance(items, dict) else []
    return {
        "string": "text",
        "integer": 0,
        "number": 0.0,
        "boolean": False,
        "null": None,
    }.get(str(kind), "...")


def _only_null(schema: dict[str, Any]) -> bool:
    return schema.get("type") == "null"


# ---------------------------------------------------------------------------
# One run's structured answer
# ---------------------------------------------------------------------------


def _is_pydantic_model(value: Any) -> bool:
    return (
        isinstance(value, type)
        and callable(getattr(value, "model_validate", None))
        and callable(getattr(value, "model_json_schema", None))
    )


class StructuredAnswer:
    """The ``response_format`` of one run: its schema, how to tell the model, how to check
    an answer, and how many rejected answers are left.

    Built by ``RLM.completion()``; raises :class:`ConfigurationError` for a
    ``response_format`` that is neither a Pydantic model class nor a JSON Schema.
    """

    def __init__(self, response_format: Any, retries: int = 2):
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ConfigurationError(
                f"response_format_retries must be an integer >= 0, got {retries!r}"
            )
        self.response_format = response_format
        self.retries = retries
        self.model: Any = None
        if _is_pydantic_model(response_format):
            self.model = response_format
            self.schema: dict[str, Any] = response_format.model_json_schema()
        elif isinstance(response_format, dict):
            schema = response_format
            if schema.get("type") in ("json_schema", "json_object", "text"):
                unwrapped = from_openai_response_format(schema)  # OpenAI's own field, as is
                schema = unwrapped if unwrapped is not None else {}
            validate_schema(schema)
            self.schema = schema
        else:
            raise ConfigurationError(
                "response_format must be a Pydantic model class or a JSON Schema dict, got "
                f"{response_format!r}"
            )
        #: Rejected answers so far.
        self.rejected = 0
        self.last_attempt: str | None = None
        self.last_problem: str | None = None

    # -- what the model is told ---------------------------------------------------

    @property
    def wants_object(self) -> bool:
        return self.schema.get("type") == "object" or "properties" in self.schema

    @property
    def what(self) -> str:
        return "a JSON object" if self.wants_object else "a JSON value"

    def instructions(self) -> str:
        """The paragraph added to the system prompt."""
        shape = example_of(self.schema)
        return build_response_format_note(
            schema_json=json.dumps(compact_schema(self.schema), ensure_ascii=False),
            shape_json=json.dumps(shape, ensure_ascii=False),
            shape_python=repr(shape),
            what=self.what,
        )

    def reminder(self) -> str:
        """The line added to each turn's prompt."""
        return build_response_format_reminder(self.what)

    def rejection(self, attempt: str, problem: str) -> dict[str, str]:
        """The message that sends a rejected answer back to the model."""
        quoted = attempt if len(attempt) <= _QUOTE_CHARS else attempt[:_QUOTE_CHARS] + "..."
        return build_rejected_answer_prompt(quoted, problem, self.retries - self.rejected + 1)

    # -- checking an answer -------------------------------------------------------------

    def check(self, text: str) -> tuple[Any, Any, str | None]:
        """``(parsed, data, None)`` for a valid answer (``parsed``: the Pydantic instance or
        the JSON value; ``data``: the JSON value), else ``(None, None, problem)``."""
        data, problem = parse_json_answer(text)
        if problem is not None:
            return None, None, f"- {problem}"
        if self.model is not None:
            return self._check_model(data)
        problems = schema_errors(data, self.schema)
        if problems:
            return None, None, _listed(problems)
        return data, data, None

    def _check_model(self, data: Any) -> tuple[Any, Any, str | None]:
        from pydantic import ValidationError

        try:
            parsed = self.model.model_validate(data)
        except ValidationError as exc:
            problems = []
            for error in exc.errors(include_url=False):
                where = _json_path(error.get("loc") or ())
                got = (
                    "" if error.get("type") == "missing" else f" (got {_short(error.get('input'))})"
                )
                problems.append(f"{where}: {error.get('msg')}{got}")
            return None, None, _listed(problems)
        return parsed, data, None

    def judge(self, text: str) -> tuple[Any, Any, dict[str, str] | None]:
        """Check one submitted answer and count it: ``(parsed, data, None)`` when valid;
        ``(None, None, message)`` when rejected with a try left (``message`` goes back to
        the model); raises :class:`StructuredOutputError` when no try is left."""
        parsed, data, problem = self.check(text)
        if problem is None:
            return parsed, data, None
        self.rejected += 1
        self.last_attempt, self.last_problem = text, problem
        if self.rejected > self.retries:
            raise self.error()
        return None, None, self.rejection(text, problem)

    def last_chance(self, text: str) -> tuple[Any, str]:
        """``(parsed, response_text)`` for an answer that gets no second try (the one forced
        after ``max_iterations``); raises :class:`StructuredOutputError` when invalid."""
        parsed, data, problem = self.check(text)
        if problem is not None:
            self.rejected += 1
            self.last_attempt, self.last_problem = text, problem
            raise self.error()
        return parsed, self.response_text(text, data)

    @property
    def answer_format(self) -> str:
        """What the answer must be, for the prompt that forces an answer."""
        return f"{self.what} matching the JSON Schema in the instructions"

    def error(self, text: str | None = None, problem: str | None = None) -> StructuredOutputError:
        attempt = text if text is not None else self.last_attempt or ""
        message = problem if problem is not None else self.last_problem or ""
        attempts = self.rejected
        return StructuredOutputError(
            attempt=attempt,
            validation_error=message,
            attempts=attempts,
            message=(
                f"the answer did not match response_format after {attempts} "
                f"attempt{'s' if attempts != 1 else ''}:\n{message}"
            ),
        )

    @staticmethod
    def response_text(text: str, data: Any) -> str:
        """The result's ``response``: the submitted text when it is exactly JSON, else the
        JSON of what was found in it (a fenced block, a Python dict, prose around it)."""
        stripped = text.strip()
        try:
            json.loads(stripped)
        except (ValueError, RecursionError):
            return json.dumps(data, ensure_ascii=False)
        return stripped


def _listed(problems: list[str]) -> str:
    shown = [f"- {p}" for p in problems[:_MAX_PROBLEMS]]
    if len(problems) > _MAX_PROBLEMS:
        shown.append(f"- ... and {len(problems) - _MAX_PROBLEMS} more")
    return "\n".join(shown)
