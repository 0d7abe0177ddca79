"""Provider SDK errors, mapped once at the client seam (BaseLM.generate/agenerate).

The real SDKs run against loopback stub servers answering 401, 429 and 500, and
against a port nobody listens on. The mapped error is an rlm ProviderError *and*
an instance of the SDK's own class (what rlms users caught), with the original
as ``__cause__`` and a one-line message.
"""

from __future__ import annotations

import asyncio
import importlib.util
import pickle
import socket

import pytest

from rlm.clients import get_client
from rlm.utils import exceptions as exc_mod
from rlm.utils.exceptions import (
    ProviderAuthenticationError,
    ProviderConnectionError,
    ProviderError,
    ProviderRateLimitError,
    ProviderServerError,
    RLMError,
)

try:
    from tests.stubs import Fault, StubServer, anthropic_messages, gemini_generate, openai_chat
    from tests.test_clients_providers import BACKENDS
except ImportError:  # pragma: no cover - tests/ on sys.path
    from stubs import Fault, StubServer, anthropic_messages, gemini_generate, openai_chat
    from test_clients_providers import BACKENDS

pytest.importorskip("anthropic")
pytest.importorskip("google.genai")
pytest.importorskip("portkey_ai")
if importlib.util.find_spec("litellm") is None:
    pytest.skip("litellm is not installed", allow_module_level=True)

SDKS = ["openai", "anthropic", "gemini", "litellm", "portkey"]
KINDS = {401: ProviderAuthenticationError, 429: ProviderRateLimitError, 500: ProviderServerError}


def responder(backend):
    if backend == "anthropic":
        return anthropic_messages("pong")
    if backend == "gemini":
        return gemini_generate("pong")
    return openai_chat("pong")


def client_for(backend, url):
    return get_client(backend, {**BACKENDS[backend](url), "max_retries": 0, "timeout": 20})


def check_mapped(error, kind):
    assert isinstance(error, kind) and isinstance(error, ProviderError)
    assert isinstance(error, RLMError)
    original = error.__cause__
    assert original is not None and error.original is original
    assert not isinstance(original, ProviderError)
    assert isinstance(error, type(original))  # `except <the SDK's class>` still catches it
    message = str(error)
    assert "\n" not in message and len(message) < 500
    assert message.startswith(f"{error.provider}: {kind.kind}")


@pytest.mark.parametrize("backend", SDKS)
@pytest.mark.parametrize("status", sorted(KINDS))
def test_http_errors_are_mapped(backend, status):
    with StubServer(responder(backend)) as stub:
        stub.faults.append(Fault(status=status))
        with pytest.raises(KINDS[status]) as info:
            client_for(backend, stub.url).generate("hi")
    check_mapped(info.value, KINDS[status])
    assert info.value.status_code == status
    assert f"HTTP {status}" in str(info.value)


@pytest.mark.parametrize("backend", SDKS)
def test_a_refused_connection_is_mapped(backend):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    client = client_for(backend, f"http://127.0.0.1:{port}")
    with pytest.raises(ProviderConnectionError) as info:
        client.generate("hi")
    check_mapped(info.value, type(info.value))


def test_what_rlms_users_caught_still_catches():
    import openai

    with StubServer(openai_chat("pong")) as stub:
        stub.faults.append(Fault(status=429))
        with pytest.raises(openai.RateLimitError) as info:
            client_for("openai", stub.url).generate("hi")
        stub.faults.append(Fault(status=401))
        with pytest.raises(openai.APIError):
            client_for("openai", stub.url).generate("hi")
    error = info.value
    assert isinstance(error, ProviderRateLimitError)
    assert error.response.status_code == 429  # the SDK's attributes are kept
    assert error.body is not None


def test_the_async_path_maps_too():
    with StubServer(anthropic_messages("pong")) as stub:
        stub.faults.append(Fault(status=500))
        client = client_for("anthropic", stub.url)
        with pytest.raises(ProviderServerError) as info:
            asyncio.run(client.agenerate("hi"))
    check_mapped(info.value, ProviderServerError)


