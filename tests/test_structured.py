"""Structured answers (``completion(response_format=...)``), driven by the scripted LM through
a real LMHandler and a real REPL (local and subprocess)."""

from __future__ import annotations

import asyncio
import json
import pathlib
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from pydantic import BaseModel, Field

from rlm import RLM
from rlm.core import events as ev
from rlm.core.types import RLMChatCompletion, StructuredCompletion
from rlm.utils.exceptions import ConfigurationError, StructuredOutputError
from rlm.utils.structured import (
    StructuredAnswer,
    from_openai_response_format,
    own_schema_errors,
    parse_json_answer,
    schema_errors,
)

ROOT = pathlib.Path(__file__).resolve().parent.parent


class Invoice(BaseModel):
    vendor: str
    total: float
    paid: bool = False
    lines: list[str] = Field(default_factory=list)


INVOICE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "vendor": {"type": "string"},
        "total": {"type": "number"},
        "currency": {"type": "string", "enum": ["EUR", "USD"]},
    },
    "required": ["vendor", "total"],
    "additionalProperties": False,
}

CONTEXT = "Invoice 17 from Acme Tools. Total due: 12.50 EUR. Not yet paid."


def block(code: str) -> str:
    return f"```repl\n{code}\n```"


def submit(python_value: str) -> str:
    """A response that submits ``python_value`` (Python source of a dict) as JSON."""
    return block(
        f"import json\nanswer['content'] = json.dumps({python_value})\nanswer['ready'] = True"
    )


class Script:
    """A script function for ``backend="scripted"``: answers in order, and keeps every
    root prompt it was sent."""

    def __init__(self, *answers: str):
        self.answers = list(answers)
        self.prompts: list[list[dict[str, Any]]] = []

    def __call__(self, messages: list[dict[str, Any]]) -> str:
        self.prompts.append(messages)
        if not self.answers:
            raise AssertionError("the model was asked once more than the script expects")
        return self.answers.pop(0)

    def text(self, call: int) -> str:
        """Everything the model was sent on root call ``call`` (0-based)."""
        return "\n".join(str(m["content"]) for m in self.prompts[call])


def make_rlm(script: Script, **kwargs: Any) -> RLM:
    return RLM(backend="scripted", backend_kwargs={"responses": script}, **kwargs)


# ---------------------------------------------------------------------------
# Valid the first time
# ---------------------------------------------------------------------------


def test_pydantic_model_valid_the_first_time():
    script = Script(
        block("print(context)"),
        submit("{'vendor': 'Acme Tools', 'total': 12.5, 'lines': ['tools']}"),
    )
    rlm = make_rlm(script)
    result = rlm.completion(CONTEXT, root_prompt="Extract the invoice.", response_format=Invoice)

    assert isinstance(result, StructuredCompletion)
    assert isinstance(result, RLMChatCompletion)
    assert isinstance(result.parsed, Invoice)
    assert result.parsed == Invoice(vendor="Acme Tools", total=12.5, lines=["tools"])
    assert json.loads(result.response) == {
        "vendor": "Acme Tools",
        "total": 12.5,
        "lines": ["tools"],
    }
    assert result.error is None
    assert len(script.prompts) == 2
    # The model was told the schema, in the system prompt, and reminded every turn.
    system = script.prompts[0][0]["content"]
    assert "Answer format: your final answer must be a JSON object" in system
    assert '"vendor": {"type": "string"}' in system
    assert '"required": ["vendor", "total"]' in system
    assert '"title"' not in system  # Pydantic's titles are left out
    assert "answer['ready'] = True" in system
    assert "JSON Schema in the instructions" in script.prompts[1][-1]["content"]


def test_json_schema_valid_the_first_time_gives_a_dict():
    script = Script(submit("{'vendor': 'Acme Tools', 'total': 12.5, 'currency': 'EUR'}"))
    result = make_rlm(script).completion(CONTEXT, response_format=INVOICE_SCHEMA)
    assert result.parsed == {"vendor": "Acme Tools", "total": 12.5, "currency": "EUR"}
    assert type(result.parsed) is dict
    assert json.loads(result.response) == result.parsed
    assert '"enum": ["EUR", "USD"]' in script.prompts[0][0]["content"]


