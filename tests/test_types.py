"""rlm.core.types: dict round trips and QueryMetadata on any context."""

from __future__ import annotations

import json

import pytest

from rlm.core.types import (
    CodeBlock,
    ModelUsageSummary,
    QueryMetadata,
    REPLResult,
    RLMChatCompletion,
    RLMIteration,
    RLMMetadata,
    UsageSummary,
)

# ---------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------


def usage(cost: float | None = 0.25, cached: int = 0) -> UsageSummary:
    return UsageSummary(
        {
            "root-model": ModelUsageSummary(
                total_calls=3,
                total_input_tokens=120,
                total_output_tokens=45,
                total_cost=cost,
                total_cached_tokens=cached,
            ),
            "sub-model": ModelUsageSummary(
                total_calls=7, total_input_tokens=700, total_output_tokens=70
            ),
        }
    )


def completion(**overrides) -> RLMChatCompletion:
    fields = dict(
        root_model="root-model",
        prompt=[{"role": "user", "content": "What is 2+2?"}],
        response="4",
        usage_summary=usage(),
        execution_time=1.5,
    )
    fields.update(overrides)
    return RLMChatCompletion(**fields)


def repl_result(**overrides) -> REPLResult:
    fields = dict(
        stdout="hello\n",
        stderr="",
        locals={"x": 1, "name": "abc", "items": [1, 2, (3, 4)], "m": {"k": None}},
        execution_time=0.01,
        rlm_calls=[completion(prompt="sub prompt", response="sub answer")],
        final_answer=None,
    )
    fields.update(overrides)
    return REPLResult(**fields)


def assert_json_safe(data) -> None:
    """Every to_dict() ends up in a JSON line or a frame; it must serialise as is."""
    json.dumps(data, allow_nan=True)


# ---------------------------------------------------------------------------
# Usage
# ---------------------------------------------------------------------------


def test_model_usage_summary_round_trip_with_cost_and_cached_tokens():
    summary = ModelUsageSummary(
        total_calls=2,
        total_input_tokens=10,
        total_output_tokens=5,
        total_cost=0.003,
        total_cached_tokens=4,
    )
    data = summary.to_dict()
    assert data == {
        "total_calls": 2,
        "total_input_tokens": 10,
        "total_output_tokens": 5,
        "total_cost": 0.003,
        "total_cached_tokens": 4,
    }
    assert ModelUsageSummary.from_dict(data) == summary
    assert ModelUsageSummary.from_dict(json.loads(json.dumps(data))) == summary


def test_model_usage_summary_unknown_cost_stays_none():
    summary = ModelUsageSummary(total_calls=1, total_input_tokens=3, total_output_tokens=4)
    data = summary.to_dict()
    # The 0.1.x shape: three keys, cost omitted when unknown (not 0.0).
    assert data == {"total_calls": 1, "total_input_tokens": 3, "total_output_tokens": 4}
    back = ModelUsageSummary.from_dict(data)
    assert back.total_cost is None
    assert back.total_cached_tokens == 0
    assert back == summary


def test_model_usage_summary_zero_cost_is_not_unknown():
    summary = ModelUsageSummary(total_calls=1, total_cost=0.0)
    back = ModelUsageSummary.from_dict(summary.to_dict())
    assert back.total_cost == 0.0
    assert back.total_cost is not None


def test_model_usage_summary_from_reference_dict_with_nulls():
    back = ModelUsageSummary.from_dict(
        {"total_calls": None, "total_input_tokens": 5, "total_output_tokens": None}
    )
    assert back == ModelUsageSummary(total_calls=0, total_input_tokens=5, total_output_tokens=0)


def test_model_usage_summary_add_keeps_unknown_cost_unknown():
    a = ModelUsageSummary(total_calls=1, total_input_tokens=1)
    a.add(ModelUsageSummary(total_calls=2, total_output_tokens=3, total_cached_tokens=1))
    assert a == ModelUsageSummary(
        total_calls=3, total_input_tokens=1, total_output_tokens=3, total_cached_tokens=1
    )
    assert a.total_cost is None
    a.add(ModelUsageSummary(total_calls=1, total_cost=0.5))
    assert a.total_cost == 0.5


def test_usage_summary_round_trip_and_totals():
    summary = usage(cost=0.25, cached=6)
    data = summary.to_dict()
    assert_json_safe(data)
    assert set(data["model_usage_summaries"]) == {"root-model", "sub-model"}
    assert data["total_cost"] == 0.25
    assert data["model_usage_summaries"]["root-model"]["total_cached_tokens"] == 6
    back = UsageSummary.from_dict(json.loads(json.dumps(data)))
    assert back == summary
    assert back.to_dict() == data
    assert back.total_calls == 10
    assert back.total_input_tokens == 820
    assert back.total_output_tokens == 115
    assert back.total_tokens == 935
    assert back.total_cached_tokens == 6


