"""rlm serve against real clients on loopback: the official openai client and LiteLLM's
openai/ provider; the scripted LM (and once the embedded model); runs API and cancellation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import openai
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from rlm.serve.app import ServeConfig, prompt_from_messages  # noqa: E402
from rlm.serve.runner import ServerThread, check_bind, is_loopback  # noqa: E402
from rlm.utils.exceptions import ConfigurationError  # noqa: E402
from tests.processes import wait_exit  # noqa: E402

KEY = "test-key-123"
ANSWER = (
    "```repl\nprint('seen', len(context))\n"
    'answer["content"] = "answer:" + str(context)[:40]\nanswer["ready"] = True\n```'
)
SPIN = "```repl\nprint('spinning')\nwhile True:\n    pass\n```"


def _root(messages):
    """The root model: spins forever when the question says so, else answers at once."""
    text = json.dumps(messages)
    return SPIN if "SPIN" in text else ANSWER


def _config(**kw) -> ServeConfig:
    rlm = {"backend": "scripted", "backend_kwargs": {"responses": _root}, "max_iterations": 4}
    rlm.update(kw.pop("rlm", {}))
    return ServeConfig(rlm=rlm, api_key=kw.pop("api_key", KEY), **kw)


@pytest.fixture
def served():
    with ServerThread(_config(environments=["subprocess"], max_iterations=3)) as server:
        yield server


def _client(server, key=KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key=key, max_retries=0, timeout=60)


def test_models_and_a_completion_through_the_openai_client(served):
    client = _client(served)
    assert [m.id for m in client.models.list().data] == ["rlm"]
    reply = client.chat.completions.create(
        model="rlm", messages=[{"role": "user", "content": "the whole context"}]
    )
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.content == "answer:the whole context"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.prompt_tokens > 0 and reply.usage.total_tokens > reply.usage.prompt_tokens
    extension = reply.model_extra["rlm"]
    assert extension["run_id"] == reply.id and extension["calls"] == 1


def test_streaming_through_the_openai_client_carries_the_events(served):
    client = _client(served)
    stream = client.chat.completions.create(
        model="rlm",
        messages=[
            {"role": "system", "content": "background"},
            {"role": "user", "content": "what is it?"},
        ],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, kinds, usage, finish = "", [], None, None
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
        event = (chunk.model_extra or {}).get("rlm_event")
        if event:
            kinds.append(event["type"])
    # Several messages: the last user message is the question, the rest the context.
    assert text == "answer:[{'role': 'system', 'content': 'backgrou"
    assert finish == "stop" and usage is not None and usage.total_tokens > 0
    for kind in ("run_started", "iteration_started", "cell_started", "cell_finished"):
        assert kind in kinds
    assert kinds[-1] == "run_finished"


def test_litellm_openai_provider_against_rlm_serve(served):
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    litellm = pytest.importorskip("litellm")
    reply = litellm.completion(
        model="openai/rlm",
        api_base=served.url,
        api_key=KEY,
        messages=[{"role": "user", "content": "via litellm"}],
    )
    assert reply.choices[0].message.content == "answer:via litellm"
    assert reply.usage.total_tokens > 0
    chunks = litellm.completion(
        model="openai/rlm",
        api_base=served.url,
        api_key=KEY,
        messages=[{"role": "user", "content": "streamed"}],
        stream=True,
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "answer:streamed"
    with pytest.raises(litellm.AuthenticationError):
        litellm.completion(
            model="openai/rlm",
            api_base=served.url,
            api_key="wrong",
            messages=[{"role": "user", "content": "x"}],
        )


def test_errors_are_openai_error_objects(served):
    with pytest.raises(openai.AuthenticationError) as auth:
        _client(served, key="wrong").models.list()
    assert auth.value.body["code"] == "invalid_api_key"
    client = _client(served)
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "x"}])
    assert missing.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(
            model="rlm",
            messages=[{"role": "user", "content": "x"}],
            extra_body={"rlm": {"environment": "docker"}},
        )
    assert "not served" in bad.value.body["message"]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="rlm", messages=[])


def test_per_request_limits_are_capped_by_the_server(looping_server):
    # The request asks for 50 iterations; the server's cap is 3.
    events = _events_of_stream(
        looping_server,
        {
            "model": "rlm",
            "messages": [
                {"role": "system", "content": "ctx"},
                {"role": "user", "content": "NOANSWER"},
            ],
            "stream": True,
            "rlm": {"max_iterations": 50},
        },
    )
    assert sum(1 for e in events if e.get("type") == "iteration_started") == 3


def _events_of_stream(server, body):
    events = []
    with httpx.stream(
        "POST",
        server.url + "/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=60,
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                data = json.loads(line[6:])
                if "rlm_event" in data:
                    events.append(data["rlm_event"])
    return events


@pytest.fixture
def looping_server():
    def root(messages):
        text = json.dumps(messages)
        if "SPIN" in text:
            return SPIN
        if "NOANSWER" in text:
            return "```repl\nx = 1\n```"
        return ANSWER

    config = _config(environments=["subprocess"], max_iterations=3)
    config.rlm["backend_kwargs"] = {"responses": root}
    with ServerThread(config) as server:
        yield server


def _children() -> set[int]:
    pids: set[int] = set()
    for task in Path("/proc/self/task").iterdir():
        try:
            pids.update(int(p) for p in (task / "children").read_text().split())
        except OSError:
            pass
    return pids


def _spin_until_cell_started(lines) -> None:
    for line in lines:
        if line.startswith("data: ") and '"cell_started"' in line:
            return
    raise AssertionError("the run ended before its cell started")


def test_delete_cancels_a_run_down_to_its_subprocess_cell(looping_server):
    headers = {"Authorization": f"Bearer {KEY}"}
    base = looping_server.url
    before = _children()
    created = httpx.post(
        base + "/rlm/runs",
        json={
            "messages": [{"role": "system", "content": "ctx"}, {"role": "user", "content": "SPIN"}],
            "rlm": {"environment": "subprocess"},
        },
        headers=headers,
    )
    assert created.status_code == 202
    run_id = created.json()["id"]
    with httpx.stream("GET", f"{base}/rlm/runs/{run_id}/events", headers=headers, timeout=60) as r:
        _spin_until_cell_started(r.iter_lines())
        workers = _children() - before
        assert workers  # the sandboxed worker runs the `while True` cell
        deleted = httpx.delete(f"{base}/rlm/runs/{run_id}", headers=headers, timeout=60)
        assert deleted.json()["status"] == "cancelled"
    assert wait_exit(workers) == set()  # the cell's process is gone
    status = httpx.get(f"{base}/rlm/runs/{run_id}", headers=headers).json()
    assert status["status"] == "cancelled" and status["error"]["code"] == "cancelled"
    assert httpx.get(f"{base}/rlm/runs/nope", headers=headers).status_code == 404


def test_a_client_disconnect_cancels_its_run(looping_server):
    before = _children()
    body = {
        "model": "rlm",
        "messages": [{"role": "system", "content": "ctx"}, {"role": "user", "content": "SPIN"}],
        "stream": True,
        "rlm": {"environment": "subprocess"},
    }
    with httpx.stream(
        "POST",
        looping_server.url + "/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=60,
    ) as response:
        _spin_until_cell_started(response.iter_lines())
        workers = _children() - before
        assert workers
    # The connection is closed: the server cancels the run and stops the cell.
    assert wait_exit(workers) == set()


def test_runs_api_result_and_events(looping_server):
    headers = {"Authorization": f"Bearer {KEY}"}
    base = looping_server.url
    run_id = httpx.post(
        base + "/rlm/runs", json={"rlm": {"context": "ctx"}, "question": "q"}, headers=headers
    ).json()["id"]
    with httpx.stream("GET", f"{base}/rlm/runs/{run_id}/events", headers=headers) as r:
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[-2][6:]) == {"type": "run_status", "status": "completed"}
    status = httpx.get(f"{base}/rlm/runs/{run_id}", headers=headers).json()
    assert status["status"] == "completed"
    assert status["result"]["choices"][0]["message"]["content"] == "answer:ctx"


def test_a_full_queue_answers_429_with_retry_after():
    gate = threading.Event()

    def root(messages):
        gate.wait(60)
        return ANSWER

    config = _config(max_concurrent=1, max_queue=1)
    config.rlm["backend_kwargs"] = {"responses": root}
    with ServerThread(config) as server:
        headers = {"Authorization": f"Bearer {KEY}"}
        body = {"messages": [{"role": "user", "content": "x"}]}
        ids = [httpx.post(server.url + "/rlm/runs", json=body, headers=headers) for _ in range(2)]
        assert [r.status_code for r in ids] == [202, 202]  # one running, one queued
        client = _client(server)
        with pytest.raises(openai.RateLimitError) as full:
            client.chat.completions.create(model="rlm", messages=body["messages"])
        assert int(full.value.response.headers["retry-after"]) >= 1
        assert full.value.body["code"] == "rate_limit_exceeded"
        gate.set()
        for r in ids:
            run_id = r.json()["id"]
            with httpx.stream("GET", f"{server.url}/rlm/runs/{run_id}/events", headers=headers):
                pass
        reply = client.chat.completions.create(model="rlm", messages=body["messages"])
        assert reply.choices[0].message.content == "answer:x"


def test_no_api_key_means_loopback_only(tmp_path):
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0")
    with pytest.raises(ConfigurationError, match="--api-key"):
        check_bind("0.0.0.0", None)
    check_bind("0.0.0.0", "k")
    run = subprocess.run(
        [sys.executable, "-m", "rlm", "serve", "--host", "0.0.0.0", "--backend", "scripted"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "RLM_SERVE_API_KEY": ""},
    )
    assert run.returncode != 0 and "--api-key" in run.stderr
    with ServerThread(_config(api_key=None)) as server:  # loopback without a key: open
        assert _client(server, key="anything").models.list().data[0].id == "rlm"


def test_messages_to_prompt_mapping():
    assert prompt_from_messages([{"role": "user", "content": "all"}]) == ("all", None)
    context, question = prompt_from_messages(
        [
            {"role": "system", "content": "s"},
            {"role": "user", "content": [{"type": "text", "text": "u1"}]},
            {"role": "assistant", "content": "a"},
            {"role": "user", "content": "q"},
        ]
    )
    assert question == "q"
    assert context == [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u1"},
        {"role": "assistant", "content": "a"},
    ]
    assert prompt_from_messages([{"role": "user", "content": "q"}], context="C") == ("C", "q")


@pytest.mark.real_model
def test_the_embedded_model_behind_rlm_serve():
    try:
        from tests.llama_server import real_model_or_skip
    except ImportError:
        from llama_server import real_model_or_skip
    path = real_model_or_skip()
    config = ServeConfig(
        rlm={
            "backend": "llama_cpp",
            "backend_kwargs": {
                "model_path": str(path),
                "n_ctx": 4096,
                "sampling_args": {"temperature": 0, "max_tokens": 200},
            },
            "max_iterations": 3,
        }
    )
    with ServerThread(config) as server:
        client = openai.OpenAI(base_url=server.url, api_key="x", max_retries=0, timeout=600)
        reply = client.chat.completions.create(
            model="rlm",
            messages=[
                {"role": "user", "content": "The secret word is PLUM. What is the secret word?"}
            ],
        )
    assert reply.choices[0].message.content
    assert reply.usage.prompt_tokens > 0


def _json_root(messages):
    """A root model that answers with the JSON object its task's schema asks for."""
    return '```repl\nanswer["content"] = \'{"city": "Oslo", "population": 709000}\'\nanswer["ready"] = True\n```'


def test_response_format_json_schema_through_the_openai_client():
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"],
        "additionalProperties": False,
    }
    config = _config(rlm={"backend_kwargs": {"responses": _json_root}})
    with ServerThread(config) as server:
        client = _client(server)
        reply = client.chat.completions.create(
            model="rlm",
            messages=[{"role": "user", "content": "Which city, and how many people?"}],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "place", "schema": schema, "strict": True},
            },
        )
        assert json.loads(reply.choices[0].message.content) == {
            "city": "Oslo",
            "population": 709000,
        }
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(
                model="rlm",
                messages=[{"role": "user", "content": "q"}],
                response_format={"type": "no-such-format"},
            )
        assert info.value.body["param"] == "response_format"
    # A model that never matches the schema: the run ends in an OpenAI-style 422.
    never = _config(rlm={"backend_kwargs": {"responses": lambda m: ANSWER}})
    with ServerThread(never) as server:
        with pytest.raises(openai.UnprocessableEntityError) as info:
            _client(server).chat.completions.create(
                model="rlm",
                messages=[{"role": "user", "content": "q"}],
                response_format={"type": "json_schema", "json_schema": {"schema": schema}},
            )
        assert info.value.body["code"] == "structured_output_failed"
