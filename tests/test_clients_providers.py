"""Every provider client against a loopback stub of its wire format.

The real SDKs run: they build the requests (the stub records them) and parse
the stub's replies. Faults (429 with Retry-After, 500, slow answers, malformed
bodies, 400) are injected by the stub; the SDKs' own retry machinery handles
them. Nothing here patches the code under test.
"""

from __future__ import annotations

import asyncio
import importlib.util
import io
import sys

import pytest
from rich.console import Console

from rlm import RLM, BudgetExceededError
from rlm.clients import get_client
from rlm.logger import VerbosePrinter
from rlm.utils.exceptions import ConfigurationError

try:
    from tests.stubs import (
        Fault,
        StubServer,
        anthropic_messages,
        gemini_generate,
        openai_chat,
    )
except ImportError:  # pragma: no cover - tests/ on sys.path
    from stubs import Fault, StubServer, anthropic_messages, gemini_generate, openai_chat

genai_prices = pytest.importorskip("genai_prices")
pytest.importorskip("anthropic")
pytest.importorskip("google.genai")
if importlib.util.find_spec("litellm") is None:  # not imported here: rlm sets its env first
    pytest.skip("litellm is not installed", allow_module_level=True)
pytest.importorskip("portkey_ai")

FAST = {"max_retries": 2, "timeout": 20}


def table_cost(model, provider, input_tokens, output_tokens, cache_read=0, cache_write=0):
    usage = genai_prices.Usage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cache_read_tokens=cache_read or None,
        cache_write_tokens=cache_write or None,
    )
    return float(genai_prices.calc_price(usage, model_ref=model, provider_id=provider).total_price)


# -- one entry per backend: how to build it against a stub, and what its wire looks like ---


def openai_kwargs(url):
    return {"model_name": "gpt-4o-mini", "base_url": f"{url}/v1", "api_key": "sk-test"}


def azure_kwargs(url):
    return {
        "model_name": "my-deployment",
        "azure_endpoint": url,
        "api_version": "2024-10-21",
        "api_key": "az-test",
        "prices": {"my-deployment": {"input": 2.5, "output": 10.0, "cached_input": 1.25}},
    }


def anthropic_kwargs(url):
    return {"model_name": "claude-sonnet-4-5", "base_url": url, "api_key": "ant-test"}


def gemini_kwargs(url):
    return {
        "model_name": "gemini-2.5-flash",
        "base_url": url,
        "api_key": "gem-test",
        "retry_initial_delay": 0.05,
        "retry_max_delay": 0.2,
    }


def litellm_kwargs(url):
    return {"model_name": "openai/gpt-4o-mini", "api_base": f"{url}/v1", "api_key": "sk-test"}


def portkey_kwargs(url):
    return {
        "model_name": "gpt-4o-mini",
        "base_url": f"{url}/v1",
        "api_key": "pk-test",
        "virtual_key": "vk-openai",
        "provider": "openai",
    }


def vllm_kwargs(url):
    return {
        "model_name": "qwen-local",
        "base_url": f"{url}/v1",
        "prices": {"qwen-local": {"input": 1.0, "output": 2.0}},
    }


def openrouter_kwargs(url):
    return {"model_name": "anthropic/claude-sonnet-4.5", "base_url": f"{url}/v1", "api_key": "or"}


def vercel_kwargs(url):
    return {
        "model_name": "openai/gpt-4o-mini",
        "base_url": f"{url}/v1",
        "api_key": "vc",
        "prices": {"openai/gpt-4o-mini": {"input": 0.15, "output": 0.6}},
    }


OPENAI_LIKE = {"openai", "azure_openai", "litellm", "portkey", "vllm", "openrouter", "vercel"}
BACKENDS = {
    "openai": openai_kwargs,
    "azure_openai": azure_kwargs,
    "anthropic": anthropic_kwargs,
    "gemini": gemini_kwargs,
    "litellm": litellm_kwargs,
    "portkey": portkey_kwargs,
    "vllm": vllm_kwargs,
    "openrouter": openrouter_kwargs,
    "vercel": vercel_kwargs,
}


