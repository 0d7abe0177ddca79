"""LMHandler over real loopback sockets: requests, batches, auth, malformed frames, stop, routing."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading

import pytest

from rlm.clients.base_lm import BaseLM, estimate_message_tokens, to_messages
from rlm.clients.scripted import ScriptedLM
from rlm.core.comms_utils import LMRequest, send_lm_request, send_lm_request_batched
from rlm.core.lm_handler import LMHandler
from rlm.core.types import ModelUsageSummary, UsageSummary
from rlm.utils.token_utils import estimate_tokens

HEADER = struct.Struct(">I")


# ---------------------------------------------------------------------------
# A raw client: frames built by hand with struct + json
# ---------------------------------------------------------------------------


def connect(handler: LMHandler) -> socket.socket:
    sock = socket.create_connection(handler.address, timeout=10)
    return sock


def send_raw(sock: socket.socket, body: bytes) -> None:
    sock.sendall(HEADER.pack(len(body)) + body)


def send_json(sock: socket.socket, data) -> None:
    send_raw(sock, json.dumps(data).encode("utf-8"))


def read_exact(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(n)
        if not chunk:
            raise ConnectionError("closed")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def read_json(sock: socket.socket) -> dict:
    (length,) = HEADER.unpack(read_exact(sock, 4))
    return json.loads(read_exact(sock, length).decode("utf-8"))


def ask(sock: socket.socket, data) -> dict:
    send_json(sock, data)
    return read_json(sock)


def authenticate(sock: socket.socket, handler: LMHandler) -> None:
    """Send the auth frame (answered only when it is wrong)."""
    send_json(sock, {"kind": "auth", "token": handler.token})


def assert_error_shape(response: dict) -> None:
    assert response["error"]
    assert response["chat_completion"] is None
    assert response["chat_completions"] is None


def assert_serving(handler: LMHandler, sock: socket.socket | None = None) -> None:
    """The handler answers a valid request (on ``sock``, or on a new connection)."""
    own = sock is None
    sock = sock or connect(handler)
    try:
        response = ask(sock, {"prompt": "still there?", "token": handler.token})
        assert response["error"] is None
        assert response["chat_completion"]["response"] == "sub:still there?"
    finally:
        if own:
            sock.close()


def usage_of(prompt: str, answer: str) -> tuple[int, int]:
    """The ScriptedLM's token estimate for one sub-call."""
    return estimate_message_tokens(to_messages(prompt)), estimate_tokens(answer)


def test_scripted_input_tokens_are_the_whole_history_estimate_however_it_changes():
    """The scripted client counts a growing history incrementally; every call still
    reports the estimate of the whole history: grown, cut back, changed in place (a str
    replaced, a list of parts edited), with non-text contents and missing ones."""
    client = ScriptedLM(responses=lambda messages: "ok")
    history = [{"role": "system", "content": "s" * 37}]
    seen = []

    def ask() -> None:
        generation = client.generate(list(history))
        seen.append((generation.input_tokens, estimate_message_tokens(history)))

    for turn in range(30):
        history.append({"role": "user", "content": "u" * (turn * 7 % 23)})
        history.append({"role": "assistant", "content": "a" * turn})
        ask()
    history[5]["content"] += " changed in place"
    ask()
    parts = [{"type": "text", "text": "a list of parts"}]
    history.append({"role": "user", "content": parts})
    ask()
    parts.append({"type": "text", "text": "edited in place"})
    ask()
    history.append({"role": "user"})  # no content
    ask()
    del history[10:]
    ask()
    history.extend({"role": "user", "content": "again " * n} for n in range(12))
    ask()
    assert all(got == expected for got, expected in seen), seen


# ---------------------------------------------------------------------------
# Single and batched requests
# ---------------------------------------------------------------------------


