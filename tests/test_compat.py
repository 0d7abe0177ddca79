"""Drop-in compatibility with the public ``rlms`` package (0.1.1 / 0.1.3).

Import paths of DESIGN.md section 1, the seams users' own test suites rely on
(patching ``rlm.core.rlm.get_client``, building ``LMHandler``/``LocalREPL``
directly), and a 0.1.3 script run unchanged against an OpenAI-compatible
HTTP stub on loopback through the real OpenAI client.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from unittest.mock import Mock, patch

import pytest

# ---------------------------------------------------------------------------
# Import paths
# ---------------------------------------------------------------------------

EXCEPTIONS = (
    "BudgetExceededError",
    "TimeoutExceededError",
    "TokenLimitExceededError",
    "ErrorThresholdExceededError",
    "CancellationError",
)


def test_top_level_exports():
    import rlm
    import rlm.core.rlm
    import rlm.utils.exceptions

    assert rlm.core.rlm.RLM is rlm.RLM
    from rlm import RLM  # noqa: F401 - the import itself is the test

    for name in EXCEPTIONS:
        top = getattr(rlm, name)
        assert top is getattr(rlm.utils.exceptions, name)
        assert isinstance(top, type) and issubclass(top, Exception)
        assert name in rlm.__all__


def test_core_types():
    types = importlib.import_module("rlm.core.types")
    for name in (
        "ModelUsageSummary",
        "UsageSummary",
        "RLMChatCompletion",
        "REPLResult",
        "CodeBlock",
        "RLMIteration",
        "RLMMetadata",
        "QueryMetadata",
    ):
        cls = getattr(types, name)
        assert hasattr(cls, "to_dict"), name
    for name in ("ClientBackend", "EnvironmentType"):
        assert hasattr(types, name)
    for name in ("ModelUsageSummary", "UsageSummary", "RLMChatCompletion", "CodeBlock"):
        assert dataclasses.is_dataclass(getattr(types, name))


def test_core_types_round_trip():
    from rlm.core.types import (
        CodeBlock,
        ModelUsageSummary,
        REPLResult,
        RLMChatCompletion,
        RLMIteration,
        UsageSummary,
    )

    usage = UsageSummary({"m": ModelUsageSummary(2, 30, 40)})
    completion = RLMChatCompletion("m", "p", "r", usage, 1.5)
    assert RLMChatCompletion.from_dict(completion.to_dict()) == completion
    result = REPLResult(stdout="o", stderr="", locals={"x": 1}, execution_time=0.1)
    iteration = RLMIteration(
        prompt=[{"role": "user", "content": "q"}],
        response="r",
        code_blocks=[CodeBlock("x = 1", result)],
        final_answer="a",
        iteration_time=0.2,
    )
    again = RLMIteration.from_dict(iteration.to_dict())
    assert again.to_dict() == iteration.to_dict()


def test_lm_handler_and_comms_utils_names():
    from rlm.core import comms_utils
    from rlm.core.lm_handler import LMHandler

    assert isinstance(LMHandler, type)
    for name in (
        "LMRequest",
        "LMResponse",
        "socket_send",
        "socket_recv",
        "socket_request",
        "send_lm_request",
        "send_lm_request_batched",
    ):
        assert callable(getattr(comms_utils, name)), name


def test_clients_names():
    from rlm.clients import BaseLM, get_client
    from rlm.clients.base_lm import BaseLM as BaseFromModule

    assert BaseLM is BaseFromModule
    assert callable(get_client)
    openai_module = importlib.import_module("rlm.clients.openai")
    assert issubclass(openai_module.OpenAIClient, BaseLM)


def test_environments_names():
    import rlm.environments as environments
    from rlm.environments.base_env import BaseEnv
    from rlm.environments.local_repl import LocalREPL

    assert environments.BaseEnv is BaseEnv
    assert environments.LocalREPL is LocalREPL
    assert issubclass(LocalREPL, BaseEnv)
    assert callable(environments.get_environment)
    assert isinstance(environments.get_environment("local", {}), LocalREPL)
    for name in ("SupportsPersistence", "SupportsCustomTools", "RESERVED_TOOL_NAMES"):
        assert hasattr(environments, name), name
    assert {"llm_query", "llm_query_batched", "FINAL_VAR", "SHOW_VARS", "context"} <= set(
        environments.RESERVED_TOOL_NAMES
    )
    assert isinstance(LocalREPL(), environments.SupportsPersistence)


def test_logger_names(tmp_path):
    from rlm.logger import RLMLogger, VerbosePrinter

    RLMLogger(log_dir=str(tmp_path), file_name="rlm")
    RLMLogger()
    VerbosePrinter(enabled=False)


def test_parsing_functions():
    from rlm.core.types import CodeBlock, REPLResult, RLMIteration
    from rlm.utils.parsing import find_code_blocks, find_final_answer, format_iteration

    text = "Look:\n```repl\nx = 1\n```\nand\n```repl\nprint(x)\n```\nFINAL(yes)"
    assert find_code_blocks(text) == ["x = 1", "print(x)"]
    assert find_final_answer(text) == "yes"
    assert find_final_answer("no answer here") is None
    iteration = RLMIteration(
        prompt=[],
        response=text,
        code_blocks=[CodeBlock("x = 1", REPLResult(stdout="out-text", stderr="", locals={}))],
    )
    messages = format_iteration(iteration)
    assert messages[0] == {"role": "assistant", "content": text}
    assert "out-text" in messages[1]["content"]


# ---------------------------------------------------------------------------
# The seams users' own tests rely on
# ---------------------------------------------------------------------------


def _legacy_lm_class():
    """A client written against 0.1.x: only completion/acompletion/get_usage_summary/get_last_usage."""
    from rlm.clients import BaseLM
    from rlm.core.types import ModelUsageSummary, UsageSummary

    class LegacyLM(BaseLM):
        def __init__(self, responses: list[str], model_name: str = "legacy-model", **kwargs):
            super().__init__(model_name=model_name, **kwargs)
            self.responses = list(responses)
            self.prompts: list[object] = []
            self.total = ModelUsageSummary(0, 0, 0)
            self.last = ModelUsageSummary(0, 0, 0)

        def completion(self, prompt):
            self.prompts.append(prompt)
            is_root = isinstance(prompt, list) and prompt and prompt[0].get("role") == "system"
            if is_root:
                text = self.responses.pop(0)
            else:
                text = "legacy sub: " + (prompt if isinstance(prompt, str) else str(prompt))
            self.last = ModelUsageSummary(
                total_calls=1, total_input_tokens=10, total_output_tokens=3
            )
            self.total = ModelUsageSummary(
                self.total.total_calls + 1,
                self.total.total_input_tokens + 10,
                self.total.total_output_tokens + 3,
            )
            return text

        async def acompletion(self, prompt):
            return self.completion(prompt)

        def get_usage_summary(self):
            return UsageSummary(model_usage_summaries={self.model_name: self.total})

        def get_last_usage(self):
            return self.last

    return LegacyLM


def test_patched_get_client_with_a_legacy_client_drives_a_full_completion():
    from rlm import RLM

    legacy = _legacy_lm_class()(
        [
            "Let me look.\n```repl\na = llm_query('first')\n"
            "b = llm_query_batched(['x', 'y'])\nprint(a, b)\n```",
            "```repl\nresult = a + ' | ' + b[1]\n```\nFINAL_VAR(result)",
        ]
    )
    with patch("rlm.core.rlm.get_client") as mock_get_client:
        mock_get_client.return_value = legacy
        rlm = RLM(backend="openai", backend_kwargs={"model_name": "legacy-model"})
        result = rlm.completion("the context")
    mock_get_client.assert_called_once()
    backend, kwargs = mock_get_client.call_args.args
    assert backend == "openai" and kwargs["model_name"] == "legacy-model"
    assert result.response == "legacy sub: first | legacy sub: y"
    assert result.root_model == "legacy-model"
    usage = result.usage_summary.model_usage_summaries["legacy-model"]
    assert usage.total_calls == 5  # 2 root + 1 + 2 sub-calls
    assert usage.total_input_tokens == 50
    assert usage.total_output_tokens == 15


def test_patched_get_client_with_a_legacy_client_at_max_depth():
    from rlm import RLM

    legacy = _legacy_lm_class()([])
    with patch("rlm.core.rlm.get_client", return_value=legacy):
        result = RLM(backend="openai", backend_kwargs={"model_name": "m"}, depth=1).completion("q")
    assert result.response == "legacy sub: q"
    assert result.usage_summary.total_calls == 1


def test_patched_get_client_with_a_bare_mock_client():
    """The reference package's tests patch get_client with a plain ``Mock()``."""
    import rlm.core.rlm as rlm_module
    from rlm import RLM
    from rlm.core.types import ModelUsageSummary, UsageSummary

    mock_lm = Mock()
    replies = iter(["```repl\nvalue = 42 * 2\n```", "FINAL(84)"])
    mock_lm.completion.side_effect = lambda *a, **k: next(replies)
    mock_lm.get_usage_summary.return_value = UsageSummary(
        model_usage_summaries={"mock": ModelUsageSummary(1, 100, 50)}
    )
    mock_lm.get_last_usage.return_value = mock_lm.get_usage_summary.return_value
    with patch.object(rlm_module, "get_client") as mock_get_client:
        mock_get_client.return_value = mock_lm
        with RLM(backend="openai", backend_kwargs={"model_name": "test"}) as rlm:
            result = rlm.completion("Compute 42 * 2")
    assert result.response == "84"
    assert result.root_model == "test"