def responder(backend, reply="pong", **usage):
    if backend == "anthropic":
        return anthropic_messages(reply, **usage)
    if backend == "gemini":
        return gemini_generate(reply, **usage)
    return openai_chat(reply, **usage)


def anthropic_key(request):
    """The key as the installed SDK sends it: ``x-api-key`` (classic) or a Bearer token."""
    headers = request.headers
    return headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ")


def make(backend, url, **extra):
    return get_client(backend, {**BACKENDS[backend](url), **FAST, **extra})


# -- requests on the wire ----------------------------------------------------------------


def test_root_loop_calls_carry_a_stable_prompt_cache_key():
    with StubServer(openai_chat("pong", 100, 5)) as stub:
        client = make("openai", stub.url, auto_prompt_cache_key=True)
        system = {"role": "system", "content": "You are the root model."}
        client.generate([system, {"role": "user", "content": "turn 1"}])
        client.generate(
            [system, {"role": "user", "content": "turn 1"}, {"role": "user", "content": "2"}]
        )
        client.generate("a plain sub-call")
    first, second, sub = (r.body for r in stub.requests)
    assert first["prompt_cache_key"].startswith("rlm-")
    assert second["prompt_cache_key"] == first["prompt_cache_key"]  # same stable prefix
    assert "prompt_cache_key" not in sub


def test_max_budget_refuses_a_model_without_a_price_at_the_first_completion():
    # Constructing needs no client (as in rlms); the run refuses before any model call.
    unpriced = RLM(
        backend="vllm",
        backend_kwargs={"model_name": "house-model", "base_url": "http://127.0.0.1:9/v1"},
        max_budget=1.0,
    )
    with pytest.raises(ConfigurationError, match="no price is known for 'house-model'"):
        unpriced.completion("q")
    # A price, or an explicit opt-out, lifts the refusal (the port is closed, so the
    # run then fails on the connection: it got past the check).
    for prices in ({"house-model": {"input": 0.1, "output": 0.2}}, {"house-model": "unpriced"}):
        priced = RLM(
            backend="vllm",
            backend_kwargs={
                "model_name": "house-model",
                "base_url": "http://127.0.0.1:9/v1",
                "prices": prices,
                "max_retries": 0,
            },
            max_budget=1.0,
        )
        with pytest.raises(Exception) as info:
            priced.completion("q")
        assert not isinstance(info.value, ConfigurationError)


def test_openai_request_usage_and_table_price():
    with StubServer(openai_chat("pong", 1200, 30, cached_tokens=1024)) as stub:
        client = make("openai", stub.url, prompt_cache_key="rlm-root")
        client.sampling_args = {"temperature": 0.2, "max_tokens": 64}
        generation = client.generate([{"role": "system", "content": "S"}, "hi"][1:])
    request = stub.requests[0]
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-test"
    assert request.body["model"] == "gpt-4o-mini"
    assert request.body["messages"] == [{"role": "user", "content": "hi"}]
    assert (request.body["temperature"], request.body["max_tokens"]) == (0.2, 64)
    assert request.body["prompt_cache_key"] == "rlm-root"
    assert (generation.text, generation.input_tokens, generation.output_tokens) == (
        "pong",
        1200,
        30,
    )
    assert generation.cached_tokens == 1024
    assert generation.cost == pytest.approx(table_cost("gpt-4o-mini", "openai", 1200, 30, 1024))
    summary = client.get_usage_summary().model_usage_summaries["gpt-4o-mini"]
    assert (summary.total_calls, summary.total_cached_tokens) == (1, 1024)


def test_provider_reported_cost_wins_over_the_table():
    with StubServer(openai_chat("pong", 100, 10, cost=0.125)) as stub:
        generation = make("openrouter", stub.url).generate("hi")
    assert generation.cost == 0.125


def test_unknown_price_is_unknown_not_zero_and_an_override_prices_it():
    with StubServer(openai_chat("pong", 1_000_000, 500_000)) as stub:
        unpriced = get_client("vllm", {"model_name": "qwen-local", "base_url": f"{stub.url}/v1"})
        assert unpriced.generate("hi").cost is None
        assert unpriced.get_usage_summary().total_cost is None
        priced = make("vllm", stub.url)  # prices: input 1.0, output 2.0 USD per million
        assert priced.generate("hi").cost == pytest.approx(1.0 + 1.0)


