"""Client names, defaults and requests that rlms users rely on.

The requests run through the real SDKs to loopback stub servers (tests/stubs).
For the official OpenAI endpoint, an httpx transport carries the SDK's
``https://api.openai.com`` requests to the stub over real HTTP, so the client
believes it talks to OpenAI. The two ``unittest.mock.patch`` tests check the
seams users patch in their own tests (``rlm.clients.openai.openai`` and
``rlm.clients.portkey.Portkey``): patching them must take effect.
"""

from __future__ import annotations

import asyncio
from unittest.mock import MagicMock, patch

import httpx
import pytest

from rlm.clients import get_client
from rlm.clients.base_lm import BaseLM, Generation
from rlm.core.types import ModelUsageSummary, UsageSummary

try:
    from tests.stubs import StubServer, anthropic_messages, openai_chat
except ImportError:  # pragma: no cover - tests/ on sys.path
    from stubs import StubServer, anthropic_messages, openai_chat

SYSTEM = {"role": "system", "content": "You are the root model."}


class ToStub(httpx.BaseTransport):
    """Sends every request to the stub server, whatever host the SDK addressed."""

    def __init__(self, stub_url: str):
        self.target = httpx.URL(stub_url)
        self.inner = httpx.HTTPTransport()
        self.hosts: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.hosts.append(request.url.host)
        request.url = request.url.copy_with(
            scheme=self.target.scheme, host=self.target.host, port=self.target.port
        )
        request.headers["host"] = f"{self.target.host}:{self.target.port}"
        return self.inner.handle_request(request)


def official_openai(stub: StubServer, **kwargs) -> tuple[BaseLM, ToStub]:
    """An ``openai`` client with no base_url (api.openai.com), answered by ``stub``."""
    transport = ToStub(stub.url)
    client = get_client(
        "openai",
        {"api_key": "sk-test", "max_retries": 0, "http_client": httpx.Client(transport=transport)}
        | kwargs,
    )
    return client, transport


# -- max_tokens -> max_completion_tokens ------------------------------------------------


