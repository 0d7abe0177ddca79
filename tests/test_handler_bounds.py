"""The LMHandler bounded against whatever can reach its socket (issue 10).

Real sockets on 127.0.0.1, real handlers, real subprocesses: the pre-auth
frame cap, the auth frame, the connection cap, idle and auth timeouts, EMFILE
recovery, the batch cap, forged frames both ways, model names limited to the
configured clients, and the ways an out-of-process environment gets the token.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from rlm.clients.scripted import ScriptedLM
from rlm.core.comms_utils import (
    MAX_PREAUTH_FRAME_BYTES,
    TOKEN_ENV_VAR,
    FrameTooLargeError,
    HandlerAddress,
    LMRequest,
    LMResponse,
    check_frame_length,
    close_pooled_connections,
    read_frame,
    send_lm_request,
    send_lm_request_batched,
    socket_request,
)
from rlm.core.lm_handler import LMHandler, LMRequestHandler, ThreadingLMServer
from rlm.environments.local_repl import LocalREPL

HEADER = struct.Struct(">I")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def echo(messages) -> str:
    return "sub:" + str(messages[-1]["content"])


@pytest.fixture
def make_handler():
    handlers: list[LMHandler] = []

    def make(**kwargs) -> LMHandler:
        client = kwargs.pop("client", None) or ScriptedLM(sub_responses=echo)
        handler = LMHandler(client, **kwargs)
        handler.start()
        handlers.append(handler)
        return handler

    yield make
    for handler in handlers:
        handler.stop()


def connect(handler: LMHandler) -> socket.socket:
    return socket.create_connection(tuple(handler.address), timeout=30)


def send_json(sock: socket.socket, data) -> None:
    body = json.dumps(data).encode()
    sock.sendall(HEADER.pack(len(body)) + body)


def read_exact(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ConnectionError("closed")
        out += chunk
    return out


def read_json(sock: socket.socket) -> dict:
    (length,) = HEADER.unpack(read_exact(sock, 4))
    return json.loads(read_exact(sock, length))


def closed_by_peer(sock: socket.socket) -> bool:
    """Whether the server closed ``sock`` (waits for it, up to the socket's timeout)."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def wait_for(predicate, seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


# ---------------------------------------------------------------------------
# Frame caps and the pre-auth check
# ---------------------------------------------------------------------------


def test_check_frame_length_refuses_before_any_allocation():
    assert check_frame_length(HEADER.pack(10), 10) == 10
    with pytest.raises(FrameTooLargeError) as info:
        check_frame_length(HEADER.pack(2**31), 1024)
    assert (info.value.length, info.value.limit) == (2**31, 1024)


def test_read_frame_on_any_channel_checks_the_cap_first():
    asked: list[int] = []
    data = HEADER.pack(2_000_000_000)

    def read_exact_fn(n: int):
        asked.append(n)
        return data[:n] if n == 4 else b"x" * n

    with pytest.raises(FrameTooLargeError):
        read_frame(read_exact_fn, max_bytes=1 << 20)
    assert asked == [4]  # the 2 GB body was never asked for
    payload = json.dumps({"a": 1}).encode()
    chunks = iter([HEADER.pack(len(payload)), payload])
    assert json.loads(read_frame(lambda n: next(chunks))) == {"a": 1}
    assert read_frame(lambda n: None) is None


def test_unauthenticated_large_frame_is_refused_before_its_body(make_handler):
    handler = make_handler()
    with connect(handler) as sock:
        # Announce 100 MB (under the 512 MB cap) and send nothing more: the answer must
        # come at once, from the header alone, naming the auth frame.
        sock.sendall(HEADER.pack(100 * 1024 * 1024))
        response = read_json(sock)
        assert response["chat_completion"] is None
        assert response["error"].startswith("Unauthorized")
        assert "auth" in response["error"] and "exceeds" in response["error"]
        assert closed_by_peer(sock)
    assert handler.stats["oversized_frames"] == 1


def test_auth_frame_lifts_the_pre_auth_cap(make_handler):
    handler = make_handler()
    big = "x" * (4 * MAX_PREAUTH_FRAME_BYTES)
    with connect(handler) as sock:
        send_json(sock, {"kind": "auth", "token": handler.token})  # no answer when right
        send_json(sock, {"prompt": big, "id": 1})  # no token needed any more
        response = read_json(sock)
        assert response["error"] is None
        assert response["chat_completion"]["response"] == "sub:" + big
        assert response["id"] == 1


def test_token_in_a_small_request_works_without_the_auth_frame(make_handler):
    handler = make_handler()
    with connect(handler) as sock:
        response = (send_json(sock, {"prompt": "hi", "token": handler.token}), read_json(sock))[1]
        assert response["chat_completion"]["response"] == "sub:hi"
        # The connection showed the token, so a large frame may follow (with its token).
        big = "y" * (2 * MAX_PREAUTH_FRAME_BYTES)
        send_json(sock, {"prompt": big, "token": handler.token})
        assert read_json(sock)["chat_completion"]["response"] == "sub:" + big
        # A frame without the token is still refused: only the auth frame covers a connection.
        send_json(sock, {"prompt": "no token"})
        assert "Unauthorized" in read_json(sock)["error"]


def test_wrong_auth_frame_is_answered_and_the_connection_closed(make_handler):
    handler = make_handler()
    with connect(handler) as sock:
        send_json(sock, {"kind": "auth", "token": "0" * 32})
        response = read_json(sock)
        assert "Unauthorized" in response["error"]
        assert closed_by_peer(sock)
    assert handler.default_client.get_usage_summary().total_calls == 0


def test_repeated_wrong_tokens_close_the_connection(make_handler):
    handler = make_handler()
    with connect(handler) as sock:
        for _ in range(8):
            send_json(sock, {"prompt": "guess", "token": "wrong"})
            assert "Unauthorized" in read_json(sock)["error"]
        assert closed_by_peer(sock)


def test_authenticated_frame_over_the_frame_cap_is_refused(make_handler):
    handler = make_handler(max_frame_bytes=1000)
    with connect(handler) as sock:
        send_json(sock, {"kind": "auth", "token": handler.token})
        sock.sendall(HEADER.pack(5000))
        response = read_json(sock)
        assert "exceeds" in response["error"] and "Unauthorized" not in response["error"]


def test_helpers_send_large_prompts_through_the_auth_frame(make_handler):
    handler = make_handler()
    big = "z" * (1024 * 1024)
    response = send_lm_request(handler.address, LMRequest(prompt=big))
    assert response.success, response.error
    assert response.chat_completion.response == "sub:" + big


# ---------------------------------------------------------------------------
# Connections: cap, idle and auth timeouts, EMFILE
# ---------------------------------------------------------------------------


def test_connection_cap_refuses_the_next_one_with_an_error(make_handler):
    handler = make_handler(max_connections=3)
    socks = [connect(handler) for _ in range(3)]
    try:
        for sock in socks:  # make sure each is being served
            send_json(sock, {"prompt": "held", "token": handler.token})
            assert read_json(sock)["error"] is None
        with connect(handler) as extra:
            response = read_json(extra)
            assert "too many connections" in response["error"]
            assert closed_by_peer(extra)
        assert handler.stats["refused_connections"] == 1
    finally:
        for sock in socks:
            sock.close()
    assert wait_for(lambda: not handler._conns)  # the server noticed the closes
    assert send_lm_request(handler.address, LMRequest(prompt="again")).success


def test_idle_connection_is_closed_and_the_helpers_reconnect(make_handler):
    handler = make_handler(idle_timeout=0.2)
    with connect(handler) as sock:
        send_json(sock, {"kind": "auth", "token": handler.token})
        assert closed_by_peer(sock)  # nothing more was sent: closed after the idle timeout
    # socket_request keeps its connection (send_lm_request in this process uses none).
    assert socket_request(handler.address, {"prompt": "one"})["error"] is None
    assert wait_for(lambda: handler.stats["idle_closed"] >= 2)  # the pooled one timed out too
    response = socket_request(handler.address, {"prompt": "two"})
    assert response["error"] is None and response["chat_completion"]["response"] == "sub:two"


def test_connection_that_never_authenticates_is_closed(make_handler):
    handler = make_handler(auth_timeout=0.2, idle_timeout=600)
    with connect(handler) as sock:
        assert closed_by_peer(sock)
    with connect(handler) as sock:
        sock.sendall(HEADER.pack(100))  # slow loris: a header, then nothing
        assert closed_by_peer(sock)


EMFILE_SERVER = textwrap.dedent(
    """
    import resource, sys, time
    sys.path.insert(0, sys.argv[1])
    from rlm.clients.scripted import ScriptedLM
    from rlm.core.lm_handler import LMHandler

    handler = LMHandler(ScriptedLM(sub_responses=lambda m: "alive"), max_connections=10_000)
    handler.start()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (48, hard))
    print(handler.port, handler.token, flush=True)
    deadline = time.monotonic() + 60
    while handler.stats["accept_errors"] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    print("emfile", handler.stats["accept_errors"], flush=True)
    sys.stdin.readline()  # the test says when to report
    print("stats", handler.stats["shed_connections"], flush=True)
    handler.stop()
    """
)


def test_accept_loop_recovers_from_emfile(tmp_path):
    script = tmp_path / "emfile_server.py"
    script.write_text(EMFILE_SERVER)
    proc = subprocess.Popen(
        [sys.executable, str(script), ROOT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    held: list[socket.socket] = []
    try:
        port_text, token = proc.stdout.readline().split()
        address = ("127.0.0.1", int(port_text))
        # Far more connections than the server has descriptors for.
        for _ in range(80):
            try:
                held.append(socket.create_connection(address, timeout=30))
            except OSError:
                break
        line = proc.stdout.readline().split()
        assert line[0] == "emfile" and int(line[1]) >= 1, line
        for sock in held:
            sock.close()
        held.clear()

        # Descriptors are free again: the same accept loop serves a new connection.
        def served() -> bool:
            try:
                reply = socket_request(
                    HandlerAddress(*address, token), {"prompt": "after"}, timeout=30
                )
            except OSError:
                return False
            return reply.get("chat_completion") is not None

        assert wait_for(served)
        proc.stdin.write("report\n")
        proc.stdin.flush()
        stats = proc.stdout.readline().split()
        assert stats[0] == "stats" and int(stats[1]) >= 1  # waiting ones got an error frame
        assert proc.wait(timeout=30) == 0
    finally:
        for sock in held:
            sock.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


# ---------------------------------------------------------------------------
# The batch cap
# ---------------------------------------------------------------------------


def test_batch_over_the_cap_is_refused_with_a_clear_error(make_handler):
    handler = make_handler(max_batch_size=5)
    ok = send_lm_request_batched(handler.address, [f"p{i}" for i in range(5)])
    assert all(r.success for r in ok)
    refused = send_lm_request_batched(handler.address, [f"p{i}" for i in range(6)])
    assert len(refused) == 6 and not any(r.success for r in refused)
    assert "6 prompts exceeds the limit of 5" in refused[0].error
    assert handler.get_usage_summary().total_calls == 5  # nothing of the big batch ran
    repl = LocalREPL(lm_handler_address=handler.address)
    try:
        repl.execute_code("out = llm_query_batched(['a'] * 6)")
        assert all(x.startswith("Error:") and "limit of 5" in x for x in repl.locals["out"])
    finally:
        repl.cleanup()


def test_default_batch_cap_bounds_a_huge_batch(make_handler):
    handler = make_handler()
    response = send_lm_request(handler.address, LMRequest(prompts=["x"] * 10_001))
    assert "exceeds the limit of 10,000" in response.error
    assert handler.get_usage_summary().total_calls == 0


# ---------------------------------------------------------------------------
# Forged frames, both ways
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_body",
    [
        {"prompt": "x", "model": 7},
        {"prompt": "x", "depth": True, "id": {"nested": "id"}},
        {"prompts": {"not": "a list"}},
        {"prompt": "x", "kind": ["rlm"]},
        {"kind": "AUTH"},
        {"prompt": None, "prompts": None},
    ],
)
def test_forged_request_frames_get_an_error_frame(make_handler, request_body):
    handler = make_handler()
    with connect(handler) as sock:
        send_json(sock, {**request_body, "token": handler.token})
        response = read_json(sock)
        assert set(response) >= {"chat_completion", "chat_completions", "error"}
        send_json(sock, {"prompt": "still", "token": handler.token})
        assert read_json(sock)["chat_completion"]["response"] == "sub:still"


@pytest.mark.parametrize(
    "forged",
    [
        {"chat_completion": {"response": {"a": "dict"}}},
        {"chat_completion": ["list"]},
        {"chat_completion": {"response": "x", "usage_summary": "nope"}},
        {"chat_completion": {"response": "x", "execution_time": "slow"}},
        {"chat_completions": "not a list"},
        {"chat_completions": [1, 2]},
        {"error": {"not": "text"}},
        {"something": "else"},
        ["a", "list"],
    ],
)
def test_forged_response_frames_become_errors_never_exceptions(forged):
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def answer_forged(conn: socket.socket) -> None:
        with conn:
            try:
                while True:
                    (n,) = HEADER.unpack(read_exact(conn, 4))
                    body = json.loads(read_exact(conn, n))
                    if body.get("kind") == "auth":
                        continue
                    data = json.dumps(forged).encode()
                    conn.sendall(HEADER.pack(len(data)) + data)
            except (ConnectionError, OSError):
                pass

    def impostor() -> None:
        listener.settimeout(30)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.settimeout(30)
            threading.Thread(target=answer_forged, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=impostor, daemon=True)
    thread.start()
    address = HandlerAddress(*listener.getsockname(), "t" * 32)
    try:
        response = send_lm_request(address, LMRequest(prompt="p"))
        assert isinstance(response, LMResponse) and not response.success
        batch = send_lm_request_batched(address, ["a", "b"])
        assert all(not r.success for r in batch)
        repl = LocalREPL(lm_handler_address=address)
        try:
            repl.execute_code("a = llm_query('q')\nb = llm_query_batched(['q', 'r'])")
            assert isinstance(repl.locals["a"], str) and repl.locals["a"].startswith("Error:")
            assert all(isinstance(x, str) and x.startswith("Error:") for x in repl.locals["b"])
        finally:
            repl.cleanup()
    finally:
        close_pooled_connections()
        stop.set()
        try:
            listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        except OSError:
            pass
        listener.close()
        thread.join(timeout=30)


# ---------------------------------------------------------------------------
# Models are what the user configured
# ---------------------------------------------------------------------------


def test_unknown_model_is_refused_and_lists_the_configured_ones(make_handler):
    calls: list[str] = []

    class Recording(ScriptedLM):
        def _generate(self, messages, model=None):
            calls.append(model or self.model_name)
            return super()._generate(messages, model)

    other = Recording(sub_responses=echo, model_name="cheap-sub")
    handler = make_handler(client=Recording(sub_responses=echo, model_name="root-m"))
    handler.register_client("cheap-sub", other)
    single = send_lm_request(handler.address, LMRequest(prompt="p", model="gpt-5-pro"))
    assert single.error.startswith("unknown model 'gpt-5-pro'")
    assert "'cheap-sub'" in single.error and "'root-m'" in single.error
    batch = send_lm_request_batched(handler.address, ["a", "b"], model="o1-pro")
    assert all("unknown model 'o1-pro'" in r.error for r in batch)
    rlm_kind = send_lm_request(handler.address, LMRequest(prompt="p", model="x", kind="rlm"))
    assert "unknown model" in rlm_kind.error
    assert calls == []  # nothing reached any client
    assert send_lm_request(handler.address, LMRequest(prompt="p", model="cheap-sub")).success
    assert calls == ["cheap-sub"]


def test_model_names_chosen_by_model_code_under_a_budget():
    from rlm import RLM

    code = (
        "```repl\n"
        "a = llm_query('hi', model='gpt-4o')\n"
        "b = llm_query_batched(['x', 'y'], model='claude-opus-4')\n"
        "c = rlm_query('sub task', model='o3-pro')\n"
        "d = llm_query('hi', model='helper')\n"
        "answer['content'] = repr([a, b, c, d]); answer['ready'] = True\n"
        "```"
    )
    rlm = RLM(
        backend="scripted",
        backend_kwargs={"responses": [code], "sub_responses": echo, "model_name": "root-m"},
        other_backends=["scripted"],
        other_backend_kwargs=[{"sub_responses": echo, "model_name": "helper"}],
        max_budget=0.01,
        max_depth=2,
    )
    result = rlm.completion("go")
    a, b, c, d = eval(result.response)  # noqa: S307 - our own repr of four strings
    assert a.startswith("Error: unknown model 'gpt-4o'")
    assert all(x.startswith("Error:") and "unknown model 'claude-opus-4'" in x for x in b)
    assert "unknown model 'o3-pro'" in c
    assert d == "sub:hi"
    assert set(result.usage_summary.model_usage_summaries) <= {"root-m", "helper"}


# ---------------------------------------------------------------------------
# The token for out-of-process environments
# ---------------------------------------------------------------------------


def test_handler_address_is_a_tuple_that_carries_the_token_unprinted(make_handler):
    handler = make_handler()
    address = handler.address
    host, port = address
    assert address == (host, port) and isinstance(address, tuple) and len(address) == 2
    assert address.token == handler.token
    assert handler.token not in repr(address) and handler.token not in str(address)
    assert handler.token not in json.dumps(address)
    assert pickle.loads(pickle.dumps(address)).token == handler.token
    import copy

    assert copy.deepcopy(address).token == handler.token


WORKER = textwrap.dedent(
    """
    import os, pickle, sys
    sys.path.insert(0, sys.argv[1])
    from rlm.core.comms_utils import LMRequest, send_lm_request
    mode = sys.argv[2]
    if mode == "pickle":
        address = pickle.loads(bytes.fromhex(sys.stdin.readline().strip()))
    else:
        address = ("127.0.0.1", int(sys.argv[3]))
    response = send_lm_request(address, LMRequest(prompt="from " + mode))
    print(response.chat_completion.response if response.success else "ERR " + response.error)
    """
)


@pytest.mark.parametrize("mode", ["pickle", "env", "none"])
def test_out_of_process_environment_gets_answers(make_handler, tmp_path, mode):
    handler = make_handler()
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV_VAR}
    if mode == "env":
        env[TOKEN_ENV_VAR] = handler.address.token  # the one line such an environment adds
    done = subprocess.run(
        [sys.executable, str(script), ROOT, mode, str(handler.port)],
        input=pickle.dumps(handler.address).hex() + "\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    out = done.stdout.strip()
    if mode == "none":
        assert out.startswith("ERR Unauthorized"), done.stderr
    else:
        assert out == f"sub:from {mode}", done.stderr


def test_raw_documented_frames_with_the_auth_frame_first(make_handler):
    handler = make_handler()
    token = handler.address.token
    with connect(handler) as sock:
        send_json(sock, {"kind": "auth", "token": token})  # the one added line
        send_json(sock, {"prompt": "documented", "model": None, "depth": 1})
        response = read_json(sock)
        assert response["chat_completion"]["response"] == "sub:documented"
        send_json(sock, {"prompts": ["a", "b"]})
        response = read_json(sock)
        assert [c["response"] for c in response["chat_completions"]] == ["sub:a", "sub:b"]


def test_rlms_server_classes_serve_a_handler(make_handler):
    handler = make_handler()
    server = ThreadingLMServer(("127.0.0.1", 0), LMRequestHandler)
    server.lm_handler = handler
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        address = HandlerAddress(*server.server_address, handler.token)
        response = send_lm_request(address, LMRequest(prompt="via rlms classes"))
        assert response.chat_completion.response == "sub:via rlms classes"
        with socket.create_connection(server.server_address, timeout=30) as sock:
            send_json(sock, {"prompt": "no token"})
            assert "Unauthorized" in read_json(sock)["error"]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=30)
