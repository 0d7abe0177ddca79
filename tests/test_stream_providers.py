"""Root tokens streamed from the providers: each provider client against a loopback stub
that speaks that provider's streaming wire format (OpenAI's and Azure's SSE chunks,
Anthropic's message_start/content_block_delta/message_delta/message_stop events,
Gemini's ``streamGenerateContent?alt=sse``), driven through the real SDK (LiteLLM through
its ``openai/`` and ``anthropic/`` providers), and llama.cpp with the real local model.

For every backend: the pieces arrive in order, join to the answer a plain call gets, and
report the same usage and cost; a server that refuses to stream gets one plain call; a
whole ``RLM.stream()`` run yields ``root_token`` events; ``completion()`` never streams.
"""

from __future__ import annotations

import pytest

from rlm import RLM
from rlm.clients import get_client

try:
    from tests.stubs import Fault, StubServer, anthropic_messages, gemini_generate, openai_chat
except ImportError:  # pragma: no cover - tests/ on sys.path
    from stubs import Fault, StubServer, anthropic_messages, gemini_generate, openai_chat
try:
    from test_clients_providers import BACKENDS, FAST
except ImportError:  # pragma: no cover - run from the repository root as a package
    from tests.test_clients_providers import BACKENDS, FAST

PIECES = ["```repl\n", 'answer["content"] = ', '"streamed"\n', 'answer["ready"] = True\n', "```"]


def litellm_anthropic_kwargs(url):
    return {"model_name": "anthropic/claude-sonnet-4-5", "api_base": url, "api_key": "ant-test"}


KWARGS = {
    **BACKENDS,
    "litellm-openai": BACKENDS["litellm"],
    "litellm-anthropic": litellm_anthropic_kwargs,
}
ANTHROPIC_REPLY = anthropic_messages(PIECES, 40, 7, cache_read=2000, cache_write=300)
#: case -> (backend, the stub's responder, the wire format of a streamed request);
#: the backend_kwargs are KWARGS[case] (the non-streaming tests' own, where they exist).
CASES = {
    "openai": ("openai", openai_chat(PIECES, 1200, 30, 1024), "openai"),
    "azure_openai": ("azure_openai", openai_chat(PIECES, 900, 40, 256), "openai"),
    "portkey": ("portkey", openai_chat(PIECES, 700, 20, 128), "openai"),
    "anthropic": ("anthropic", ANTHROPIC_REPLY, "anthropic"),
    "gemini": ("gemini", gemini_generate(PIECES, 900, 12, 512), "gemini"),
    "litellm-openai": ("litellm", openai_chat(PIECES, 1000, 100, 200), "openai"),
    "litellm-anthropic": ("litellm", ANTHROPIC_REPLY, "anthropic"),
}


@pytest.fixture(params=sorted(CASES))
def served(request):
    """(case name, backend, backend_kwargs, stub): the stub stops even when the test fails."""
    backend, responder, _ = CASES[request.param]
    with StubServer(responder) as stub:
        yield request.param, backend, {**KWARGS[request.param](stub.url), **FAST}, stub


def streamed(case, recorded):
    """Whether ``recorded`` asked for a stream, in the wire format of ``case``."""
    wire = CASES[case][2]
    if wire == "gemini":
        return recorded.path.endswith(":streamGenerateContent") and recorded.query["alt"] == ["sse"]
    return (recorded.body or {}).get("stream") is True


def usage_of(generation):
    return (
        generation.input_tokens,
        generation.output_tokens,
        generation.cached_tokens,
        generation.cache_write_tokens,
        generation.cost,
    )


def test_tokens_arrive_in_order_and_add_up_to_the_plain_answer_and_its_usage(served):
    case, backend, kwargs, stub = served
    client = get_client(backend, kwargs)
    pieces: list[str] = []
    streamed_generation = client.generate_stream("hi", pieces.append)
    plain = client.generate("hi")
    assert pieces == PIECES
    assert streamed_generation.text == "".join(PIECES) == plain.text
    assert usage_of(streamed_generation) == usage_of(plain)
    assert plain.cached_tokens > 0 and plain.cost is not None and plain.cost > 0
    first, second = stub.requests
    assert streamed(case, first) and not streamed(case, second)
    if CASES[case][2] == "openai":
        assert first.body["stream_options"] == {"include_usage": True}
    summary = client.get_usage_summary().model_usage_summaries[client.model_name]
    assert summary.total_calls == 2
    assert summary.total_input_tokens == 2 * plain.input_tokens
    assert summary.total_cost == pytest.approx(2 * plain.cost)


