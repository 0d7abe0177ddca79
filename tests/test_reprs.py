"""Bounded reprs: a 10 MB prompt or context never reaches repr(); the data stays whole."""

from __future__ import annotations

from rlm.core.types import (
    CodeBlock,
    ModelUsageSummary,
    REPLResult,
    RLMChatCompletion,
    RLMIteration,
    UsageSummary,
)

BIG = "x" * 10_000_000
LIMIT = 500  # "a few hundred characters"


def usage():
    return UsageSummary(
        {f"model-{i}-" + "n" * 200: ModelUsageSummary(1, 10, 2, 0.01) for i in range(50)}
    )


def test_completion_repr_is_bounded_and_the_data_is_whole():
    prompt = [{"role": "user", "content": BIG}] * 3
    result = RLMChatCompletion("m" * 1000, prompt, BIG, usage(), 1.5, {"k": BIG}, BIG)
    text = repr(result)
    assert len(text) < LIMIT, text
    assert text.startswith("RLMChatCompletion(") and "10,000,000 chars" in text
    assert result.response == BIG and result.prompt[0]["content"] == BIG
    assert result.to_dict()["response"] == BIG


def test_iteration_repl_result_and_usage_reprs_are_bounded():
    block = CodeBlock(BIG, REPLResult(BIG, BIG, {"context": BIG}, 0.1, final_answer=BIG))
    iteration = RLMIteration({"p": BIG}, BIG, [block] * 1000, BIG, 2.0, usage())
    for value in (iteration, block.result, usage(), ModelUsageSummary(3, 4, 5, None, 1)):
        assert len(repr(value)) < LIMIT, repr(value)
    assert "code_blocks=1000" in repr(iteration)
    assert iteration.to_dict()["code_blocks"][0]["code"] == BIG


def test_repl_result_str_stays_as_rlms_writes_it():
    result = REPLResult(stdout="test", stderr="warn", locals={"x": 1}, execution_time=0.5)
    assert str(result) == (
        "REPLResult(stdout=test, stderr=warn, locals={'x': 1}, execution_time=0.5, rlm_calls=0)"
    )