def test_without_response_format_nothing_changes():
    script = Script(block("answer['content'] = 'plain'\nanswer['ready'] = True"))
    result = make_rlm(script).completion(CONTEXT)
    assert type(result) is RLMChatCompletion
    assert result.parsed is None
    assert result.response == "plain"
    assert "Answer format" not in script.text(0)
    assert "parsed" not in result.to_dict()


def test_answer_forms_other_than_a_json_string_are_accepted():
    # A dict assigned directly (str() of it is a Python literal), FINAL(...) with JSON,
    # and a fenced ```json answer all parse; `response` is then the JSON text.
    for answer in (
        block(
            "answer['content'] = {'vendor': 'Acme', 'total': 3, 'paid': True}\nanswer['ready'] = True"
        ),
        'FINAL({"vendor": "Acme", "total": 3, "paid": true})',
        block('FINAL_VAR(\'```json\\n{"vendor": "Acme", "total": 3, "paid": true}\\n```\')'),
    ):
        result = make_rlm(Script(answer)).completion(CONTEXT, response_format=Invoice)
        assert result.parsed == Invoice(vendor="Acme", total=3, paid=True), answer
        assert json.loads(result.response) == {"vendor": "Acme", "total": 3, "paid": True}


# ---------------------------------------------------------------------------
# Invalid, then corrected
# ---------------------------------------------------------------------------


def test_json_schema_invalid_then_corrected():
    script = Script(
        submit("{'vendor': 'Acme Tools', 'currency': 'GBP'}"),
        submit("{'vendor': 'Acme Tools', 'total': 12.5, 'currency': 'EUR'}"),
    )
    result = make_rlm(script).completion(CONTEXT, response_format=INVOICE_SCHEMA)
    assert result.parsed == {"vendor": "Acme Tools", "total": 12.5, "currency": "EUR"}
    assert len(script.prompts) == 2
    # The validation message is in the prompt of the next root call.
    feedback = script.text(1)
    assert "Your final answer was not accepted" in feedback
    # (jsonschema words it when it is installed, our own validator otherwise)
    assert "$: " in feedback and "'total'" in feedback and "required property" in feedback
    assert "$.currency: " in feedback and "GBP" in feedback and "is not one of" in feedback
    assert '{"vendor": "Acme Tools", "currency": "GBP"}' in feedback  # the rejected answer
    assert "2 tries left" in feedback


def test_pydantic_invalid_then_corrected():
    script = Script(
        submit("{'vendor': 'Acme Tools', 'total': 'twelve'}"),
        submit("{'vendor': 'Acme Tools', 'total': 12.5}"),
    )
    result = make_rlm(script).completion(CONTEXT, response_format=Invoice)
    assert result.parsed == Invoice(vendor="Acme Tools", total=12.5)
    feedback = script.text(1)
    assert "$.total: Input should be a valid number" in feedback
    assert "twelve" in feedback
    assert "errors.pydantic.dev" not in feedback  # no links for the model to follow


def test_not_json_at_all_is_sent_back_too():
    script = Script(
        "FINAL(The vendor is Acme and the total is 12.50)",
        'FINAL({"vendor": "Acme", "total": 12.5})',
    )
    result = make_rlm(script).completion(CONTEXT, response_format=Invoice)
    assert result.parsed.total == 12.5
    assert "the answer is not valid JSON" in script.text(1)


# ---------------------------------------------------------------------------
# Never valid
# ---------------------------------------------------------------------------