def test_a_mapped_error_pickles_as_the_rlm_class():
    with StubServer(openai_chat("pong")) as stub:
        stub.faults.append(Fault(status=429))
        with pytest.raises(ProviderRateLimitError) as info:
            client_for("openai", stub.url).generate("hi")
    copy = pickle.loads(pickle.dumps(info.value))
    assert type(copy) is exc_mod.ProviderRateLimitError
    assert str(copy) == str(info.value) and copy.status_code == 429


#: What each provider answers (HTTP 400) to a prompt longer than the model's window,
#: and the window it names. LiteLLM and Portkey speak OpenAI's wire format.
OVERFLOWS = {
    "openai": (
        {
            "error": {
                "message": "This model's maximum context length is 8192 tokens. However, you "
                "requested 9000 tokens (8000 in the messages, 1000 in the completion).",
                "type": "invalid_request_error",
                "param": "messages",
                "code": "context_length_exceeded",
            }
        },
        8192,
    ),
    "anthropic": (
        {
            "type": "error",
            "error": {
                "type": "invalid_request_error",
                "message": "prompt is too long: 210000 tokens > 200000 maximum",
            },
        },
        200_000,
    ),
    "gemini": (
        {
            "error": {
                "code": 400,
                "message": "The input token count (1200000) exceeds the maximum number of "
                "tokens allowed (1048576).",
                "status": "INVALID_ARGUMENT",
            }
        },
        1_048_576,
    ),
}


@pytest.mark.parametrize("backend", SDKS)
def test_a_prompt_too_long_for_the_window_is_its_own_error(backend):
    """The loop drops old turns on this error (tests/test_history_trim.py): every SDK's
    refusal maps to it, with the window the message names; other 400s do not."""
    body, window = OVERFLOWS.get(backend, OVERFLOWS["openai"])
    with StubServer(responder(backend)) as stub:
        stub.faults.append(Fault(status=400, body=body))
        with pytest.raises(exc_mod.ProviderContextLengthError) as info:
            client_for(backend, stub.url).generate("hi")
        stub.faults.append(Fault(status=400))
        with pytest.raises(exc_mod.ProviderBadRequestError) as plain:
            client_for(backend, stub.url).generate("hi")
    error = info.value
    check_mapped(error, exc_mod.ProviderContextLengthError)
    assert isinstance(error, exc_mod.ContextOverflowError)
    assert isinstance(error, exc_mod.ProviderBadRequestError)  # what was caught before
    assert error.window == window and error.status_code == 400
    assert not isinstance(plain.value, exc_mod.ContextOverflowError)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is exc_mod.ProviderContextLengthError and copy.window == window


@pytest.mark.parametrize("backend", ["openai", "anthropic", "litellm"])
def test_a_streamed_call_refused_as_too_long_is_not_sent_again(backend):
    """These clients answer a 400 to a streamed request by asking again without
    streaming (servers that cannot stream); a prompt too long would only be refused
    again."""
    body = OVERFLOWS.get(backend, OVERFLOWS["openai"])[0]
    with StubServer(responder(backend)) as stub:
        stub.faults.append(Fault(status=400, body=body))
        stub.faults.append(Fault(status=400, body=body))
        with pytest.raises(exc_mod.ProviderContextLengthError):
            client_for(backend, stub.url).generate_stream("hi", lambda text: None)
        assert len(stub.requests) == 1


def test_only_the_providers_own_words_count():
    """A 400 whose body echoes the request (a REPL output quoting an earlier refusal)
    is not an overflow; llama.cpp's own server's refusal is, with its window."""
    echo = {
        "error": {"message": "invalid value for 'temperature'", "type": "invalid_request_error"},
        "input": "REPL output: maximum context length is 4096 tokens (context_length_exceeded)",
    }
    llama_server = {
        "error": {
            "code": 400,
            "message": "request (13392 tokens) exceeds the available context size (8192 "
            "tokens), try increasing it",
            "type": "exceed_context_size_error",
            "n_prompt_tokens": 13392,
            "n_ctx": 8192,
        }
    }
    with StubServer(openai_chat("pong")) as stub:
        stub.faults.append(Fault(status=400, body=echo))
        with pytest.raises(exc_mod.ProviderBadRequestError) as plain:
            client_for("openai", stub.url).generate("hi")
        stub.faults.append(Fault(status=400, body=llama_server))
        with pytest.raises(exc_mod.ProviderContextLengthError) as info:
            client_for("openai", stub.url).generate("hi")
    assert not isinstance(plain.value, exc_mod.ContextOverflowError)
    assert info.value.window == 8192