def test_a_server_that_refuses_to_stream_gets_one_plain_call(served):
    case, backend, kwargs, stub = served
    message = "streaming is not supported here (stub says so)"
    if CASES[case][2] == "anthropic":
        body = {"type": "error", "error": {"type": "invalid_request_error", "message": message}}
    elif CASES[case][2] == "gemini":
        body = {"error": {"code": 400, "message": message, "status": "INVALID_ARGUMENT"}}
    else:
        body = {"error": {"message": message, "type": "invalid_request_error"}}
    stub.faults.append(Fault(status=400, body=body))
    client = get_client(backend, kwargs)
    pieces: list[str] = []
    generation = client.generate_stream("hi", pieces.append)
    assert pieces == [] and generation.text == "".join(PIECES)
    refused, plain = stub.requests
    assert streamed(case, refused) and not streamed(case, plain)
    assert generation.input_tokens > 0 and generation.cost is not None


def test_an_error_raised_by_on_token_ends_the_call_without_a_second_request(served):
    _, backend, kwargs, stub = served
    client = get_client(backend, kwargs)

    def consumer_gone(text):
        raise RuntimeError("consumer gone")

    with pytest.raises(RuntimeError, match="consumer gone"):
        client.generate_stream("hi", consumer_gone)
    assert len(stub.requests) == 1
    assert client.generate("hi").text == "".join(PIECES)  # the client still works


def test_a_streamed_run_yields_root_tokens_and_completion_does_not_stream(served):
    case, backend, kwargs, stub = served
    events = list(RLM(backend=backend, backend_kwargs=kwargs).stream("ctx"))
    tokens = [e.text for e in events if e.type == "root_token"]
    assert tokens == PIECES
    assert events[-1].result.response == "streamed"
    assert [streamed(case, r) for r in stub.requests] == [True]
    streamed_usage = events[-1].usage
    stub.requests.clear()
    result = RLM(backend=backend, backend_kwargs=kwargs).completion("ctx")
    assert result.response == "streamed"
    assert [streamed(case, r) for r in stub.requests] == [False]
    for field in ("total_input_tokens", "total_output_tokens", "total_cost"):
        assert getattr(streamed_usage, field) == getattr(result.usage_summary, field)


def test_litellm_reports_no_usage_for_a_stream_that_carried_none():
    # An OpenAI-compatible server that ignores stream_options sends no usage chunk;
    # LiteLLM then estimates the tokens itself. That estimate is not reported as usage.
    plain = openai_chat(PIECES, 1000, 100)

    def ignores_stream_options(request):
        request.body.pop("stream_options", None)
        return plain(request)

    with StubServer(ignores_stream_options) as stub:
        client = get_client("litellm", {**BACKENDS["litellm"](stub.url), **FAST})
        pieces: list[str] = []
        generation = client.generate_stream("hi", pieces.append)
    assert pieces == PIECES and generation.text == "".join(PIECES)
    assert (generation.input_tokens, generation.output_tokens, generation.cost) == (0, 0, None)


@pytest.mark.real_model
def test_llama_cpp_streams_root_tokens_of_the_real_model():
    try:
        from tests.llama_server import real_model_or_skip
    except ImportError:  # run from tests/
        from llama_server import real_model_or_skip
    path = real_model_or_skip()
    client = get_client(
        "llama_cpp",
        {"model_path": str(path), "sampling_args": {"max_tokens": 12, "temperature": 0}},
    )
    pieces: list[str] = []
    generation = client.generate_stream("Say hello.", pieces.append)
    assert len(pieces) >= 2 and "".join(pieces) == generation.text
    assert generation.output_tokens == len(pieces) and generation.input_tokens > 0