def test_single_request_over_the_wire(scripted_handler):
    handler = scripted_handler()
    response = send_lm_request(handler.address, LMRequest(prompt="hello"))
    assert response.success, response.error
    record = response.chat_completion
    assert record.response == "sub:hello"
    assert record.root_model == "scripted"
    assert record.prompt == "hello"
    tokens_in, tokens_out = usage_of("hello", "sub:hello")
    model_usage = record.usage_summary.model_usage_summaries["scripted"]
    assert model_usage.total_calls == 1
    assert (model_usage.total_input_tokens, model_usage.total_output_tokens) == (
        tokens_in,
        tokens_out,
    )


def test_single_request_with_message_list_prompt(scripted_handler):
    handler = scripted_handler()
    messages = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "second"},
    ]
    response = send_lm_request(handler.address, LMRequest(prompt=messages))
    assert response.chat_completion.response == "sub:second"


def test_raw_response_has_exactly_the_contract_keys(scripted_handler):
    handler = scripted_handler()
    with connect(handler) as sock:
        response = ask(sock, {"prompt": "x", "token": handler.token})
    assert set(response) == {"chat_completion", "chat_completions", "error"}
    assert response["chat_completions"] is None
    assert response["error"] is None
    assert response["chat_completion"]["response"] == "sub:x"


def test_batched_request_preserves_order(scripted_handler):
    handler = scripted_handler(delay=0.001)
    prompts = [f"prompt-{i}" for i in range(50)]
    responses = send_lm_request_batched(handler.address, prompts)
    assert [r.chat_completion.response for r in responses] == [f"sub:{p}" for p in prompts]
    assert [r.chat_completion.prompt for r in responses] == prompts
    assert handler.get_usage_summary().total_calls == 50


def test_batch_with_one_failing_item(scripted_handler):
    def script(messages):
        content = messages[-1]["content"]
        if content == "explode":
            raise RuntimeError("the model fell over")
        return "sub:" + content

    handler = scripted_handler(sub_responses=script)
    prompts = ["alpha", "explode", "gamma", "delta"]
    with connect(handler) as sock:
        raw = ask(sock, {"prompts": prompts, "token": handler.token})
    assert raw["error"] is None
    assert raw["chat_completion"] is None
    items = raw["chat_completions"]
    assert len(items) == 4
    assert [i.get("error") is None for i in items] == [True, False, True, True]
    assert "the model fell over" in items[1]["error"]
    assert items[1]["response"] == ""
    assert [items[i]["response"] for i in (0, 2, 3)] == ["sub:alpha", "sub:gamma", "sub:delta"]

    # Usage: counted for the three successful items only, each with its own numbers.
    for i in (0, 2, 3):
        tokens_in, tokens_out = usage_of(prompts[i], "sub:" + prompts[i])
        item_usage = items[i]["usage_summary"]["model_usage_summaries"]["scripted"]
        assert item_usage == {
            "total_calls": 1,
            "total_input_tokens": tokens_in,
            "total_output_tokens": tokens_out,
        }
    assert items[1]["usage_summary"]["model_usage_summaries"] == {}
    summary = handler.get_usage_summary()
    assert summary.total_calls == 3
    expected_in = sum(usage_of(prompts[i], "")[0] for i in (0, 2, 3))
    expected_out = sum(usage_of("", "sub:" + prompts[i])[1] for i in (0, 2, 3))
    assert summary.total_input_tokens == expected_in
    assert summary.total_output_tokens == expected_out


def test_empty_batch_and_missing_prompt(scripted_handler):
    handler = scripted_handler()
    with connect(handler) as sock:
        empty = ask(sock, {"prompts": [], "token": handler.token})
        assert empty["chat_completions"] == []
        assert empty["error"] is None
        missing = ask(sock, {"token": handler.token})
        assert_error_shape(missing)
        not_a_list = ask(sock, {"prompts": "abc", "token": handler.token})
        assert_error_shape(not_a_list)
        assert_serving(handler, sock)


