"""Adaptive concurrency of llm_query_batched (rlm.comms.adaptive): AIMD against a loopback
server that answers 429 above N concurrent requests, through the real openai client."""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rlm.clients import get_client
from rlm.clients.scripted import ScriptedLM
from rlm.comms import adaptive
from rlm.comms.adaptive import AdaptiveLimit, is_rate_limit, retry_after
from rlm.comms.limiter import CallLimiter
from rlm.core.comms_utils import send_lm_request_batched
from rlm.core.lm_handler import LMHandler

N = 6  # the server's concurrency limit


class LimitedServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512  # the first burst opens START connections at once

    def __init__(self, limit: int):
        super().__init__(("127.0.0.1", 0), LimitedHandler)
        self.limit = limit
        self.lock = threading.Lock()
        self.in_flight = 0
        self.peak = 0
        self.accepted = 0
        self.refused = 0
        self.gate: threading.Event | None = None


class LimitedHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: LimitedServer

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        srv = self.server
        with srv.lock:
            refuse = srv.in_flight >= srv.limit
            if refuse:
                srv.refused += 1
            else:
                srv.in_flight += 1
                srv.accepted += 1
                srv.peak = max(srv.peak, srv.in_flight)
        if refuse:
            self._send(429, {"error": {"message": "Rate limit reached", "type": "rate_limit"}})
            return
        # Hold the slot until a few more requests have arrived (no sleeps: a short wait on an
        # event that is never set gives the other requests a chance to pile up).
        threading.Event().wait(0.01)
        text = "echo:" + body["messages"][-1]["content"]
        with srv.lock:
            srv.in_flight -= 1  # before the reply leaves: the client's next call may come at once
        self._send(
            200,
            {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": text},
                    }
                ],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
            },
        )

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 429:
            self.send_header("retry-after-ms", "5")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def limited_server():
    adaptive.reset()
    server = LimitedServer(N)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        adaptive.reset()


def _batch(handler: LMHandler, prompts: list[str]) -> list[str]:
    results = send_lm_request_batched(handler.address, prompts)
    return [r.chat_completion.response if r.success else "ERR " + str(r.error) for r in results]


def test_backs_off_to_the_servers_limit_and_never_passes_it_once_learned(limited_server):
    client = get_client(
        "vllm",
        {
            "base_url": f"http://127.0.0.1:{limited_server.server_port}/v1",
            "model_name": "limited",
            "api_key": "k",
            "max_retries": 0,  # every 429 reaches the adaptive layer
        },
    )
    handler = LMHandler(client)  # no batch_max_concurrent: adaptive
    handler.start()
    try:
        prompts = [f"p{i}" for i in range(150)]
        assert _batch(handler, prompts) == [f"echo:{p}" for p in prompts]  # no 429 leaks out
        limit = adaptive.limit_for(client)
        assert limited_server.refused > 0 and limit.decreases > 0  # it started above N
        # The additive increase probes one above what it learned, is refused and settles.
        for _ in range(6):
            if limit.ceiling <= N:
                break
            assert _batch(handler, prompts) == [f"echo:{p}" for p in prompts]
        assert limit.ceiling <= N and limit.limit <= N

        # Once learned, later batches stay within the server's limit: not one refusal.
        refused = limited_server.refused
        for _ in range(2):
            assert _batch(handler, prompts) == [f"echo:{p}" for p in prompts]
        assert limited_server.refused == refused
        assert limit.peak >= N  # it did use the room it had
    finally:
        handler.stop()


def test_starts_high_without_rate_limits():
    # The first START prompts of a batch all take a slot before the event loop runs a timer,
    # so the 50 ms calls overlap fully, however slow the machine.
    lm = ScriptedLM(sub_responses=["ok"] * 100, delay=0.05)
    handler = LMHandler(lm)
    handler.start()
    try:
        assert _batch(handler, ["q"] * 100) == ["ok"] * 100
        assert adaptive.limit_for(lm).peak == adaptive.START
    finally:
        handler.stop()


def test_explicit_batch_max_concurrent_stays_fixed():
    lm = ScriptedLM(sub_responses=lambda m: "ok")
    handler = LMHandler(lm, batch_max_concurrent=3)
    handler.start()
    try:
        assert _batch(handler, ["q"] * 20) == ["ok"] * 20
        assert not hasattr(lm, "_rlm_adaptive_limit")
    finally:
        handler.stop()