def test_bare_mock_client_at_max_depth():
    from rlm import RLM

    mock_lm = Mock()
    mock_lm.completion.return_value = "plain answer"
    with patch("rlm.core.rlm.get_client", return_value=mock_lm):
        rlm = RLM(backend="openai", backend_kwargs={"model_name": "test"}, depth=1)
        result = rlm.completion("q")
    assert result.response == "plain answer"
    assert result.root_model == "test"
    assert result.usage_summary.total_calls == 1
    mock_lm.completion.assert_called_once_with("q")


def test_lm_handler_and_local_repl_built_directly():
    from rlm.clients.scripted import ScriptedLM
    from rlm.core.comms_utils import LMRequest, send_lm_request, send_lm_request_batched
    from rlm.core.lm_handler import LMHandler
    from rlm.environments.local_repl import LocalREPL

    client = ScriptedLM(sub_responses=lambda m: "direct:" + m[-1]["content"])
    with LMHandler(client) as handler:
        host, port = handler.address
        assert host == "127.0.0.1" and port > 0
        repl = LocalREPL(lm_handler_address=handler.address, context_payload="ctx")
        try:
            result = repl.execute_code("r = llm_query('hi')\nprint(r, context)")
            assert result.stdout == "direct:hi ctx\n"
            assert result.llm_calls[0].response == "direct:hi"
        finally:
            repl.cleanup()
        response = send_lm_request(handler.address, LMRequest(prompt="raw"))
        assert response.success and response.chat_completion.response == "direct:raw"
        batch = send_lm_request_batched(handler.address, ["a", "b"])
        assert [r.chat_completion.response for r in batch] == ["direct:a", "direct:b"]