def test_client_failure_on_single_request_is_an_error_response(scripted_handler):
    def script(messages):
        raise ValueError("no answer today")

    handler = scripted_handler(sub_responses=script)
    response = send_lm_request(handler.address, LMRequest(prompt="x"))
    assert not response.success
    assert "no answer today" in response.error
    assert handler.get_usage_summary().total_calls == 0


def test_request_id_is_echoed(scripted_handler):
    handler = scripted_handler()
    with connect(handler) as sock:
        single = ask(sock, {"prompt": "a", "token": handler.token, "id": 41})
        assert single["id"] == 41
        batch = ask(sock, {"prompts": ["a", "b"], "token": handler.token, "id": "batch-7"})
        assert batch["id"] == "batch-7"
        refused = ask(sock, {"prompt": "a", "id": 99})
        assert refused["id"] == 99
        assert_error_shape(refused)
        plain = ask(sock, {"prompt": "a", "token": handler.token})
        assert "id" not in plain


# ---------------------------------------------------------------------------
# Keep-alive
# ---------------------------------------------------------------------------


def test_keep_alive_many_requests_on_one_connection(scripted_handler):
    handler = scripted_handler()
    with connect(handler) as sock:
        for i in range(200):
            if i % 10 == 0:
                request = {"prompts": [f"b{i}", f"c{i}"], "token": handler.token, "id": i}
                response = ask(sock, request)
                assert response["id"] == i
                assert [c["response"] for c in response["chat_completions"]] == [
                    f"sub:b{i}",
                    f"sub:c{i}",
                ]
            else:
                response = ask(sock, {"prompt": f"p{i}", "token": handler.token, "id": i})
                assert response["id"] == i
                assert response["chat_completion"]["response"] == f"sub:p{i}"
    assert handler.get_usage_summary().total_calls == 180 + 2 * 20


def test_pipelined_requests_answered_in_order(scripted_handler):
    handler = scripted_handler()
    with connect(handler) as sock:
        frames = b"".join(
            HEADER.pack(len(body)) + body
            for body in (
                json.dumps({"prompt": f"q{i}", "token": handler.token, "id": i}).encode()
                for i in range(20)
            )
        )
        sock.sendall(frames)
        responses = [read_json(sock) for _ in range(20)]
    assert [r["id"] for r in responses] == list(range(20))
    assert [r["chat_completion"]["response"] for r in responses] == [f"sub:q{i}" for i in range(20)]


def test_many_connections_at_once(scripted_handler):
    handler = scripted_handler()
    errors: list[str] = []

    def worker(n: int) -> None:
        try:
            with connect(handler) as sock:
                for i in range(20):
                    r = ask(sock, {"prompt": f"{n}-{i}", "token": handler.token})
                    if r["chat_completion"]["response"] != f"sub:{n}-{i}":
                        errors.append(f"wrong answer for {n}-{i}")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    assert handler.get_usage_summary().total_calls == 16 * 20


# ---------------------------------------------------------------------------
# Authentication
# ---------------------------------------------------------------------------


def test_each_handler_has_its_own_token(scripted_handler):
    a, b = scripted_handler(), scripted_handler()
    assert a.token and b.token
    assert a.token != b.token
    assert len(a.token) >= 32


@pytest.mark.parametrize(
    "token",
    [None, "", "wrong-token", 12345, ["x"], "é-non-ascii", "TOKEN-PREFIX"],
    ids=["missing", "empty", "wrong", "int", "list", "non-ascii", "prefix"],
)
def test_request_without_valid_token_is_refused_and_server_keeps_serving(scripted_handler, token):
    handler = scripted_handler()
    if token == "TOKEN-PREFIX":
        token = handler.token[:-1]
    request = {"prompt": "secret?", "id": 5}
    if token is not None:
        request["token"] = token
    with connect(handler) as sock:
        refused = ask(sock, request)
        assert_error_shape(refused)
        assert "token" in refused["error"].lower() or "unauth" in refused["error"].lower()
        batch_refused = ask(sock, {**request, "prompt": None, "prompts": ["a", "b"]})
        assert_error_shape(batch_refused)
        assert_serving(handler, sock)  # same connection
    assert_serving(handler)  # a new connection
    # Nothing reached the model for the refused requests.
    assert handler.get_usage_summary().total_calls == 2
    assert all(m[-1]["content"] == "still there?" for m in handler.default_client.calls)


