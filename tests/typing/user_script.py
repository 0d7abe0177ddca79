"""A user's script, type-checked by tests/test_typing.py with ``mypy --strict``.

It is never run; each ``reveal_type`` line ends with the type mypy must report.
"""

from __future__ import annotations

from typing import reveal_type

from rlm import RLM, BudgetExceededError, TimeoutExceededError
from rlm.clients import BaseLM, get_client, parse_model_string
from rlm.core.types import RLMChatCompletion, UsageSummary
from rlm.logger import RLMLogger
from rlm.utils.parsing import find_code_blocks


def ask(question: str, text: str) -> str:
    rlm = RLM(
        backend="openai",
        backend_kwargs={"model_name": "gpt-4o-mini"},
        max_iterations=5,
        max_budget=0.5,
        logger=RLMLogger(log_dir="logs"),
    )
    try:
        result = rlm.completion(text, root_prompt=question)
    except (BudgetExceededError, TimeoutExceededError) as exc:
        return str(exc)
    finally:
        rlm.close()
    reveal_type(result)  # R: rlm.datatypes.RLMChatCompletion
    reveal_type(result.response)  # R: str
    reveal_type(result.usage_summary)  # R: rlm.datatypes.UsageSummary
    reveal_type(result.execution_time)  # R: float
    usage: UsageSummary = result.usage_summary
    reveal_type(usage.total_calls)  # R: int
    record: RLMChatCompletion = result
    return record.response


def client() -> BaseLM:
    lm = get_client("scripted", {"responses": ["FINAL(1)"]})
    reveal_type(lm)  # R: rlm.clients.base_lm.BaseLM
    reveal_type(lm.completion("hi"))  # R: str
    reveal_type(parse_model_string("openai/gpt-4o"))  # R: tuple[str, str | None]
    reveal_type(find_code_blocks("```repl\nx = 1\n```"))  # R: list[str]
    return lm


async def ask_async(text: str) -> str:
    with RLM(backend="openai", backend_kwargs={"model_name": "gpt-4o-mini"}) as rlm:
        result = await rlm.acompletion(text)
    reveal_type(result)  # R: rlm.datatypes.RLMChatCompletion
    return result.response