def test_usage_summary_total_cost_none_when_no_model_knows_its_cost():
    summary = usage(cost=None)
    assert summary.total_cost is None
    data = summary.to_dict()
    assert "total_cost" not in data
    back = UsageSummary.from_dict(data)
    assert back.total_cost is None
    assert all(s.total_cost is None for s in back.model_usage_summaries.values())


def test_usage_summary_from_empty_or_none():
    assert UsageSummary.from_dict(None) == UsageSummary()
    assert UsageSummary.from_dict({}) == UsageSummary()
    assert UsageSummary().to_dict() == {"model_usage_summaries": {}}
    assert UsageSummary().total_cost is None
    assert UsageSummary().total_tokens == 0


def test_usage_summary_merge_adds_per_model_without_mutating():
    a = usage(cost=0.25)
    b = UsageSummary(
        {
            "sub-model": ModelUsageSummary(total_calls=1, total_input_tokens=1, total_cost=0.5),
            "third": ModelUsageSummary(total_calls=1),
        }
    )
    merged = a.merge(b)
    assert merged.model_usage_summaries["sub-model"].total_calls == 8
    assert merged.model_usage_summaries["sub-model"].total_cost == 0.5
    assert merged.model_usage_summaries["third"].total_calls == 1
    assert merged.total_cost == 0.75
    # The inputs are unchanged.
    assert a == usage(cost=0.25)
    assert b.model_usage_summaries["sub-model"].total_calls == 1


# ---------------------------------------------------------------------------
# Completions
# ---------------------------------------------------------------------------


def test_rlm_chat_completion_round_trip_minimal():
    original = completion()
    data = original.to_dict()
    assert set(data) == {"root_model", "prompt", "response", "usage_summary", "execution_time"}
    assert_json_safe(data)
    back = RLMChatCompletion.from_dict(json.loads(json.dumps(data)))
    assert back == original
    assert back.metadata is None
    assert back.error is None


def test_rlm_chat_completion_round_trip_with_error_and_metadata():
    metadata = {
        "run_metadata": {"root_model": "root-model", "max_depth": 1},
        "iterations": [{"type": "iteration", "iteration": 1, "response": "x"}],
    }
    original = completion(response="", metadata=metadata, error="TimeoutExceededError: 3s")
    data = original.to_dict()
    assert data["metadata"] == metadata
    assert data["error"] == "TimeoutExceededError: 3s"
    back = RLMChatCompletion.from_dict(json.loads(json.dumps(data)))
    assert back == original
    assert back.usage_summary.total_cost == 0.25


@pytest.mark.parametrize(
    "prompt",
    ["plain", ["a", "b"], [{"role": "user", "content": "x"}], {"doc": "text", "n": 3}, None],
)
def test_rlm_chat_completion_keeps_any_json_prompt(prompt):
    original = completion(prompt=prompt)
    assert RLMChatCompletion.from_dict(json.loads(json.dumps(original.to_dict()))) == original


# ---------------------------------------------------------------------------
# REPL results, code blocks, iterations
# ---------------------------------------------------------------------------


def test_repl_result_round_trip():
    original = repl_result(final_answer="done", error=None)
    data = original.to_dict()
    assert set(data) == {
        "stdout",
        "stderr",
        "locals",
        "execution_time",
        "rlm_calls",
        "final_answer",
    }
    assert_json_safe(data)
    assert data["locals"]["items"] == [1, 2, [3, 4]]
    assert data["rlm_calls"][0]["response"] == "sub answer"
    back = REPLResult.from_dict(json.loads(json.dumps(data)))
    assert back.to_dict() == data
    assert back == original
    assert back.final_answer == "done"
    assert back.rlm_calls[0] == original.rlm_calls[0]
    assert back.llm_calls is back.rlm_calls  # the 0.1.x alias


def test_repl_result_error_written_only_when_set():
    failed = repl_result(stderr="Traceback...\nZeroDivisionError", error="ZeroDivisionError")
    data = failed.to_dict()
    assert data["error"] == "ZeroDivisionError"
    assert REPLResult.from_dict(data).error == "ZeroDivisionError"
    assert "error" not in repl_result().to_dict()


def test_repl_result_positional_signature_of_the_reference():
    result = REPLResult("out", "err", {"a": 1}, 0.5)
    assert (result.stdout, result.stderr, result.locals, result.execution_time) == (
        "out",
        "err",
        {"a": 1},
        0.5,
    )
    assert result.rlm_calls == []
    assert result.final_answer is None