@pytest.mark.parametrize("model", ["gpt-4o-mini", "o3-mini", "gpt-5"])
def test_max_tokens_becomes_max_completion_tokens_on_api_openai_com(model, monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with StubServer(openai_chat("pong")) as stub:
        client, transport = official_openai(
            stub, model_name=model, sampling_args={"max_tokens": 77, "temperature": None}
        )
        assert client.completion("hi") == "pong"
    assert transport.hosts == ["api.openai.com"]
    body = stub.requests[0].body
    assert body["max_completion_tokens"] == 77
    assert "max_tokens" not in body
    assert "temperature" not in body  # None values are dropped, as rlms does


@pytest.mark.parametrize("model", ["o1", "o3-mini", "o4-mini", "gpt-5-nano", "openai/o3"])
def test_reasoning_models_get_max_completion_tokens_on_any_endpoint(model):
    with StubServer(openai_chat("pong")) as stub:
        client = get_client(
            "vllm",
            {"base_url": f"{stub.url}/v1", "model_name": model, "sampling_args": {"max_tokens": 5}},
        )
        client.completion("hi")
    body = stub.requests[0].body
    assert body["max_completion_tokens"] == 5
    assert "max_tokens" not in body


def test_other_models_on_other_servers_keep_max_tokens():
    # llama.cpp's server, Ollama and older vLLM only read max_tokens.
    with StubServer(openai_chat("pong")) as stub:
        client = get_client(
            "vllm",
            {
                "base_url": f"{stub.url}/v1",
                "model_name": "qwen2.5-coder-1.5b",
                "sampling_args": {"max_tokens": 5, "extra_body": {"top_k": 3}},
            },
        )
        client.completion("hi")
    body = stub.requests[0].body
    assert body["max_tokens"] == 5
    assert "max_completion_tokens" not in body
    assert body["top_k"] == 3  # extra_body is merged into the request body


# -- prompt_cache_key only on the official endpoint -------------------------------------


def test_root_calls_carry_a_prompt_cache_key_on_api_openai_com(monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with StubServer(openai_chat("pong")) as stub:
        client, _ = official_openai(stub, model_name="gpt-4o-mini")
        client.completion([SYSTEM, {"role": "user", "content": "go"}])
    assert stub.requests[0].body["prompt_cache_key"].startswith("rlm-")


def test_no_prompt_cache_key_for_a_custom_base_url():
    with StubServer(openai_chat("pong")) as stub:
        client = get_client(
            "openai", {"api_key": "sk", "model_name": "gpt-4o-mini", "base_url": f"{stub.url}/v1"}
        )
        client.completion([SYSTEM, {"role": "user", "content": "go"}])
    assert "prompt_cache_key" not in stub.requests[0].body


def test_no_prompt_cache_key_for_a_custom_openai_base_url_variable(monkeypatch):
    with StubServer(openai_chat("pong")) as stub:
        monkeypatch.setenv("OPENAI_BASE_URL", f"{stub.url}/v1")
        client = get_client("openai", {"api_key": "sk", "model_name": "gpt-4o-mini"})
        client.completion([SYSTEM, {"role": "user", "content": "go"}])
    assert len(stub.requests) == 1
    assert "prompt_cache_key" not in stub.requests[0].body


# -- rlms' attributes: .client, counters, DEFAULT_* constants ---------------------------


def test_per_model_counters_and_last_call_figures_are_kept_up_to_date():
    with StubServer(openai_chat("pong", prompt_tokens=10, completion_tokens=2)) as stub:
        client = get_client(
            "vllm",
            {
                "base_url": f"{stub.url}/v1",
                "model_name": "house",
                "prices": {"house": {"input": 1.0, "output": 2.0}},
            },
        )
        assert client.model_call_counts == {}
        client.completion("a")
        asyncio.run(client.acompletion("b"))
        client.completion("c", model="other")
    assert client.model_call_counts == {"house": 2, "other": 1}
    assert client.model_input_tokens["house"] == 20
    assert client.model_output_tokens["house"] == 4
    assert client.model_total_tokens["house"] == 24
    assert client.model_costs["house"] == pytest.approx(2 * (10 * 1.0 + 2 * 2.0) / 1e6)
    assert (client.last_prompt_tokens, client.last_completion_tokens) == (10, 2)
    assert client.last_cost is None  # "other" has no price
    assert client.get_last_usage().total_input_tokens == 10


def test_client_attribute_is_the_sdk_client():
    import openai

    client = get_client("vllm", {"base_url": "http://127.0.0.1:9/v1", "model_name": "m"})
    assert isinstance(client.client, openai.OpenAI)
    assert client.client is client.client


def test_default_api_key_constants_exist_where_rlms_defines_them(monkeypatch):
    from rlm.clients import azure_openai, gemini
    from rlm.clients import openai as openai_module

    for name in (
        "DEFAULT_OPENAI_API_KEY",
        "DEFAULT_OPENROUTER_API_KEY",
        "DEFAULT_VERCEL_API_KEY",
        "DEFAULT_PRIME_API_KEY",
        "DEFAULT_PRIME_INTELLECT_BASE_URL",
    ):
        assert hasattr(openai_module, name), name
    assert hasattr(gemini, "DEFAULT_GEMINI_API_KEY")
    assert hasattr(azure_openai, "DEFAULT_AZURE_OPENAI_API_KEY")
    # Setting the constant (as rlms users do in tests) supplies the key.
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setattr(openai_module, "DEFAULT_OPENAI_API_KEY", "sk-from-constant")
    client = get_client("openai", {"model_name": "gpt-4o-mini"})
    assert client._clients.args["api_key"] == "sk-from-constant"


def test_context_limit_constants_of_rlms():
    from rlm.utils import token_utils

    assert token_utils.DEFAULT_CONTEXT_LIMIT == 128_000
    assert token_utils.MODEL_CONTEXT_LIMITS is token_utils.MODEL_CONTEXT_WINDOWS
    assert token_utils.get_context_limit("@openai/gpt-4o-mini") == 128_000
    assert token_utils.get_context_limit("kimi-k2.5") == 262_000
    assert token_utils.get_context_limit("no-such-model") == token_utils.DEFAULT_CONTEXT_LIMIT
    token_utils.MODEL_CONTEXT_LIMITS["my-house-model"] = 4096
    try:
        assert token_utils.get_context_limit("my-house-model") == 4096
    finally:
        del token_utils.MODEL_CONTEXT_LIMITS["my-house-model"]


# -- the seams users patch ----------------------------------------------------------------


def _chat_completion(text: str):
    from openai.types.chat import ChatCompletion

    return ChatCompletion.model_validate(
        {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": "gpt-4o-mini",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": text},
                }
            ],
            "usage": {"prompt_tokens": 4, "completion_tokens": 1, "total_tokens": 5},
        }
    )