def test_handler_without_token_accepts_plain_reference_frames():
    handler = LMHandler(ScriptedLM(sub_responses=lambda m: "ok"), require_token=False)
    handler.start()
    try:
        assert handler.token is None
        with connect(handler) as sock:
            response = ask(sock, {"prompt": "reference client"})
        assert response["chat_completion"]["response"] == "ok"
    finally:
        handler.stop()


# ---------------------------------------------------------------------------
# Malformed and oversized frames
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"{this is not json",
        b"",
        b'["a", "list"]',
        b'"just a string"',
        b"42",
        b"null",
        b"\xff\xfe\xfa invalid utf-8",
        b'{"prompt": "\xc3\x28"}',
        b"[" * 100_000 + b"]" * 100_000,
    ],
    ids=[
        "invalid-json",
        "empty",
        "list",
        "string",
        "number",
        "null",
        "bad-utf8",
        "bad-utf8-in-object",
        "deeply-nested",
    ],
)
def test_malformed_frame_answered_with_error_and_server_keeps_serving(scripted_handler, body):
    handler = scripted_handler()
    with connect(handler) as sock:
        authenticate(sock, handler)  # (the deeply nested body is over the pre-auth cap)
        send_raw(sock, body)
        response = read_json(sock)
        assert_error_shape(response)
        assert_serving(handler, sock)
    assert_serving(handler)


def test_valid_json_with_odd_fields_does_not_crash(scripted_handler):
    handler = scripted_handler()
    odd_requests = [
        {"prompt": "x", "model": ["not", "a", "name"]},
        {"prompt": "x", "model": {"a": 1}},
        {"prompt": "x", "depth": "one"},
        {"prompt": 12345},
        {"prompt": {"key": "value"}},
        {"prompt": "lone surrogate \ud800 inside"},
        {"prompts": [None, 1, "x"]},
        {"prompt": "x", "kind": "rlm"},
    ]
    with connect(handler) as sock:
        for request in odd_requests:
            response = ask(sock, {**request, "token": handler.token})
            assert set(response) >= {"chat_completion", "chat_completions", "error"}
        assert_serving(handler, sock)
    assert_serving(handler)


def test_oversized_frame_answered_with_error(scripted_handler):
    handler = scripted_handler()
    handler.max_frame_bytes = 200
    with connect(handler) as sock:
        # Only the header is sent: the server must answer without waiting for the body.
        sock.sendall(HEADER.pack(10_000))
        response = read_json(sock)
        assert_error_shape(response)
        assert "exceeds" in response["error"]
    assert_serving(handler)  # small frames still pass on a new connection


def test_oversized_frame_with_body_answered_with_error(scripted_handler):
    handler = scripted_handler()
    handler.max_frame_bytes = 200
    with connect(handler) as sock:
        send_json(sock, {"prompt": "x" * 1000, "token": handler.token})
        response = read_json(sock)
        assert_error_shape(response)
        assert "exceeds" in response["error"]
    assert_serving(handler)


def test_client_vanishing_mid_frame_does_not_hurt_the_server(scripted_handler):
    handler = scripted_handler()
    sock = connect(handler)
    sock.sendall(HEADER.pack(1000) + b'{"prompt": "cut sh')
    sock.close()
    sock = connect(handler)
    sock.sendall(b"\x00\x00")
    sock.close()
    assert_serving(handler)


# ---------------------------------------------------------------------------
# stop()
# ---------------------------------------------------------------------------


def run_with_deadline(fn, seconds: float = 10.0) -> None:
    """Run ``fn`` in a thread; fail (without hanging the suite) if it never returns."""
    done = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            done.set()

    threading.Thread(target=target, daemon=True).start()
    assert done.wait(seconds), f"{fn} did not return"
    assert not errors, errors