def test_bad_price_override_fails_at_construction():
    with pytest.raises(ConfigurationError, match="cached_inptu"):
        get_client(
            "vllm",
            {
                "model_name": "m",
                "base_url": "http://127.0.0.1:9/v1",
                "prices": {"m": {"input": 1, "output": 1, "cached_inptu": 1}},
            },
        )


def test_azure_deployment_url_api_version_and_api_key_header():
    with StubServer(openai_chat("pong", 100, 10, cached_tokens=64)) as stub:
        generation = make("azure_openai", stub.url).generate("hi")
    request = stub.requests[0]
    assert request.path == "/openai/deployments/my-deployment/chat/completions"
    assert request.query["api-version"] == ["2024-10-21"]
    assert request.headers["api-key"] == "az-test"
    assert "authorization" not in request.headers
    assert generation.cached_tokens == 64
    assert generation.cost == pytest.approx((36 * 2.5 + 64 * 1.25 + 10 * 10.0) / 1e6)


def test_anthropic_system_placement_cache_markers_and_usage():
    with StubServer(anthropic_messages("pong", 40, 7, cache_read=2000, cache_write=300)) as stub:
        client = make("anthropic", stub.url, sampling_args={"temperature": 0.0})
        messages = [
            {"role": "system", "content": "You are the root."},
            {"role": "user", "content": "context"},
            {"role": "assistant", "content": "```repl\nprint(1)\n```"},
            {"role": "user", "content": "turn 2"},
        ]
        generation = client.generate(messages)
        client.generate("a sub-call")  # no system message: no cache markers
    root, sub = stub.requests
    assert root.path == "/v1/messages"
    assert anthropic_key(root) == "ant-test"
    assert root.headers["anthropic-version"]
    assert root.body["model"] == "claude-sonnet-4-5"
    assert root.body["temperature"] == 0.0
    assert root.body["max_tokens"] == 32768  # rlms' default
    assert root.body["system"] == [
        {"type": "text", "text": "You are the root.", "cache_control": {"type": "ephemeral"}}
    ]
    assert [m["role"] for m in root.body["messages"]] == ["user", "assistant", "user"]
    assert root.body["messages"][0]["content"] == "context"
    assert root.body["messages"][-1]["content"] == [
        {"type": "text", "text": "turn 2", "cache_control": {"type": "ephemeral"}}
    ]
    assert "system" not in sub.body
    assert sub.body["messages"] == [{"role": "user", "content": "a sub-call"}]
    # Input counts every prompt token: plain + cache read + cache write.
    assert (generation.input_tokens, generation.output_tokens) == (40 + 2000 + 300, 7)
    assert (generation.cached_tokens, generation.cache_write_tokens) == (2000, 300)
    expected = table_cost("claude-sonnet-4-5", "anthropic", 2340, 7, 2000, 300)
    assert generation.cost == pytest.approx(expected)


def test_gemini_generate_content_request_and_usage():
    with StubServer(gemini_generate("pong", 900, 12, cached_tokens=512)) as stub:
        client = make("gemini", stub.url, sampling_args={"temperature": 0.1, "max_tokens": 50})
        generation = client.generate(
            [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "a"},
                {"role": "user", "content": "q2"},
            ]
        )
    request = stub.requests[0]
    assert request.path.endswith("/models/gemini-2.5-flash:generateContent")
    assert request.headers["x-goog-api-key"] == "gem-test"
    assert request.body["systemInstruction"]["parts"] == [{"text": "Be brief."}]
    assert [c["role"] for c in request.body["contents"]] == ["user", "model", "user"]
    assert request.body["generationConfig"] == {"temperature": 0.1, "maxOutputTokens": 50}
    assert (generation.text, generation.input_tokens, generation.output_tokens) == ("pong", 900, 12)
    assert generation.cached_tokens == 512
    expected = table_cost("gemini-2.5-flash", "google", 900, 12, 512)
    assert generation.cost == pytest.approx(expected)