def test_repl_result_serialises_unjsonable_locals():
    class Opaque:
        def __repr__(self) -> str:
            return "<Opaque thing>"

    class BrokenRepr:
        def __repr__(self) -> str:
            raise RuntimeError("no repr for you")

    def helper():
        return 1

    cyclic: list = [1]
    cyclic.append(cyclic)
    nested: dict = {"k": 1}
    nested["self"] = nested
    result = repl_result(
        locals={
            "obj": Opaque(),
            "broken": BrokenRepr(),
            "fn": helper,
            "json_mod": json,
            "blob": b"\x00\xff",
            "keys": {1: "int key", (2, 3): "tuple key"},
            "cyclic": cyclic,
            "nested": nested,
        }
    )
    data = result.to_dict()
    assert_json_safe(data)
    locals_ = data["locals"]
    assert locals_["obj"] == "<Opaque thing>"
    assert "BrokenRepr" in locals_["broken"]
    assert "helper" in locals_["fn"]
    assert "json" in locals_["json_mod"]
    assert locals_["keys"] == {"1": "int key", "(2, 3)": "tuple key"}
    assert locals_["cyclic"][0] == 1
    assert locals_["nested"]["k"] == 1
    assert REPLResult.from_dict(json.loads(json.dumps(data))).to_dict() == data


def test_code_block_round_trip():
    block = CodeBlock(code="x = 1\nprint(x)", result=repl_result(stdout="1\n"))
    data = block.to_dict()
    assert set(data) == {"code", "result"}
    back = CodeBlock.from_dict(json.loads(json.dumps(data)))
    assert back.code == block.code
    assert back.result == block.result
    assert back.to_dict() == data


def test_rlm_iteration_round_trip():
    iteration = RLMIteration(
        prompt=[{"role": "system", "content": "sys"}, {"role": "user", "content": "go"}],
        response="```repl\nx = 1\n```",
        code_blocks=[
            CodeBlock(code="x = 1", result=repl_result(stdout="")),
            CodeBlock(code="print(x)", result=repl_result(stdout="1\n", final_answer="1")),
        ],
        final_answer="1",
        iteration_time=0.2,
    )
    data = iteration.to_dict()
    assert set(data) == {"prompt", "response", "code_blocks", "final_answer", "iteration_time"}
    assert_json_safe(data)
    back = RLMIteration.from_dict(json.loads(json.dumps(data)))
    assert back.to_dict() == data
    assert [b.code for b in back.code_blocks] == ["x = 1", "print(x)"]
    assert back.code_blocks[1].result.final_answer == "1"
    assert back.final_answer == "1"
    assert back.iteration_time == 0.2


def test_rlm_iteration_without_blocks_or_answer():
    iteration = RLMIteration(prompt="p", response="thinking", code_blocks=[])
    back = RLMIteration.from_dict(iteration.to_dict())
    assert back == iteration


# ---------------------------------------------------------------------------
# Run metadata
# ---------------------------------------------------------------------------


def test_rlm_metadata_round_trip():
    metadata = RLMMetadata(
        root_model="gpt-5-nano",
        max_depth=2,
        max_iterations=30,
        backend="openai",
        backend_kwargs={"model_name": "gpt-5-nano", "timeout": 30.0},
        environment_type="local",
        environment_kwargs={"setup_code": "import math", "cell_timeout": None},
        other_backends=["anthropic"],
    )
    data = metadata.to_dict()
    assert set(data) == {
        "root_model",
        "max_depth",
        "max_iterations",
        "backend",
        "backend_kwargs",
        "environment_type",
        "environment_kwargs",
        "other_backends",
    }
    back = RLMMetadata.from_dict(json.loads(json.dumps(data)))
    assert back == metadata


def test_rlm_metadata_round_trip_keeps_zero_values():
    metadata = RLMMetadata(
        root_model="m",
        max_depth=0,
        max_iterations=0,
        backend="scripted",
        backend_kwargs={},
        environment_type="local",
        environment_kwargs={},
    )
    back = RLMMetadata.from_dict(metadata.to_dict())
    assert back == metadata
    assert back.other_backends is None


def test_rlm_metadata_serialises_unjsonable_kwargs():
    metadata = RLMMetadata(
        root_model="m",
        max_depth=1,
        max_iterations=3,
        backend="scripted",
        backend_kwargs={"responses": lambda messages: "x", "model_name": "m"},
        environment_type="local",
        environment_kwargs={"custom_tools": {"f": print}},
    )
    data = metadata.to_dict()
    assert_json_safe(data)
    assert data["backend_kwargs"]["model_name"] == "m"
    assert isinstance(data["backend_kwargs"]["responses"], str)


# ---------------------------------------------------------------------------
# QueryMetadata: any context, never a crash
# ---------------------------------------------------------------------------