def test_never_valid_ends_in_structured_output_error_with_the_last_attempt():
    script = Script(
        submit("{'vendor': 'A'}"),
        submit("{'vendor': 'B'}"),
        submit("{'vendor': 'C', 'total': 'lots'}"),
    )
    rlm = make_rlm(script)
    with pytest.raises(StructuredOutputError) as caught:
        rlm.completion(CONTEXT, response_format=INVOICE_SCHEMA)
    error = caught.value
    assert isinstance(error, ValueError)
    assert len(script.prompts) == 3  # the default: 2 retries after the first answer
    assert error.attempts == 3
    assert json.loads(error.attempt) == {"vendor": "C", "total": "lots"}
    assert error.partial_answer == error.attempt
    assert "$.total: " in error.validation_error and "lots" in error.validation_error
    assert "after 3 attempts" in str(error)
    assert "1 try left" in script.text(2)


def test_response_format_retries_keyword_and_attribute():
    bad = submit("{'vendor': 'A'}")
    script = Script(bad)
    with pytest.raises(StructuredOutputError) as caught:
        make_rlm(script).completion(CONTEXT, response_format=Invoice, response_format_retries=0)
    assert caught.value.attempts == 1
    assert len(script.prompts) == 1

    script = Script(bad, bad, bad, bad, bad)
    rlm = make_rlm(script)
    rlm.response_format_retries = 4
    with pytest.raises(StructuredOutputError) as caught:
        rlm.completion(CONTEXT, response_format=Invoice)
    assert caught.value.attempts == 5
    assert RLM.response_format_retries == 2


def test_forced_answer_after_max_iterations_is_validated():
    script = Script(block("x = 1"), '{"vendor": "Acme", "total": 1}')
    result = make_rlm(script, max_iterations=1).completion(CONTEXT, response_format=Invoice)
    assert result.parsed == Invoice(vendor="Acme", total=1)
    assert "as a JSON object matching the JSON Schema" in script.prompts[1][-1]["content"]

    script = Script(block("x = 1"), "I could not find it.")
    with pytest.raises(StructuredOutputError) as caught:
        make_rlm(script, max_iterations=1).completion(CONTEXT, response_format=Invoice)
    assert caught.value.attempt == "I could not find it."


def test_a_run_that_fails_validation_reports_it_in_run_finished():
    rlm = make_rlm(Script(submit("{'vendor': 'A'}")))
    events: list[ev.Event] = []
    with pytest.raises(StructuredOutputError):
        for event in rlm.stream(CONTEXT, response_format=Invoice, response_format_retries=0):
            events.append(event)
    assert events[-1].type == "run_finished"
    assert "StructuredOutputError" in (events[-1].error or "")
    assert not any(e.type == "final_answer" for e in events)


# ---------------------------------------------------------------------------
# Other entry points and environments
# ---------------------------------------------------------------------------


def test_subprocess_environment_invalid_then_corrected():
    script = Script(
        block("print(len(context))"),
        submit("{'vendor': 'Acme Tools', 'total': '12.50 EUR'}"),
        block(
            "import json\n"
            "total = float(context.split('Total due: ')[1].split()[0])\n"
            "answer['content'] = json.dumps({'vendor': 'Acme Tools', 'total': total})\n"
            "answer['ready'] = True"
        ),
    )
    rlm = make_rlm(script, environment="subprocess")
    result = rlm.completion(CONTEXT, response_format=INVOICE_SCHEMA)
    assert result.parsed == {"vendor": "Acme Tools", "total": 12.5}
    assert str(len(CONTEXT)) in script.text(1)  # the REPL really ran in the subprocess
    assert "$.total: " in script.text(2) and "12.50 EUR" in script.text(2)


