"""max_budget refuses models whose price is unknown, unless priced or opted out (issue 10)."""

from __future__ import annotations

import pytest

from rlm.clients.base_lm import Generation
from rlm.clients.pricing import (
    UNPRICED,
    PriceBook,
    check_budget_prices,
    unpriced_models,
)
from rlm.clients.scripted import ScriptedLM
from rlm.utils.exceptions import ConfigurationError


def test_unknown_price_is_refused_with_both_fixes_named():
    with pytest.raises(ConfigurationError) as info:
        check_budget_prices([("vllm", {"model_name": "house-model", "base_url": "http://x"})])
    message = str(info.value)
    assert "'house-model'" in message and "'prices'" in message and "'unpriced'" in message
    assert isinstance(info.value, ValueError)  # old except clauses still catch it


@pytest.mark.parametrize(
    "config",
    [
        (
            "vllm",
            {"model_name": "house-model", "prices": {"house-model": {"input": 1, "output": 2}}},
        ),
        ("vllm", {"model_name": "house-model", "prices": {"house-model": UNPRICED}}),
        ("vllm", {"model_name": "house-model", "prices": {"*": UNPRICED}}),
        ("openai", {"model_name": "gpt-4o-mini"}),
        ("anthropic", {"model_name": "claude-3-5-haiku-latest"}),
        ("scripted", {"responses": ["x"]}),
        ("llama_cpp", {"model_path": "m.gguf"}),
    ],
)
def test_priced_free_or_opted_out_models_pass(config):
    check_budget_prices([config])


def test_every_configured_client_is_checked():
    configs = [
        ("openai", {"model_name": "gpt-4o-mini"}),
        ("openai", {"model_name": "my-finetune-xyz"}),
        ("vllm", {"model_name": "house-model"}),
    ]
    assert unpriced_models(configs) == ["my-finetune-xyz", "house-model"]
    check_budget_prices(configs, allow_unpriced=True)  # the run-wide opt-out


def test_built_clients_are_checked_by_knows_price():
    assert unpriced_models([ScriptedLM(responses=["x"])]) == []

    class Legacy:  # a 0.1.x-style client without knows_price: it reports its own cost
        model_name = "legacy"

    assert unpriced_models([Legacy()]) == []


def test_unpriced_calls_cost_nothing_known_and_typos_fail_early():
    book = PriceBook({"house-model": UNPRICED, "paid": {"input": 1.0, "output": 2.0}})
    assert book.knows("house-model") and book.opted_out("house-model")
    gen = Generation(text="", model="house-model", input_tokens=10, output_tokens=10)
    assert book.cost(gen) is None
    paid = Generation(text="", model="paid", input_tokens=1_000_000, output_tokens=0)
    assert book.cost(paid) == pytest.approx(1.0)
    with pytest.raises(ConfigurationError):
        check_budget_prices([("vllm", {"model_name": "m", "prices": {"m": "free-ish"}})])