def test_portkey_headers_and_gateway_path():
    with StubServer(openai_chat("pong", 100, 10)) as stub:
        generation = make("portkey", stub.url, trace_id="t-1").generate("hi")
    request = stub.requests[0]
    assert request.path == "/v1/chat/completions"
    assert request.headers["x-portkey-api-key"] == "pk-test"
    assert request.headers["x-portkey-virtual-key"] == "vk-openai"
    assert request.headers["x-portkey-provider"] == "openai"
    assert request.headers["x-portkey-trace-id"] == "t-1"
    assert request.body["model"] == "gpt-4o-mini"
    assert generation.cost == pytest.approx(table_cost("gpt-4o-mini", "openai", 100, 10))


def test_litellm_request_and_its_own_cost():
    with StubServer(openai_chat("pong", 1000, 100, cached_tokens=0)) as stub:
        client = make("litellm", stub.url, sampling_args={"temperature": 0.3})
        generation = client.generate("hi")
    request = stub.requests[0]
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-test"
    assert request.body["model"] == "gpt-4o-mini"
    assert request.body["temperature"] == 0.3
    assert (generation.input_tokens, generation.output_tokens) == (1000, 100)
    assert generation.cost is not None and generation.cost > 0


@pytest.mark.parametrize(
    "backend", ["openai", "azure_openai", "anthropic", "gemini", "litellm", "portkey"]
)
def test_async_path(backend):
    with StubServer(responder(backend, "async pong")) as stub:
        client = make(backend, stub.url)
        generation = asyncio.run(client.agenerate("hi"))
    assert generation.text == "async pong"
    assert generation.input_tokens == 11
    assert len(stub.requests) == 1


@pytest.mark.parametrize("backend", ["openai", "anthropic"])
def test_a_batch_loops_async_sdk_client_is_closed_with_the_loop(backend):
    """Each handler's batch loop builds its own async SDK client; it is closed when the
    loop ends, not left to be collected on a later loop, where closing its pool fails
    ("Task exception was never retrieved ... Event loop is closed"), and a later loop
    that happens to get the same id never reuses it."""
    from rlm.core.comms_utils import send_lm_request_batched
    from rlm.core.lm_handler import LMHandler

    with StubServer(responder(backend, "batched pong")) as stub:
        client = make(backend, stub.url)
        built = []
        for _ in range(2):  # two handlers in turn: two loops, each with its own client
            handler = LMHandler(client)
            handler.start()
            try:
                replies = send_lm_request_batched(handler.address, ["a", "b"])
                assert [r.chat_completion.response for r in replies] == ["batched pong"] * 2
                built.extend(client._clients._async.values())
            finally:
                handler.stop()  # returns at once; the batch loop ends in its own thread
            handler._loop_thread.join(10)
            assert len(client._clients._async) == 0  # forgotten with its loop
        assert len(built) == 2 and built[0] is not built[1]
        assert all(sdk.is_closed() for sdk in built)
        assert len(stub.requests) == 4


def test_a_users_own_async_client_is_left_open_and_one_failing_close_stops_no_other():
    from rlm.clients.base_lm import SDKClients, close_loop_clients
    from rlm.core.comms_utils import send_lm_request_batched
    from rlm.core.lm_handler import LMHandler

    with StubServer(responder("openai", "own pong")) as stub:
        client = make("openai", stub.url)
        own = type(client.async_client)(api_key="k", base_url=f"{stub.url}/v1", max_retries=0)
        client.async_client = own  # the user's: theirs to close
        handler = LMHandler(client)
        handler.start()
        try:
            assert send_lm_request_batched(handler.address, ["a"])[0].chat_completion.response
        finally:
            handler.stop()
        handler._loop_thread.join(10)
        assert not own.is_closed()

    class Pool:  # an SDK's async client, as far as closing goes
        closed = 0

        def __init__(self, fail=False):
            self.fail = fail

        async def close(self):
            if self.fail:
                raise OSError("reset by peer")
            Pool.closed += 1

    failing = SDKClients("x", "", (Pool, lambda: Pool(fail=True)), {})
    fine = [SDKClients("x", "", (Pool, Pool), {}) for _ in range(2)]

    async def build_then_close():
        for sdk in (failing, *fine):
            sdk.get_async()
        await close_loop_clients()
        return [len(sdk._async) for sdk in (failing, *fine)]

    assert asyncio.run(build_then_close()) == [0, 0, 0]
    assert Pool.closed == 2