def test_lm_handler_with_a_legacy_client_built_directly():
    from rlm.core.lm_handler import LMHandler
    from rlm.environments.local_repl import LocalREPL

    handler = LMHandler(_legacy_lm_class()([]))
    handler.start()
    repl = LocalREPL(lm_handler_address=handler.address)
    try:
        result = repl.execute_code("r = llm_query('one')\nrs = llm_query_batched(['two'])")
        assert result.error is None
        assert repl.locals["r"] == "legacy sub: one"
        assert repl.locals["rs"] == ["legacy sub: two"]
        assert handler.get_usage_summary().total_calls == 2
    finally:
        repl.cleanup()
        handler.stop()


def test_socket_request_frames_match_the_contract():
    from rlm.clients.scripted import ScriptedLM
    from rlm.core.comms_utils import socket_request
    from rlm.core.lm_handler import LMHandler

    with LMHandler(ScriptedLM(sub_responses=lambda m: "framed")) as handler:
        single = socket_request(handler.address, {"prompt": "p"})
        batch = socket_request(handler.address, {"prompts": ["p", "q"]})
    for frame in (single, batch):
        assert {"chat_completion", "chat_completions", "error"} <= set(frame)
        assert (
            sum(frame[k] is not None for k in ("chat_completion", "chat_completions", "error")) == 1
        )
    assert single["chat_completion"]["response"] == "framed"
    assert [c["response"] for c in batch["chat_completions"]] == ["framed", "framed"]