def test_stop_returns_and_refuses_new_connections():
    handler = LMHandler(ScriptedLM(sub_responses=lambda m: "ok"))
    address = handler.start()
    assert send_lm_request(address, LMRequest(prompt="x")).success
    run_with_deadline(handler.stop)
    with pytest.raises(OSError):
        socket.create_connection(address, timeout=5).close()
    run_with_deadline(handler.stop)  # a second stop is harmless


def test_stop_closes_open_connections():
    handler = LMHandler(ScriptedLM(sub_responses=lambda m: "ok"))
    handler.start()
    idle = connect(handler)
    used = connect(handler)
    try:
        assert ask(used, {"prompt": "x", "token": handler.token})["error"] is None
        run_with_deadline(handler.stop)
        for sock in (idle, used):
            sock.settimeout(10)
            try:
                data = sock.recv(1)
            except ConnectionResetError:
                data = b""
            assert data == b""  # the server closed it
    finally:
        idle.close()
        used.close()


def test_stop_during_a_slow_batch_returns(scripted_handler):
    release = threading.Event()
    started = threading.Event()

    def script(messages):
        started.set()
        release.wait(10)
        return "late"

    handler = scripted_handler(sub_responses=script)
    sock = connect(handler)
    try:
        send_json(sock, {"prompts": ["a", "b"], "token": handler.token})
        assert started.wait(10)
        batch_thread, batch_loop = handler._loop_thread, handler._loop
        run_with_deadline(handler.stop)
        sock.settimeout(10)
        try:
            data = sock.recv(1)
        except ConnectionResetError:
            data = b""
        assert data == b""
        # The batch loop does not outlive the handler, even with a call still blocked.
        batch_thread.join(10)
        assert not batch_thread.is_alive()
        assert batch_loop.is_closed()
    finally:
        release.set()
        sock.close()


def test_context_manager_starts_and_stops():
    with LMHandler(ScriptedLM(sub_responses=lambda m: "cm")) as handler:
        address = handler.address
        assert send_lm_request(address, LMRequest(prompt="x")).chat_completion.response == "cm"
    with pytest.raises(OSError):
        socket.create_connection(address, timeout=5).close()


# ---------------------------------------------------------------------------
# Routing
# ---------------------------------------------------------------------------


def named(name: str) -> ScriptedLM:
    return ScriptedLM(sub_responses=lambda m: f"{name}:{m[-1]['content']}", model_name=name)


@pytest.fixture
def routed():
    handler = LMHandler(named("default"), other_backend_client=named("other"))
    handler.register_client("special", named("special"))
    handler.start()
    yield handler
    handler.stop()


def answer(handler: LMHandler, **request) -> str:
    response = send_lm_request(handler.address, LMRequest(prompt="q", **request))
    assert response.success, response.error
    return response.chat_completion.response


def test_routing_default_at_depth_zero(routed):
    assert answer(routed) == "default:q"
    assert answer(routed, depth=0) == "default:q"


def test_routing_depth_one_goes_to_other_backend(routed):
    assert answer(routed, depth=1) == "other:q"
    assert answer(routed, depth=2) == "other:q"
    assert answer(routed, model="other") == "other:q"  # a configured name may be asked for


def test_routing_registered_name_wins(routed):
    assert answer(routed, model="special") == "special:q"
    assert answer(routed, model="special", depth=1) == "special:q"
    assert answer(routed, model="default", depth=1) == "default:q"


def test_routing_for_batches(routed):
    def batch(**kwargs) -> list[str]:
        return [
            r.chat_completion.response
            for r in send_lm_request_batched(routed.address, ["a", "b"], **kwargs)
        ]

    assert batch() == ["default:a", "default:b"]
    assert batch(depth=1) == ["other:a", "other:b"]
    assert batch(model="special", depth=1) == ["special:a", "special:b"]


