"""The reused worker threads (rlm.comms.workers): reuse, no cap, results, idle exit."""

from __future__ import annotations

import contextvars
import threading

import pytest

from rlm.comms.workers import Workers


def _until(condition) -> None:
    """Wait (at most 30 s) until ``condition()`` holds: a worker marks itself idle just
    after the future it served is done."""
    tick = threading.Event()
    for _ in range(30_000):
        if condition():
            return
        tick.wait(0.001)
    raise AssertionError("condition never held")


def test_a_finished_worker_runs_the_next_call():
    pool = Workers(name="test-reuse")
    first = pool.submit(threading.current_thread).result(30)
    _until(lambda: pool.idle == 1)
    assert pool.submit(threading.current_thread).result(30) is first
    assert first is not threading.current_thread()
    assert first.name.startswith("test-reuse-")
    assert pool.threads == 1


def test_a_call_that_never_returns_does_not_hold_up_the_next():
    pool = Workers(name="test-stuck")
    release = threading.Event()
    stuck = pool.submit(release.wait)
    try:
        assert pool.submit(lambda: 42).result(30) == 42
        assert not stuck.done()
        assert pool.threads == 2
    finally:
        release.set()
    assert stuck.result(30) is True


def test_many_calls_at_once_each_get_a_thread():
    pool = Workers(name="test-many")
    barrier = threading.Barrier(20)
    futures = [pool.submit(lambda: barrier.wait(30)) for _ in range(20)]
    assert sorted(f.result(60) for f in futures) == list(range(20))


def test_exceptions_come_back_to_the_caller():
    pool = Workers(name="test-error")

    def boom() -> None:
        raise KeyError("lost")

    with pytest.raises(KeyError, match="lost"):
        pool.submit(boom).result(30)
    assert pool.submit(lambda: "still serving").result(30) == "still serving"


def test_copy_context_runs_in_the_callers_context():
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    pool = Workers(name="test-context")
    var.set("caller")
    assert pool.submit(var.get, copy_context=True).result(30) == "caller"
    assert pool.submit(var.get).result(30) == "unset"


def test_an_idle_worker_ends():
    pool = Workers(name="test-idle", idle_seconds=0.01)
    thread = pool.submit(threading.current_thread).result(30)
    thread.join(30)
    assert not thread.is_alive()
    assert pool.threads == 0
    assert pool.submit(lambda: "a new one").result(30) == "a new one"