# ---------------------------------------------------------------------------
# A 0.1.3 script against an OpenAI-compatible stub on loopback
# ---------------------------------------------------------------------------


class _OpenAIStub(BaseHTTPRequestHandler):
    """Chat completions with usage: root calls follow a script, sub-calls echo."""

    def do_POST(self):  # noqa: N802 - http.server's naming
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length))
        server = self.server
        with server.lock:
            server.seen.append(
                {"path": self.path, "auth": self.headers.get("Authorization"), "body": body}
            )
            messages = body["messages"]
            if messages and messages[0]["role"] == "system":
                text = server.script.pop(0)
            else:
                text = "stub sub: " + str(messages[-1]["content"])
        payload = {
            "id": f"chatcmpl-{len(server.seen)}",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 100, "completion_tokens": 7, "total_tokens": 107},
        }
        if body.get("stream"):  # verbose runs stream the root model: answer in SSE chunks
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            head = {k: payload[k] for k in ("id", "created", "model")}
            head["object"] = "chat.completion.chunk"
            delta = {"index": 0, "delta": {"content": text}, "finish_reason": None}
            chunks = [
                {**head, "choices": [delta]},
                {**head, "choices": [], "usage": payload["usage"]},
            ]
            for chunk in chunks:
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")
            return
        data = json.dumps(payload).encode("utf-8")
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):  # keep test output clean
        pass


@pytest.fixture
def openai_stub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _OpenAIStub)
    server.lock = threading.Lock()
    server.seen = []
    server.script = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_a_0_1_3_script_runs_against_an_openai_compatible_server(openai_stub, tmp_path, capsys):
    openai_stub.script.extend(
        [
            "I will inspect the context.\n```repl\nprint(context[:40])\n"
            "summary = llm_query('Summarise: ' + context[:40])\n"
            "parts = llm_query_batched(['p1', 'p2'])\nprint(summary)\n```",
            "```repl\nanswer['content'] = summary + ' / ' + parts[1]\nanswer['ready'] = True\n```",
        ]
    )
    base_url = f"http://127.0.0.1:{openai_stub.server_address[1]}/v1"

    # --- the user's script, as written for 0.1.3 ---
    from rlm import RLM
    from rlm.logger import RLMLogger

    logger = RLMLogger(log_dir=str(tmp_path))
    rlm = RLM(
        backend="openai",
        backend_kwargs={"model_name": "gpt-x", "api_key": "sk-test", "base_url": base_url},
        environment="local",
        max_iterations=5,
        logger=logger,
        verbose=True,
    )
    result = rlm.completion("A long document about owls. " * 50, root_prompt="What is it about?")
    print(result.response)
    # --- end of script ---

    expected_summary = "stub sub: Summarise: " + ("A long document about owls. " * 2)[:40]
    assert result.response == expected_summary + " / stub sub: p2"
    assert result.root_model == "gpt-x"
    usage = result.usage_summary.model_usage_summaries["gpt-x"]
    assert usage.total_calls == 5
    assert usage.total_input_tokens == 500
    assert usage.total_output_tokens == 35
    seen = openai_stub.seen
    assert len(seen) == 5
    assert all(s["path"] == "/v1/chat/completions" for s in seen)
    assert all(s["auth"] == "Bearer sk-test" for s in seen)
    assert all(s["body"]["model"] == "gpt-x" for s in seen)
    root_bodies = [s["body"] for s in seen if s["body"]["messages"][0]["role"] == "system"]
    assert len(root_bodies) == 2
    assert "What is it about?" in json.dumps(root_bodies[0]["messages"])
    assert result.response in capsys.readouterr().out
    log_text = Path(logger.log_file_path).read_text(encoding="utf-8")
    metadata = json.loads(log_text.splitlines()[0])
    assert "api_key" not in metadata["backend_kwargs"]
    assert "sk-test" not in log_text