def test_routing_usage_is_per_model(routed):
    answer(routed)
    answer(routed, depth=1)
    answer(routed, depth=1)
    answer(routed, model="special")
    per_model = routed.get_usage_summary().model_usage_summaries
    assert {k: v.total_calls for k, v in per_model.items()} == {
        "default": 1,
        "other": 2,
        "special": 1,
    }


def test_routing_without_other_backend_uses_default_at_depth_one(scripted_handler):
    handler = scripted_handler()
    assert handler.get_client(None, 1) is handler.default_client
    assert answer(handler, depth=1) == "sub:q"


# ---------------------------------------------------------------------------
# A client written against the 0.1.x API (no _generate)
# ---------------------------------------------------------------------------


class LegacyClient(BaseLM):
    """Overrides exactly what a 0.1.x client did: completion, acompletion, usage getters."""

    def __init__(self, model_name: str = "legacy-model", **kwargs):
        super().__init__(model_name=model_name, **kwargs)
        self.calls = 0
        self.last = ModelUsageSummary()
        self.lock = threading.Lock()

    def _answer(self, prompt) -> str:
        text = prompt if isinstance(prompt, str) else json.dumps(prompt)
        with self.lock:
            self.calls += 1
            self.last = ModelUsageSummary(
                total_calls=1, total_input_tokens=len(text), total_output_tokens=2
            )
        return "legacy:" + text

    def completion(self, prompt, model=None) -> str:
        return self._answer(prompt)

    async def acompletion(self, prompt, model=None) -> str:
        await asyncio.sleep(0)
        return self._answer(prompt)

    def get_usage_summary(self) -> UsageSummary:
        return UsageSummary({self.model_name: ModelUsageSummary(total_calls=self.calls)})

    def get_last_usage(self) -> ModelUsageSummary:
        return self.last


def test_legacy_client_single_request():
    client = LegacyClient()
    assert not client.implements_generate()
    with LMHandler(client) as handler:
        response = send_lm_request(handler.address, LMRequest(prompt="hi"))
        assert response.success, response.error
        assert response.chat_completion.response == "legacy:hi"
        usage = response.chat_completion.usage_summary.model_usage_summaries["legacy-model"]
        assert (usage.total_calls, usage.total_input_tokens, usage.total_output_tokens) == (
            1,
            2,
            2,
        )
        assert handler.get_usage_summary().total_calls == 1


def test_legacy_client_batched_request():
    client = LegacyClient()
    with LMHandler(client) as handler:
        prompts = [f"p{i}" for i in range(10)]
        responses = send_lm_request_batched(handler.address, prompts)
        assert [r.chat_completion.response for r in responses] == [f"legacy:{p}" for p in prompts]
        assert client.calls == 10
        assert handler.get_usage_summary().total_calls == 10


def test_legacy_client_usage_is_recorded_under_the_model_that_answered():
    with LMHandler(LegacyClient()) as handler:
        response = send_lm_request(handler.address, LMRequest(prompt="x"))
        assert response.chat_completion.response == "legacy:x"
        assert response.chat_completion.root_model == "legacy-model"
        send_lm_request_batched(handler.address, ["a"], model="legacy-model")
        per_model = handler.get_usage_summary().model_usage_summaries
        assert list(per_model) == ["legacy-model"]
        assert per_model["legacy-model"].total_calls == 2


def test_legacy_client_failure_is_an_error_item():
    class Flaky(LegacyClient):
        async def acompletion(self, prompt, model=None) -> str:
            if prompt == "bad":
                raise ConnectionError("provider down")
            return await super().acompletion(prompt, model)

    with LMHandler(Flaky()) as handler:
        responses = send_lm_request_batched(handler.address, ["ok", "bad"])
        assert responses[0].chat_completion.response == "legacy:ok"
        assert "provider down" in responses[1].error
        assert handler.get_usage_summary().total_calls == 1


# ---------------------------------------------------------------------------
# Batch concurrency
# ---------------------------------------------------------------------------