def test_patching_rlm_clients_openai_openai_takes_effect():
    from rlm.clients.openai import OpenAIClient

    with patch("rlm.clients.openai.openai") as fake_openai:
        sdk = MagicMock()
        sdk.chat.completions.create.return_value = _chat_completion("patched answer")
        fake_openai.OpenAI.return_value = sdk
        client = OpenAIClient(api_key="sk", model_name="gpt-4o-mini")
    # The patch has ended; the client keeps the SDK it was built under.
    assert client.completion("hi") == "patched answer"
    assert client.client is sdk
    assert sdk.chat.completions.create.call_args.kwargs["messages"] == [
        {"role": "user", "content": "hi"}
    ]
    assert client.model_call_counts["gpt-4o-mini"] == 1


def test_patching_rlm_clients_portkey_portkey_takes_effect():
    from rlm.clients.portkey import PortkeyClient

    with patch("rlm.clients.portkey.Portkey") as fake_portkey:
        sdk = fake_portkey.return_value
        sdk.chat.completions.create.return_value = _chat_completion("through portkey")
        client = PortkeyClient(api_key="pk", model_name="gpt-4o-mini")
        assert client.completion("hi") == "through portkey"
    assert fake_portkey.call_args.kwargs["api_key"] == "pk"
    assert client.client is sdk


# -- defaults as in rlms ----------------------------------------------------------------------


def test_gemini_default_model(monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", "gem")
    client = get_client("gemini", {})
    assert client.model_name == "gemini-2.5-flash"


def test_anthropic_default_max_tokens_on_the_wire():
    with StubServer(anthropic_messages("hello")) as stub:
        client = get_client(
            "anthropic",
            {"model_name": "claude-sonnet-4-5", "base_url": stub.url, "api_key": "k"},
        )
        assert client.max_tokens == 32768
        assert client.completion("hi") == "hello"
        override = get_client(
            "anthropic",
            {
                "model_name": "claude-sonnet-4-5",
                "base_url": stub.url,
                "api_key": "k",
                "sampling_args": {"max_tokens": 100},
            },
        )
        override.completion("hi")
    assert stub.requests[0].body["max_tokens"] == 32768
    assert stub.requests[1].body["max_tokens"] == 100


# -- BaseLM's abstract methods ------------------------------------------------------------


def test_base_lm_cannot_be_instantiated():
    with pytest.raises(TypeError):
        BaseLM(model_name="m")


def test_a_client_missing_rlms_abstract_methods_cannot_be_instantiated():
    class OnlyCompletion(BaseLM):
        def completion(self, prompt, model=None):
            return "x"

    with pytest.raises(TypeError, match="get_usage_summary"):
        OnlyCompletion(model_name="m")


def test_0_1_x_style_and_new_style_clients_instantiate():
    class Legacy(BaseLM):
        def completion(self, prompt, model=None):
            return "legacy"

        async def acompletion(self, prompt, model=None):
            return "legacy"

        def get_usage_summary(self):
            return UsageSummary()

        def get_last_usage(self):
            return ModelUsageSummary()

    class NewStyle(BaseLM):
        def _generate(self, messages, model=None):
            return Generation(text="new", model=model or self.model_name, input_tokens=3)

    assert Legacy(model_name="m").completion("p") == "legacy"
    client = NewStyle(model_name="n")
    assert client.completion("p") == "new"
    assert client.model_call_counts == {"n": 1}
    assert type("Sub", (NewStyle,), {})(model_name="s").completion("p") == "new"