def test_a_non_rate_limit_error_fails_only_its_item():
    def answer(messages):
        if messages[-1]["content"] == "bad":
            raise ValueError("boom")
        return "ok"

    handler = LMHandler(ScriptedLM(sub_responses=answer))
    handler.start()
    try:
        out = _batch(handler, ["a", "bad", "b"])
        assert out[0] == out[2] == "ok" and "boom" in out[1]
    finally:
        handler.stop()


def test_aimd_arithmetic():
    limit = AdaptiveLimit(start=8, maximum=16)

    async def go():
        starts = [await limit.acquire() for _ in range(8)]
        assert limit.active == 8
        limit.release(starts[0], rate_limited=True)  # cut: 8 in flight were refused at 8
        assert (limit.limit, limit.ceiling) == (4, 7)
        limit.release(starts[1], rate_limited=True)  # same round-trip: no second cut
        assert limit.limit == 4 and limit.decreases == 1
        for s in starts[2:]:
            limit.release(s, ok=True)
        for _ in range(200):
            s = await limit.acquire()
            limit.release(s, ok=True)
        assert limit.limit == 7  # grows back, never past the learned ceiling

    asyncio.run(go())


def test_rate_limit_recognition():
    class RateLimitError(Exception):
        pass

    class Status(Exception):
        status_code = 429

    assert is_rate_limit(RateLimitError("x"))
    assert is_rate_limit(Status("x"))
    assert is_rate_limit(RuntimeError("429 Too Many Requests"))
    assert not is_rate_limit(ValueError("bad request"))

    class Resp:
        headers = {"retry-after": "2"}

    exc = Exception()
    exc.response = Resp()
    assert retry_after(exc) == 2.0


# -- a slot handed to a waiter that gave up (rlm.comms.limiter.SlotWaiters, shared) ----------


class _Slots:
    """CallLimiter and AdaptiveLimit behind one acquire/release pair."""

    def __init__(self, kind: str):
        self.kind = kind
        if kind == "limiter":
            self.limit = CallLimiter(1)
        else:
            self.limit = AdaptiveLimit(start=1, minimum=1, maximum=1)

    async def acquire(self) -> None:
        if self.kind == "limiter":
            await self.limit.aacquire()
        else:
            await self.limit.acquire()

    def release(self) -> None:
        if self.kind == "limiter":
            self.limit.release()
        else:
            self.limit.release(None, ok=True)

    @property
    def active(self) -> int:
        return self.limit._active


@pytest.mark.parametrize("kind", ["limiter", "adaptive"])
@pytest.mark.parametrize("delivered", [False, True], ids=["in-transit", "delivered"])
def test_a_cancelled_waiter_passes_its_slot_to_the_next(kind, delivered):
    slots = _Slots(kind)

    async def go():
        await slots.acquire()
        first = asyncio.create_task(slots.acquire())
        second = asyncio.create_task(slots.acquire())
        await asyncio.sleep(0)  # both are queued, first come first served
        slots.release()  # the slot is sent to ``first``...
        if delivered:
            await asyncio.sleep(0)  # ...and reaches it (its future completes)...
        first.cancel()  # ...but ``first`` gives up before it runs again
        await asyncio.wait_for(second, timeout=30)  # the slot went on to ``second``
        assert first.cancelled()
        assert slots.active == 1
        slots.release()
        assert slots.active == 0
        await asyncio.wait_for(slots.acquire(), timeout=30)  # free, not leaked
        assert slots.active == 1

    asyncio.run(go())


def test_call_limiter_serves_threads_and_tasks_from_one_queue():
    limiter = CallLimiter(1)
    limiter.acquire()
    got = threading.Event()

    def in_thread() -> None:
        with limiter:
            got.set()

    async def go():
        task = asyncio.create_task(limiter.aacquire())
        await asyncio.sleep(0)  # the task waits first
        thread = threading.Thread(target=in_thread)
        thread.start()
        limiter.release()  # to the task, not the thread
        await asyncio.wait_for(task, timeout=30)
        assert not got.is_set()
        limiter.release()  # now the thread's turn
        await asyncio.to_thread(thread.join, 30)
        assert got.is_set() and limiter._active == 0

    asyncio.run(go())
