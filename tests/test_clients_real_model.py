"""The OpenAI and LiteLLM clients against the real local model (llama_cpp.server).

Skipped when the model is not fetched, unless RLM_REQUIRE_REAL_MODEL=1 (as in CI).
Prompts and answers are kept to a few dozen tokens.
"""

from __future__ import annotations

import asyncio
import importlib.util

import pytest

from rlm import RLM, BudgetExceededError
from rlm.clients import get_client
from rlm.clients.llama_cpp import model_name_from_path

try:
    from tests.llama_server import llama_server, real_model_or_skip
except ImportError:  # pragma: no cover - tests/ on sys.path
    from llama_server import llama_server, real_model_or_skip

SERVER_MODULES = ("fastapi", "uvicorn", "sse_starlette", "pydantic_settings")
SAMPLING = {"temperature": 0, "max_tokens": 16}
PROMPT = [
    {"role": "system", "content": "Answer with one word."},
    {"role": "user", "content": "What is the capital of France?"},
]


@pytest.fixture(scope="module")
def server():
    path = real_model_or_skip(*SERVER_MODULES)
    with llama_server(path, n_ctx=4096) as base_url:
        yield base_url, model_name_from_path(path)


@pytest.mark.real_model
def test_openai_client_text_and_usage_from_the_real_server(server):
    base_url, model = server
    client = get_client(
        "vllm", {"model_name": model, "base_url": base_url, "sampling_args": SAMPLING}
    )
    generation = client.generate(PROMPT)
    assert "paris" in generation.text.lower()
    assert generation.input_tokens > 10 and 0 < generation.output_tokens <= 16
    assert generation.cost is None  # a self-hosted model has no list price: unknown, not $0
    batched = asyncio.run(client.agenerate("Say yes."))
    assert batched.output_tokens > 0


@pytest.mark.real_model
def test_litellm_client_against_the_real_server(server):
    if importlib.util.find_spec("litellm") is None:
        pytest.skip("litellm is not installed")
    base_url, model = server
    client = get_client(
        "litellm",
        {"model_name": f"openai/{model}", "api_base": base_url, "sampling_args": SAMPLING},
    )
    generation = client.generate(PROMPT)
    assert "paris" in generation.text.lower()
    assert generation.input_tokens > 10 and generation.output_tokens > 0
    assert generation.cost is None  # LiteLLM has no price for it either
    again = asyncio.run(client.agenerate(PROMPT))
    assert again.text == generation.text  # temperature 0


@pytest.mark.real_model
def test_a_real_run_stops_on_budget_with_user_prices(server):
    base_url, model = server
    rlm = RLM(
        backend="vllm",
        backend_kwargs={
            "model_name": model,
            "base_url": base_url,
            # Absurd prices so the first root call alone crosses the budget.
            "prices": {model: {"input": 1_000.0, "output": 1_000.0}},
        },
        sampling_args={"temperature": 0, "max_tokens": 48},
        max_budget=0.01,
        max_iterations=3,
    )
    with pytest.raises(BudgetExceededError) as caught:
        rlm.completion("The secret number is 7.")
    assert caught.value.spent > 0.01