def test_the_overflow_wordings_and_their_windows():
    said = exc_mod.context_overflow
    assert said("Requested tokens (9000) exceed context window of 8192") == (True, 8192)
    assert said("input length and `max_tokens` exceed context limit: 197000 + 8192 > 200000") == (
        True,
        200000,
    )
    assert said("40000 tokens, too large for model with 32768 maximum context length") == (
        True,
        32768,
    )
    assert said("the input exceeds the context window of 128k tokens") == (True, None)
    assert said("maximum context length is , tokens") == (False, None)
    assert said("Your input exceeds the context window of this model.") == (True, None)
    assert said("code: context_length_exceeded") == (True, None)
    assert said("This model's maximum context length is 131,072 tokens.") == (True, 131072)
    assert said("invalid model name") == (False, None)


@pytest.mark.parametrize(
    "error",
    [
        exc_mod.BudgetExceededError(0.5, 0.25, partial_answer="so far"),
        exc_mod.TimeoutExceededError(12.0, 10.0, "so far"),
        exc_mod.TokenLimitExceededError(1500, 1000, message="over"),
        exc_mod.ErrorThresholdExceededError(3, 3, "NameError", "so far"),
        exc_mod.CancellationError("so far"),
        exc_mod.StructuredOutputError("{}", "missing 'answer'", 2),
        exc_mod.ConfigurationError("bad option"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_every_rlm_error_pickles_with_its_message_and_attributes(error):
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert copy.args == error.args and str(copy) == str(error)
    assert vars(copy) == vars(error)
    assert copy.partial_answer == error.partial_answer


def test_the_limit_errors_keep_rlms_constructors_and_messages():
    budget = exc_mod.BudgetExceededError(1.5, 1.0)
    assert str(budget) == "Budget exceeded: spent $1.500000 of $1.000000 budget"
    assert (budget.spent, budget.budget, budget.partial_answer) == (1.5, 1.0, None)
    assert exc_mod.BudgetExceededError(1, 2, "msg", "partial").partial_answer == "partial"
    timeout = exc_mod.TimeoutExceededError(3.25, 2.0, "partial")
    assert str(timeout) == "Timeout exceeded: 3.2s of 2.0s limit"
    assert timeout.partial_answer == "partial"
    tokens = exc_mod.TokenLimitExceededError(12345, 10000)
    assert str(tokens) == "Token limit exceeded: 12,345 of 10,000 tokens"
    errors = exc_mod.ErrorThresholdExceededError(5, 5, "boom")
    assert str(errors) == "Error threshold exceeded: 5 consecutive errors (limit: 5)"
    assert errors.last_error == "boom"
    assert str(exc_mod.CancellationError()) == "Execution cancelled by user"
    assert str(exc_mod.CancellationError(message="stop")) == "stop"
    structured = exc_mod.StructuredOutputError("x", "not JSON")
    assert structured.partial_answer == "x" and structured.attempts == 1
    assert isinstance(structured, ValueError)
    # Exceptions compare and hash by identity, and print as exceptions do.
    assert budget != exc_mod.BudgetExceededError(1.5, 1.0) and hash(budget)
    assert repr(tokens) == "TokenLimitExceededError('" + str(tokens) + "')"


def test_other_errors_pass_unchanged():
    from rlm.clients.base_lm import map_provider_error

    assert map_provider_error(ValueError("x")) is None
    assert map_provider_error(KeyboardInterrupt()) is None