def test_acompletion_and_stream_take_response_format():
    script = Script(submit("{'vendor': 'Acme', 'total': 2}"))
    result = asyncio.run(make_rlm(script).acompletion(CONTEXT, response_format=Invoice))
    assert result.parsed == Invoice(vendor="Acme", total=2)

    script = Script(
        submit("{'vendor': 'Acme', 'total': 'x'}"), submit("{'vendor': 'Acme', 'total': 3}")
    )
    events = list(make_rlm(script).stream(CONTEXT, response_format=INVOICE_SCHEMA))
    finished = events[-1]
    assert isinstance(finished, ev.RunFinished)
    assert finished.result.parsed == {"vendor": "Acme", "total": 3}
    answers = [e.answer for e in events if isinstance(e, ev.FinalAnswer)]
    assert answers == ['{"vendor": "Acme", "total": 3}']

    async def consume() -> Any:
        script = Script(submit("{'vendor': 'Acme', 'total': 4}"))
        last = None
        async for event in make_rlm(script).astream(CONTEXT, None, Invoice):
            last = event
        return last

    assert asyncio.run(consume()).result.parsed.total == 4


def test_openai_response_format_dict_is_accepted_as_is():
    wrapped = {"type": "json_schema", "json_schema": {"name": "inv", "schema": INVOICE_SCHEMA}}
    script = Script(submit("{'vendor': 'Acme', 'total': 2}"))
    result = make_rlm(script).completion(CONTEXT, response_format=wrapped)
    assert result.parsed == {"vendor": "Acme", "total": 2}


def test_bad_response_format_fails_before_the_run():
    script = Script()
    rlm = make_rlm(script)
    for bad in (str, "a schema", {"type": "objekt"}, {"properties": []}, 42):
        with pytest.raises(ConfigurationError):
            rlm.completion(CONTEXT, response_format=bad)  # type: ignore[call-overload]
    with pytest.raises(ConfigurationError, match="response_format_retries"):
        rlm.completion(CONTEXT, response_format=Invoice, response_format_retries=-1)
    assert script.prompts == []


# ---------------------------------------------------------------------------
# The result type
# ---------------------------------------------------------------------------


def test_to_dict_writes_parsed_as_json_and_from_dict_reads_it_back():
    script = Script(submit("{'vendor': 'Acme', 'total': 2}"))
    result = make_rlm(script).completion(CONTEXT, response_format=Invoice)
    data = result.to_dict()
    assert data["parsed"] == {"vendor": "Acme", "total": 2.0, "paid": False, "lines": []}
    assert set(data) == {
        "root_model",
        "prompt",
        "response",
        "usage_summary",
        "execution_time",
        "parsed",
    }
    json.dumps(data)
    back = RLMChatCompletion.from_dict(data)
    assert back.parsed == data["parsed"]
    assert back.to_dict() == data
    assert "parsed=Invoice(" in repr(result)


def test_parsed_is_typed_for_mypy(tmp_path):
    pytest.importorskip("mypy")
    script = tmp_path / "user_structured.py"
    script.write_text(
        textwrap.dedent(
            """
            from typing import Any, reveal_type

            from pydantic import BaseModel

            from rlm import RLM


            class Invoice(BaseModel):
                total: float


            async def main(rlm: RLM, schema: dict[str, Any]) -> None:
                a = rlm.completion("text", response_format=Invoice)
                reveal_type(a.parsed)
                reveal_type(a.parsed.total)
                b = rlm.completion("text", "question", schema)
                reveal_type(b.parsed)
                c = rlm.completion("text")
                reveal_type(c)
                d = await rlm.acompletion("text", None, Invoice)
                reveal_type(d)
            """
        )
    )
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--follow-imports=silent",
            "--cache-dir",
            str(tmp_path / "cache"),
            str(script),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    revealed = [
        line.split("Revealed type is ", 1)[1].strip('"')
        for line in run.stdout.splitlines()
        if "Revealed type is" in line
    ]
    assert revealed == [
        "user_structured.Invoice",
        "builtins.float",
        "builtins.dict[builtins.str, Any]",
        "rlm.datatypes.RLMChatCompletion",
        "rlm.datatypes.StructuredCompletion[user_structured.Invoice]",
    ] or revealed == [
        "user_structured.Invoice",
        "float",
        "dict[str, Any]",
        "rlm.datatypes.RLMChatCompletion",
        "rlm.datatypes.StructuredCompletion[user_structured.Invoice]",
    ], run.stdout
    errors = [
        line for line in run.stdout.splitlines() if "user_structured.py" in line and "error" in line
    ]
    assert errors == [], run.stdout