class ConcurrencyProbe:
    """A sub_responses callable that records how many calls run at the same time.

    Calls meet at a barrier of ``meet`` parties, so reaching it proves that many
    ran together; the counter shows the most that ever ran together.
    """

    def __init__(self, meet: int):
        self.lock = threading.Lock()
        self.current = 0
        self.maximum = 0
        self.barrier = threading.Barrier(meet, timeout=10)

    def __call__(self, messages) -> str:
        with self.lock:
            self.current += 1
            self.maximum = max(self.maximum, self.current)
        try:
            self.barrier.wait()
        finally:
            with self.lock:
                self.current -= 1
        return "done:" + messages[-1]["content"]


def test_batch_concurrency_is_bounded():
    probe = ConcurrencyProbe(meet=4)
    handler = LMHandler(ScriptedLM(sub_responses=probe, delay=0.01), batch_max_concurrent=4)
    handler.start()
    try:
        prompts = [f"p{i}" for i in range(20)]
        responses = send_lm_request_batched(handler.address, prompts)
        assert [r.error for r in responses] == [None] * 20
        assert [r.chat_completion.response for r in responses] == [f"done:{p}" for p in prompts]
    finally:
        handler.stop()
    assert 1 < probe.maximum <= 4


def test_batch_concurrency_one_runs_items_one_at_a_time():
    probe = ConcurrencyProbe(meet=1)
    handler = LMHandler(ScriptedLM(sub_responses=probe), batch_max_concurrent=1)
    handler.start()
    try:
        responses = send_lm_request_batched(handler.address, [f"p{i}" for i in range(8)])
        assert all(r.success for r in responses)
    finally:
        handler.stop()
    assert probe.maximum == 1


def test_two_batches_from_two_connections_run_side_by_side():
    # Each batch needs an item of the other batch to be running at the same time.
    probe = ConcurrencyProbe(meet=2)
    handler = LMHandler(ScriptedLM(sub_responses=probe), batch_max_concurrent=1)
    handler.start()
    results: dict[str, list] = {}

    def run(name: str) -> None:
        results[name] = send_lm_request_batched(handler.address, [f"{name}{i}" for i in range(3)])

    try:
        threads = [threading.Thread(target=run, args=(n,)) for n in ("a", "b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert [r.error for r in results["a"] + results["b"]] == [None] * 6
    finally:
        handler.stop()
    assert probe.maximum == 2


# ---------------------------------------------------------------------------
# In-process use from the loop
# ---------------------------------------------------------------------------


def test_direct_completion_is_counted(scripted_handler):
    handler = scripted_handler()
    assert handler.completion("direct") == "sub:direct"
    record = handler.completion_record("again", depth=1)
    assert record.response == "sub:again"
    assert handler.get_usage_summary().total_calls == 2


def test_handlers_share_one_accept_thread_that_ends_with_the_last():
    from rlm.comms import protocol
    from rlm.core.comms_utils import socket_request

    others = dict(protocol._local_handlers)  # handlers another test left running, if any
    handlers = [LMHandler(ScriptedLM(sub_responses=lambda m, i=i: f"h{i}")) for i in range(5)]
    for handler in handlers:
        handler.start()
    accept = [t for t in threading.enumerate() if t.name == "rlm-lm-accept"]
    try:
        assert len(accept) == 1
        for i, handler in enumerate(handlers):  # each listener is served, over real sockets
            reply = socket_request(handler.address, {"prompt": "x"})
            assert reply["chat_completion"]["response"] == f"h{i}"
    finally:
        for handler in handlers:
            handler.stop()
    if not others:  # the thread ends only once no handler at all listens
        accept[0].join(30)
        assert not accept[0].is_alive()
    with LMHandler(ScriptedLM(sub_responses=lambda m: "again")) as handler:  # a new one starts
        assert socket_request(handler.address, {"prompt": "x"})["chat_completion"]["response"] == (
            "again"
        )