def test_openai_sampling_args_reach_the_request(openai_stub):
    from rlm import RLM

    openai_stub.script.append("FINAL(done)")
    base_url = f"http://127.0.0.1:{openai_stub.server_address[1]}/v1"
    rlm = RLM(
        backend="openai",
        backend_kwargs={"model_name": "gpt-x", "api_key": "sk-test", "base_url": base_url},
        sampling_args={"temperature": 0.0, "max_tokens": 64},
    )
    assert rlm.completion("c").response == "done"
    body = openai_stub.seen[0]["body"]
    assert body["temperature"] == 0.0
    assert body["max_tokens"] == 64


def test_openai_backend_without_a_key_constructs_and_fails_at_the_first_completion(monkeypatch):
    # As in rlms: the client is built when first needed, so RLM(...) needs no key, and the
    # error naming the variable comes from completion(), catchable as ValueError.
    from rlm import RLM

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    rlm = RLM(backend="openai", backend_kwargs={"model_name": "gpt-x"})
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        rlm.completion("question")


def test_patching_get_client_after_construction_takes_effect(monkeypatch):
    """A user's test patches rlm.core.rlm.get_client after building the RLM (and between
    completions): the patched factory is used, and no real HTTP call is made."""
    import rlm.core.rlm as rlm_module
    from rlm import RLM
    from rlm.clients.scripted import ScriptedLM

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    rlm = RLM(backend="openai", backend_kwargs={"model_name": "gpt-x"})
    built: list[tuple] = []

    def fake_factory(answer):
        def factory(backend, kwargs):
            built.append((backend, kwargs["model_name"]))
            return ScriptedLM(
                responses=lambda m: f"FINAL({answer})", model_name=kwargs["model_name"]
            )

        return factory

    with patch.object(rlm_module, "get_client", fake_factory("first")):
        assert rlm.completion("q").response == "first"
        assert rlm.completion("q").response == "first"  # clients reused while the patch holds
    with patch.object(rlm_module, "get_client", fake_factory("second")):
        result = rlm.completion("q")
    assert result.response == "second"
    assert result.root_model == "gpt-x"
    assert built == [("openai", "gpt-x"), ("openai", "gpt-x")]


def test_vllm_without_base_url_is_caught_by_assertion_error_and_value_error():
    from rlm import RLM

    rlm = RLM(backend="vllm", backend_kwargs={"model_name": "m"})  # constructs, as in rlms
    with pytest.raises(AssertionError, match="base_url"):
        rlm.completion("q")
    with pytest.raises(ValueError, match="base_url"):
        rlm.completion("q")


def test_model_string_shorthand_sets_backend_and_model_name():
    from rlm import RLM

    rlm = RLM(model="anthropic/claude-x")
    assert (rlm.backend, rlm.backend_kwargs["model_name"]) == ("anthropic", "claude-x")
    scripted = RLM(model="scripted/house", backend_kwargs={"responses": ["FINAL(ok)"]})
    result = scripted.completion("q")
    assert (result.response, result.root_model) == ("ok", "house")


def test_patches_of_the_module_a_class_came_from_apply_after_a_reimport(monkeypatch):
    """rlms' import tests delete rlm.core.rlm from sys.modules and import it again; code
    bound earlier (the RLM class, the module object) must still see patches of its module."""
    import importlib
    import sys

    import rlm.core.rlm as old_module
    from rlm.clients.scripted import ScriptedLM

    old_class = old_module.RLM
    monkeypatch.delitem(sys.modules, "rlm.core.rlm")
    fresh = importlib.import_module("rlm.core.rlm")
    assert fresh is not old_module
    monkeypatch.setitem(sys.modules, "rlm.core.rlm", old_module)  # put things back after
    built = []

    def factory(backend, kwargs):
        built.append(backend)
        return ScriptedLM(responses=lambda m: "FINAL(patched)", model_name="m")

    with patch.object(old_module, "get_client", factory):
        sys.modules["rlm.core.rlm"] = fresh  # as the re-import left it
        result = old_class(backend="openai", backend_kwargs={"model_name": "m"}).completion("q")
    assert result.response == "patched" and built == ["openai"]