# ---------------------------------------------------------------------------
# The pieces: parsing, our own validator, OpenAI's field
# ---------------------------------------------------------------------------


def test_parse_json_answer():
    assert parse_json_answer('{"a": 1}') == ({"a": 1}, None)
    assert parse_json_answer("```json\n[1, 2]\n```") == ([1, 2], None)
    assert parse_json_answer("{'a': True, 'b': None}") == ({"a": True, "b": None}, None)
    assert parse_json_answer('Here it is: {"a": 1}. Done.') == ({"a": 1}, None)
    value, problem = parse_json_answer("no json here")
    assert value is None and "not valid JSON" in (problem or "")
    # Python values JSON cannot hold are not accepted as literals.
    assert parse_json_answer("{1, 2}")[1] is not None


def test_own_validator_covers_the_common_keywords():
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 2},
            "age": {"type": "integer", "minimum": 0},
            "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2},
            "kind": {"enum": ["a", "b"]},
            "child": {"$ref": "#/$defs/Child"},
            "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        },
        "required": ["name", "age"],
        "additionalProperties": False,
        "$defs": {"Child": {"type": "object", "properties": {"n": {"type": "number"}}}},
    }
    good = {"name": "Al", "age": 3, "tags": ["x"], "kind": "a", "child": {"n": 1.5}, "note": None}
    assert own_schema_errors(good, schema) == []
    assert schema_errors(good, schema) == []  # jsonschema's, when it is installed
    assert own_schema_errors({**good, "age": 3.0}, schema) == []  # 3.0 is an integer in JSON
    bad = {
        "name": "A",
        "age": True,
        "tags": ["x", 2, "z"],
        "kind": "c",
        "child": {"n": "1"},
        "note": 5,
        "extra": 1,
    }
    assert len(schema_errors(bad, schema)) >= 7
    problems = own_schema_errors(bad, schema)
    assert "$.name: needs at least 2 characters" in problems
    assert "$.age: expected integer, got boolean true" in problems
    assert "$.tags[1]: expected string, got integer 2" in problems
    assert "$.tags: allows at most 2 items, has 3" in problems
    assert '$.kind: "c" is not one of "a", "b"' in problems
    assert '$.child.n: expected number, got string "1"' in problems
    assert any(p.startswith("$.note: matches none of the allowed forms") for p in problems)
    assert (
        "$: property 'extra' is not allowed (allowed: name, age, tags, kind, child, note)"
        in problems
    )
    assert own_schema_errors([], schema) == ["$: expected object, got array []"]


def test_from_openai_response_format():
    assert from_openai_response_format(None) is None
    assert from_openai_response_format({"type": "text"}) is None
    assert from_openai_response_format({"type": "json_object"}) == {"type": "object"}
    wrapped = {
        "type": "json_schema",
        "json_schema": {"name": "invoice", "strict": True, "schema": INVOICE_SCHEMA},
    }
    assert from_openai_response_format(wrapped) == INVOICE_SCHEMA
    for bad in (
        {"type": "xml"},
        {"type": "json_schema"},
        "json",
        {"type": "json_schema", "json_schema": {"schema": {"type": 1}}},
    ):
        with pytest.raises(ConfigurationError):
            from_openai_response_format(bad)
    # What it returns is what completion() takes.
    assert StructuredAnswer(from_openai_response_format({"type": "json_object"})).check('{"a": 1}')[
        0
    ] == {"a": 1}


# ---------------------------------------------------------------------------
# The example
# ---------------------------------------------------------------------------


def test_example_structured_output_runs_offline():
    run = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "structured_output.py")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "rejected once" in run.stdout
    assert "vendor='Acme Tools'" in run.stdout
    assert "total=1240.0" in run.stdout