def check_query_metadata(meta: QueryMetadata) -> None:
    assert meta.context_total_length == sum(meta.context_lengths)
    assert all(isinstance(n, int) and n >= 0 for n in meta.context_lengths)
    data = meta.to_dict()
    assert set(data) == {"context_lengths", "context_total_length", "context_type"}
    assert_json_safe(data)


def test_query_metadata_str():
    meta = QueryMetadata("hello world")
    check_query_metadata(meta)
    assert meta.context_type == "str"
    assert meta.context_lengths == [11]
    assert meta.context_total_length == 11


def test_query_metadata_empty_str():
    meta = QueryMetadata("")
    check_query_metadata(meta)
    assert meta.context_lengths == [0]


def test_query_metadata_bytes():
    meta = QueryMetadata(b"\x00\x01\x02\xff")
    check_query_metadata(meta)
    assert meta.context_type == "bytes"
    assert meta.context_total_length == 4


def test_query_metadata_list_of_str():
    meta = QueryMetadata(["ab", "cde", ""])
    check_query_metadata(meta)
    assert meta.context_type == "list"
    assert meta.context_lengths == [2, 3, 0]
    assert meta.context_total_length == 5


def test_query_metadata_list_of_messages_counts_content():
    messages = [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "Hi"},
    ]
    meta = QueryMetadata(messages)
    check_query_metadata(meta)
    assert meta.context_type == "list"
    assert meta.context_lengths == [16, 2]


def test_query_metadata_list_of_mixed_objects():
    class Thing:
        def __repr__(self) -> str:
            return "Thing()"

    mixed = ["text", b"by", 42, None, {"role": "user", "content": "abc"}, [1, 2], Thing(), 1.5]
    meta = QueryMetadata(mixed)
    check_query_metadata(meta)
    assert meta.context_type == "list"
    assert len(meta.context_lengths) == len(mixed)
    assert meta.context_lengths[0] == 4
    assert meta.context_lengths[1] == 2
    assert meta.context_lengths[4] == 3
    assert meta.context_lengths[6] > 0  # measured through its repr


def test_query_metadata_dict_with_nested_objects():
    class Node:
        def __init__(self, child=None):
            self.child = child

    cyclic: list = []
    cyclic.append(cyclic)
    context = {
        "doc": "abcdef",
        "nested": {"a": [1, 2, {"b": Node(Node())}]},
        "numbers": list(range(10)),
        "cyclic": cyclic,
        (1, 2): "tuple key",
    }
    meta = QueryMetadata(context)
    check_query_metadata(meta)
    assert meta.context_type == "dict"
    assert len(meta.context_lengths) == len(context)
    assert meta.context_lengths[0] == 6
    assert all(n > 0 for n in meta.context_lengths)


def test_query_metadata_object_whose_repr_raises():
    class Hostile:
        def __repr__(self) -> str:
            raise RuntimeError("repr exploded")

        __str__ = __repr__

    for context in (Hostile(), [Hostile(), "ok"], {"x": Hostile()}):
        meta = QueryMetadata(context)
        check_query_metadata(meta)
    assert QueryMetadata(Hostile()).context_type == "Hostile"
    assert QueryMetadata([Hostile(), "ok"]).context_lengths[1] == 2


def test_query_metadata_empty_containers():
    meta = QueryMetadata([])
    check_query_metadata(meta)
    assert meta.context_type == "list"
    assert meta.context_lengths == [0]
    assert meta.context_total_length == 0

    meta = QueryMetadata({})
    check_query_metadata(meta)
    assert meta.context_type == "dict"
    assert meta.context_total_length == 0


def test_query_metadata_other_scalars_and_deep_nesting():
    deep: list = []
    cursor = deep
    for _ in range(5000):
        cursor.append([])
        cursor = cursor[0]
    for context in (12345, 3.5, None, (1, "two"), deep, range(3)):
        check_query_metadata(QueryMetadata(context))
    assert QueryMetadata(12345).context_lengths == [5]


def test_repl_result_is_a_dataclass_with_the_reference_str():
    import dataclasses

    result = REPLResult(stdout="test", stderr="warn", locals={"x": 1}, execution_time=0.5)
    assert dataclasses.is_dataclass(result)
    names = [f.name for f in dataclasses.fields(REPLResult)]
    assert names[:3] == ["stdout", "stderr", "locals"]
    assert str(result) == (
        "REPLResult(stdout=test, stderr=warn, locals={'x': 1}, execution_time=0.5, rlm_calls=0)"
    )
    # repr stays short: a namespace can hold the whole context.
    big = REPLResult(stdout="", stderr="", locals={"context": "x" * 100_000})
    assert len(repr(big)) < 400
    assert REPLResult("a", "", {}, rlm_calls=None).rlm_calls == []
    assert dataclasses.replace(result, stdout="other").stdout == "other"