# -- faults ------------------------------------------------------------------------------

ALL = ["openai", "azure_openai", "anthropic", "gemini", "litellm", "portkey"]


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("status", [429, 500, 503])
def test_transient_errors_are_retried(backend, status):
    with StubServer(responder(backend, "after retry")) as stub:
        stub.faults.append(Fault(status=status, headers={"Retry-After": "0"}))
        generation = make(backend, stub.url).generate("hi")
    assert generation.text == "after retry"
    assert len(stub.requests) == 2


@pytest.mark.parametrize("backend", ["openai", "azure_openai", "anthropic", "litellm", "portkey"])
def test_retry_after_is_honoured(backend):
    # Without the header the SDKs' first backoff is at most about 0.5 s; a wait of at
    # least the announced 1.5 s can only come from Retry-After (a lower bound, not a timing).
    with StubServer(responder(backend, "waited")) as stub:
        stub.faults.append(Fault(status=429, headers={"Retry-After": "1.5"}))
        assert make(backend, stub.url).generate("hi").text == "waited"
    first, second = stub.requests
    assert second.at - first.at >= 1.4


@pytest.mark.parametrize("backend", ALL)
def test_bad_request_is_not_retried_and_carries_the_provider_message(backend):
    message = "messages: field required (stub says so)"
    if backend == "anthropic":
        body = {"type": "error", "error": {"type": "invalid_request_error", "message": message}}
    elif backend == "gemini":
        body = {"error": {"code": 400, "message": message, "status": "INVALID_ARGUMENT"}}
    else:
        body = {"error": {"message": message, "type": "invalid_request_error"}}
    with StubServer(responder(backend)) as stub:
        stub.faults.append(Fault(status=400, body=body))
        with pytest.raises(Exception, match="stub says so"):
            make(backend, stub.url).generate("hi")
    assert len(stub.requests) == 1


@pytest.mark.parametrize("backend", ALL)
def test_a_slow_answer_times_out_per_client_and_is_retried(backend):
    with StubServer(responder(backend, "second try")) as stub:
        stub.faults.append(Fault(delay=60))
        client = make(backend, stub.url, timeout=1.0, max_retries=1)
        assert client.generate("hi").text == "second try"
    assert len(stub.requests) == 2


@pytest.mark.parametrize("backend", ALL)
def test_a_slow_answer_with_no_retries_left_raises(backend):
    with StubServer(responder(backend)) as stub:
        stub.faults.append(Fault(delay=60))
        client = make(backend, stub.url, timeout=0.5, max_retries=0)
        with pytest.raises(Exception, match="(?i)time"):
            client.generate("hi")


@pytest.mark.parametrize("backend", ALL)
def test_a_malformed_body_raises(backend):
    with StubServer(responder(backend)) as stub:
        stub.faults.append(Fault(raw=b'{"choices": [ not json'))
        with pytest.raises(Exception):  # noqa: B017 - each SDK has its own error class
            make(backend, stub.url, max_retries=0).generate("hi")


# -- configuration errors ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("backend", "kwargs", "variable"),
    [
        ("openai", {"model_name": "gpt-4o-mini"}, "OPENAI_API_KEY"),
        (
            "azure_openai",
            {"model_name": "d", "azure_endpoint": "http://x", "api_version": "v"},
            "AZURE_OPENAI_API_KEY",
        ),
        ("azure_openai", {"model_name": "d", "api_key": "k"}, "AZURE_OPENAI_ENDPOINT"),
        ("anthropic", {"model_name": "claude-sonnet-4-5"}, "ANTHROPIC_API_KEY"),
        ("gemini", {"model_name": "gemini-2.5-flash"}, "GEMINI_API_KEY"),
        ("litellm", {"model_name": "anthropic/claude-sonnet-4-5"}, "ANTHROPIC_API_KEY"),
        ("portkey", {"model_name": "gpt-4o-mini"}, "PORTKEY_API_KEY"),
    ],
)
def test_missing_key_names_the_variable(monkeypatch, backend, kwargs, variable):
    for name in (
        "OPENAI_API_KEY",
        "AZURE_OPENAI_API_KEY",
        "AZURE_OPENAI_ENDPOINT",
        "ANTHROPIC_API_KEY",
        "GEMINI_API_KEY",
        "GOOGLE_API_KEY",
        "PORTKEY_API_KEY",
    ):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigurationError, match=variable):
        get_client(backend, kwargs)


