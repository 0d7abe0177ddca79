"""rlm.core.comms_utils: framing over real sockets, message shapes, the typed helpers."""

from __future__ import annotations

import json
import socket
import struct
import threading

import pytest

from rlm.core.comms_utils import (
    MAX_FRAME_BYTES,
    LMRequest,
    LMResponse,
    encode_frame,
    recv_frame_bytes,
    send_lm_request,
    send_lm_request_batched,
    socket_recv,
    socket_request,
    socket_send,
)
from rlm.core.types import ModelUsageSummary, RLMChatCompletion, UsageSummary
from rlm.utils.exceptions import ProtocolError

HEADER = struct.Struct(">I")


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.settimeout(30)
    b.settimeout(30)
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def loopback():
    """A connected TCP pair on 127.0.0.1."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname(), timeout=30)
    server, _ = listener.accept()
    server.settimeout(30)
    listener.close()
    yield client, server
    client.close()
    server.close()


def completion(response: str = "ok", prompt="p", error: str | None = None) -> RLMChatCompletion:
    return RLMChatCompletion(
        root_model="m",
        prompt=prompt,
        response=response,
        usage_summary=UsageSummary({"m": ModelUsageSummary(1, 2, 3)}),
        execution_time=0.1,
        error=error,
    )


# ---------------------------------------------------------------------------
# Framing
# ---------------------------------------------------------------------------


def test_frame_layout_is_length_prefixed_utf8_json():
    frame = encode_frame({"prompt": "héllo"})
    (length,) = HEADER.unpack(frame[:4])
    assert length == len(frame) - 4
    assert json.loads(frame[4:].decode("utf-8")) == {"prompt": "héllo"}


def test_send_recv_over_socketpair(pair):
    a, b = pair
    message = {"prompt": "hi", "depth": 1, "nested": {"list": [1, 2.5, None, True]}}
    socket_send(a, message)
    assert socket_recv(b) == message


def test_many_frames_back_to_back_over_loopback(loopback):
    client, server = loopback
    messages = [{"i": i, "text": "x" * i} for i in range(200)]
    for m in messages:
        socket_send(client, m)
    assert [socket_recv(server) for _ in messages] == messages


def test_unicode_survives(pair):
    a, b = pair
    message = {"prompt": "日本語 — émoji 🎉 \x00 \r\n tab\t"}
    socket_send(a, message)
    assert socket_recv(b) == message


def test_lone_surrogate_string_is_sent_not_crashed(pair):
    # Text decoded with errors="surrogateescape" holds lone surrogates; it must still travel.
    a, b = pair
    message = {"prompt": "bad byte: \udcff end"}
    socket_send(a, message)
    assert socket_recv(b) == message


def test_hundred_megabyte_frame_received_intact(loopback):
    client, server = loopback
    payload = "0123456789abcdef" * (100 * 1024 * 1024 // 16)  # 100 MiB of text
    sent_error: list[BaseException] = []

    def send() -> None:
        try:
            socket_send(client, {"prompt": payload})
        except BaseException as exc:  # pragma: no cover - reported below
            sent_error.append(exc)

    sender = threading.Thread(target=send)
    sender.start()
    received = socket_recv(server)
    sender.join(timeout=30)
    assert not sender.is_alive()
    assert not sent_error
    assert len(received["prompt"]) == len(payload)
    assert received["prompt"] == payload


def test_oversized_frame_refused_by_receiver(pair):
    a, b = pair
    socket_send(a, {"prompt": "x" * 1000})
    with pytest.raises(ProtocolError, match="exceeds"):
        recv_frame_bytes(b, max_bytes=100)


def test_oversized_frame_refused_by_socket_recv(pair):
    a, b = pair
    socket_send(a, {"prompt": "x" * 1000})
    with pytest.raises(ProtocolError):
        socket_recv(b, max_bytes=100)


def test_frame_at_the_limit_is_accepted(pair):
    a, b = pair
    frame = encode_frame({"p": "y" * 50})
    limit = len(frame) - 4
    a.sendall(frame)
    assert json.loads(recv_frame_bytes(b, max_bytes=limit)) == {"p": "y" * 50}


def test_header_announcing_more_than_max_frame_bytes_is_refused(pair):
    a, b = pair
    a.sendall(HEADER.pack(MAX_FRAME_BYTES + 1))  # only the header: no 512 MB needed
    with pytest.raises(ProtocolError):
        recv_frame_bytes(b)


def test_connection_closed_mid_frame_raises_connection_error(pair):
    a, b = pair
    a.sendall(HEADER.pack(100) + b'{"prompt": "only part')
    a.close()
    with pytest.raises(ConnectionError):
        recv_frame_bytes(b)


def test_connection_closed_mid_header_raises_connection_error(pair):
    a, b = pair
    a.sendall(b"\x00\x00")
    a.close()
    with pytest.raises(ConnectionError):
        socket_recv(b)


def test_clean_close_between_frames(pair):
    a, b = pair
    socket_send(a, {"n": 1})
    a.close()
    assert socket_recv(b) == {"n": 1}
    assert socket_recv(b) == {}
    assert recv_frame_bytes(b) is None


@pytest.mark.parametrize("body", [b"{not json", b"\xff\xfe\xfd", b""])
def test_invalid_payload_raises_protocol_error(pair, body):
    a, b = pair
    a.sendall(HEADER.pack(len(body)) + body)
    with pytest.raises(ProtocolError):
        socket_recv(b)


# ---------------------------------------------------------------------------
# Message shapes
# ---------------------------------------------------------------------------


def test_lm_request_single_shape():
    assert LMRequest(prompt="hi").to_dict() == {"prompt": "hi", "depth": 0}
    data = LMRequest(prompt=[{"role": "user", "content": "x"}], model="m", depth=1).to_dict()
    assert data == {"prompt": [{"role": "user", "content": "x"}], "model": "m", "depth": 1}


def test_lm_request_batched_shape_and_round_trip():
    request = LMRequest(prompts=["a", "b"], model="m", depth=1, token="t", id=7)
    data = request.to_dict()
    assert data == {"prompts": ["a", "b"], "model": "m", "depth": 1, "token": "t", "id": 7}
    assert "prompt" not in data
    back = LMRequest.from_dict(json.loads(json.dumps(data)))
    assert back == request
    assert back.is_batched
    assert not LMRequest(prompt="x").is_batched


def test_lm_request_from_reference_dict():
    back = LMRequest.from_dict({"prompt": "hi"})
    assert (back.prompt, back.prompts, back.model, back.depth, back.token) == (
        "hi",
        None,
        None,
        0,
        None,
    )
    assert LMRequest.from_dict({"prompt": "x", "depth": "deep"}).depth == 0


def test_lm_response_single_has_three_keys_two_null():
    data = LMResponse.success_response(completion("hello")).to_dict()
    assert set(data) == {"chat_completion", "chat_completions", "error"}
    assert data["chat_completions"] is None
    assert data["error"] is None
    assert data["chat_completion"]["response"] == "hello"
    back = LMResponse.from_dict(json.loads(json.dumps(data)))
    assert back.success
    assert not back.is_batched
    assert back.chat_completion == completion("hello")


def test_lm_response_batched_has_three_keys_two_null():
    items = [completion("a"), completion("", error="boom"), completion("c")]
    data = LMResponse.batched_success_response(items).to_dict()
    assert set(data) == {"chat_completion", "chat_completions", "error"}
    assert data["chat_completion"] is None
    assert data["error"] is None
    assert [c["response"] for c in data["chat_completions"]] == ["a", "", "c"]
    assert data["chat_completions"][1]["error"] == "boom"
    back = LMResponse.from_dict(json.loads(json.dumps(data)))
    assert back.is_batched
    assert back.chat_completions == items


def test_lm_response_error_has_three_keys_two_null():
    data = LMResponse.error_response("Unauthorized").to_dict()
    assert data == {"chat_completion": None, "chat_completions": None, "error": "Unauthorized"}
    back = LMResponse.from_dict(data)
    assert not back.success
    assert back.error == "Unauthorized"


def test_lm_response_empty_batch_and_id():
    data = LMResponse(chat_completions=[], id="req-1").to_dict()
    assert data == {"chat_completion": None, "chat_completions": [], "error": None, "id": "req-1"}
    back = LMResponse.from_dict(data)
    assert back.chat_completions == []
    assert back.id == "req-1"


def test_lm_response_without_content_becomes_error():
    assert LMResponse().to_dict()["error"]
    assert not LMResponse.from_dict({}).success
    assert not LMResponse.from_dict(None).success  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# Typed helpers against a real handler
# ---------------------------------------------------------------------------


def failing_on_bad(messages):
    content = messages[-1]["content"]
    if content == "bad":
        raise ValueError("scripted failure for 'bad'")
    return "sub:" + content


def test_send_lm_request_attaches_token(scripted_handler):
    handler = scripted_handler()
    assert handler.token  # requests without it are refused...
    response = send_lm_request(handler.address, LMRequest(prompt="ping"))
    assert response.success, response.error  # ...but our helper attaches it
    assert response.chat_completion.response == "sub:ping"
    assert response.chat_completion.prompt == "ping"


def test_socket_request_without_token_is_refused(scripted_handler):
    handler = scripted_handler()
    data = socket_request(handler.address, {"prompt": "x", "token": "not-the-token"})
    assert data["error"]
    assert data["chat_completion"] is None


def test_send_lm_request_batched_with_one_failing_item(scripted_handler):
    handler = scripted_handler(sub_responses=failing_on_bad)
    responses = send_lm_request_batched(handler.address, ["one", "bad", "three"])
    assert len(responses) == 3
    assert [r.success for r in responses] == [True, False, True]
    assert responses[0].chat_completion.response == "sub:one"
    assert responses[2].chat_completion.response == "sub:three"
    assert "scripted failure" in responses[1].error


def test_send_lm_request_batched_empty_list(scripted_handler):
    handler = scripted_handler()
    assert send_lm_request_batched(handler.address, []) == []


def test_send_lm_request_to_nothing_returns_error_response():
    with socket.create_server(("127.0.0.1", 0)) as probe:
        address = probe.getsockname()
    # Nothing listens there any more.
    response = send_lm_request(address, LMRequest(prompt="x"), timeout=5)
    assert not response.success
    assert "Request failed" in response.error
    batch = send_lm_request_batched(address, ["a", "b"], timeout=5)
    assert [r.success for r in batch] == [False, False]


def test_helpers_keep_working_after_handler_restart_on_same_thread(scripted_handler):
    first = scripted_handler()
    assert send_lm_request(first.address, LMRequest(prompt="a")).success
    first.stop()
    # The pooled connection to the stopped handler is stale; a new handler still works.
    second = scripted_handler()
    assert send_lm_request(second.address, LMRequest(prompt="b")).chat_completion.response == (
        "sub:b"
    )
    response = send_lm_request(first.address, LMRequest(prompt="c"), timeout=5)
    assert not response.success


# ---------------------------------------------------------------------------
# Requests to a handler of this process: no socket, the wire's semantics
# ---------------------------------------------------------------------------


def test_requests_within_the_process_open_no_connection(scripted_handler):
    from rlm.comms import protocol

    handler = scripted_handler()
    response = send_lm_request(handler.address, LMRequest(prompt="hi", id=7))
    assert response.success and response.chat_completion.response == "sub:hi"
    assert response.id == 7
    batch = send_lm_request_batched(handler.address, ["a", "b"])
    assert [r.chat_completion.response for r in batch] == ["sub:a", "sub:b"]
    assert not handler._conns  # nothing connected
    assert (handler.address[0], handler.address[1]) not in protocol._pool.conns
    assert handler.get_usage_summary().model_usage_summaries["scripted"].total_calls == 3


def test_within_the_process_the_token_is_still_checked(scripted_handler):
    from rlm.comms.protocol import HandlerAddress

    handler = scripted_handler()
    wrong = HandlerAddress(handler.address[0], handler.address[1], "not-the-token")
    response = send_lm_request(wrong, LMRequest(prompt="x"))
    assert not response.success and "Unauthorized" in response.error
    explicit = send_lm_request(handler.address, LMRequest(prompt="x", token="nope"))
    assert not explicit.success and "Unauthorized" in explicit.error
    assert handler.get_usage_summary().model_usage_summaries == {}


def test_within_the_process_prompts_arrive_as_the_wire_delivers_them(scripted_handler):
    seen = []

    def sub(messages):
        seen.append(messages)
        return "ok"

    handler = scripted_handler(sub_responses=sub)

    class Odd:
        def __repr__(self) -> str:
            return "<odd>"

    messages = [{"role": "user", "content": "first"}]
    record = send_lm_request(handler.address, LMRequest(prompt=messages)).chat_completion
    messages[0]["content"] = "changed later"  # the call had its own copy
    assert record.prompt == [{"role": "user", "content": "first"}]
    assert seen[0] == [{"role": "user", "content": "first"}]
    # JSON has no tuples, and writes other objects as their repr.
    send_lm_request(handler.address, LMRequest(prompt=("a", "b")))
    send_lm_request(handler.address, LMRequest(prompt=Odd()))
    assert seen[1] == [{"role": "user", "content": "a\nb"}]
    assert seen[2] == [{"role": "user", "content": "<odd>"}]


def test_within_the_process_the_frame_cap_holds(scripted_handler):
    from rlm.clients.scripted import ScriptedLM
    from rlm.comms.lm_handler import LMHandler

    handler = LMHandler(ScriptedLM(sub_responses=lambda m: "ok"), max_frame_bytes=1000)
    handler.start()
    try:
        response = send_lm_request(handler.address, LMRequest(prompt="z" * 5000))
        assert not response.success and "exceeds" in response.error
        assert send_lm_request(handler.address, LMRequest(prompt="small")).success
    finally:
        handler.stop()


def test_within_the_process_the_caller_waits_at_most_its_timeout(scripted_handler):
    release = threading.Event()

    def slow(messages):
        release.wait(30)
        return "late"

    handler = scripted_handler(sub_responses=slow)
    try:
        single = send_lm_request(handler.address, LMRequest(prompt="x"), timeout=0.2)
        assert not single.success and "timed out" in single.error
        batch = send_lm_request_batched(handler.address, ["a", "b"], timeout=0.2)
        assert all(not r.success and "not answered within the 0.2 s" in r.error for r in batch)
    finally:
        release.set()


def _fast_and_stuck(release: threading.Event):
    """Sub-answers: ``"stuck"`` waits for ``release``; any other prompt is answered at once."""

    def answer(messages):
        prompt = messages[-1]["content"]
        if prompt == "stuck":
            release.wait(30)
        return "answer:" + prompt

    return answer


def test_a_batch_that_outlives_its_timeout_keeps_the_answers_it_has(scripted_handler):
    """Loses nothing: at the caller's time limit the finished prompts keep their answers
    and only the unfinished one fails, in this process as over a socket."""
    release = threading.Event()
    handler = scripted_handler(sub_responses=_fast_and_stuck(release))
    handler.batch_max_concurrent = 2
    try:
        batch = send_lm_request_batched(handler.address, ["a", "stuck", "b", "c"], timeout=1.0)
        assert [r.success for r in batch] == [True, False, True, True]
        assert [r.chat_completion.response for r in batch if r.success] == [
            "answer:a", "answer:b", "answer:c"
        ]  # fmt: skip
        assert "not answered within the 1 s the caller waits" in batch[1].error
    finally:
        release.set()


def test_over_a_socket_the_handler_answers_a_batch_before_its_asker_gives_up(scripted_handler):
    release = threading.Event()
    handler = scripted_handler(sub_responses=_fast_and_stuck(release))
    handler.batch_max_concurrent = 2
    try:
        request = LMRequest(prompts=["a", "stuck", "b"], timeout=2.0)
        data = socket_request(handler.address, request.to_dict(), timeout=2.0)  # a real socket
        response = LMResponse.from_dict(data)
        assert response.success
        answers = [c["response"] for c in data["chat_completions"]]
        assert answers == ["answer:a", "", "answer:b"]
        assert "not answered within" in response.chat_completions[1].error
        # Without a timeout in the request, the handler waits for the whole batch.
        assert LMRequest.from_dict({"prompts": ["a"], "timeout": True}).timeout is None
        assert LMRequest.from_dict({"prompts": ["a"], "timeout": -1}).timeout is None
    finally:
        release.set()


def test_a_stopped_handler_is_reached_over_the_socket_again(scripted_handler):
    handler = scripted_handler()
    address = handler.address
    handler.stop()
    response = send_lm_request(address, LMRequest(prompt="x"), timeout=5)
    assert not response.success and "Request failed" in response.error


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_a_forked_child_reaches_the_parents_handler_over_the_socket(scripted_handler):
    """The child has copies of the parent's handlers, not their threads: its requests go
    to the parent, and its own pool and handlers start afresh."""
    import os

    from rlm.clients.scripted import ScriptedLM
    from rlm.comms import workers
    from rlm.comms.lm_handler import LMHandler

    handler = scripted_handler()
    workers.submit(lambda: None).result(30)  # the parent's pool has an idle thread now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running any cleanup
        try:
            got = send_lm_request(handler.address, LMRequest(prompt="from the child"))
            pooled = workers.submit(lambda: "pool").result(30)
            with LMHandler(ScriptedLM(sub_responses=lambda m: "own")) as own:
                mine = send_lm_request(own.address, LMRequest(prompt="x")).chat_completion
                served = socket_request(own.address, {"prompt": "y"})["chat_completion"]
            text = f"{got.chat_completion.response}|{pooled}|{mine.response}|{served['response']}"
        except BaseException as exc:
            text = f"failed: {exc!r}"
        os.write(write, text.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        text = pipe.read()
    os.waitpid(pid, 0)
    assert text == "sub:from the child|pool|own|own"
    summary = handler.get_usage_summary().model_usage_summaries
    assert summary["scripted"].total_calls == 1  # the parent answered it