def test_key_from_the_environment(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "from-env")
    with StubServer(anthropic_messages()) as stub:
        get_client("anthropic", {"model_name": "claude-sonnet-4-5", "base_url": stub.url}).generate(
            "hi"
        )
    assert anthropic_key(stub.requests[0]) == "from-env"


@pytest.mark.parametrize(
    ("backend", "module", "extra"),
    [
        ("anthropic", "anthropic", "anthropic"),
        ("gemini", "google.genai", "gemini"),
        ("litellm", "litellm", "litellm"),
        ("portkey", "portkey_ai", "portkey"),
    ],
)
def test_missing_sdk_names_the_extra(monkeypatch, backend, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    monkeypatch.delitem(sys.modules, f"rlm.clients.{backend}", raising=False)
    with pytest.raises(ConfigurationError, match=rf'pip install "rlm\[{extra}\]"'):
        get_client(backend, {"model_name": "m", "api_key": "k"})


def test_unknown_option_fails_at_construction():
    with pytest.raises(ConfigurationError, match="max_retires"):
        get_client("anthropic", {"model_name": "m", "api_key": "k", "max_retires": 3})
    with pytest.raises(ConfigurationError, match="temprature"):
        get_client(
            "gemini", {"model_name": "m", "api_key": "k", "sampling_args": {"temprature": 1}}
        )


# -- whole runs: budgets and the verbose summary -------------------------------------------

NOT_DONE = "Looking.\n```repl\nx = len(context)\n```"


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_a_run_stops_when_priced_usage_crosses_max_budget(backend):
    # Each root call reports 200k input tokens: a few cents at list prices, far over $0.001.
    usage = {
        "anthropic": {"input_tokens": 200_000},
        "gemini": {"prompt_tokens": 200_000},
    }.get(backend, {"prompt_tokens": 200_000})
    if backend == "openrouter":
        usage["cost"] = 0.05  # OpenRouter reports its own cost
    with StubServer(responder(backend, NOT_DONE, **usage)) as stub:
        rlm = RLM(
            backend=backend,
            backend_kwargs={**BACKENDS[backend](stub.url), **FAST},
            max_budget=0.001,
            max_iterations=5,
        )
        with pytest.raises(BudgetExceededError) as caught:
            rlm.completion("some context")
    assert caught.value.spent > 0.001
    assert len(stub.requests) == 1  # stopped after the first iteration


def test_verbose_summary_shows_tokens_cached_tokens_and_cost_per_model():
    answers = iter([NOT_DONE, 'answer["content"] = "42"\nanswer["ready"] = True'])

    def reply(request):
        text = next(answers)
        return text if "answer" not in text else f"```repl\n{text}\n```"

    with StubServer(anthropic_messages(reply, 40, 9, cache_read=3000, cache_write=500)) as stub:
        rlm = RLM(backend="anthropic", backend_kwargs={**anthropic_kwargs(stub.url), **FAST})
        result = rlm.completion("some context")
    assert result.response == "42"
    out = io.StringIO()
    printer = VerbosePrinter(console=Console(file=out, width=140, color_system=None))
    printer.print_summary(2, result.execution_time, result.usage_summary)
    text = out.getvalue()
    row = next(line for line in text.splitlines() if "claude-sonnet-4-5" in line)
    cost = result.usage_summary.model_usage_summaries["claude-sonnet-4-5"].total_cost
    expected = 2 * table_cost("claude-sonnet-4-5", "anthropic", 3540, 9, 3000, 500)
    assert cost == pytest.approx(expected)
    assert cost < 0.01  # shown with six decimals
    for cell in ("2", "7,080", "18", "6,000", f"${cost:,.6f}"):
        assert cell in row, (cell, row)
    print(text)
