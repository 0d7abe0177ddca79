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


def test_call_returns_the_value_and_raises_the_exception_here():
    pool = Workers(name="test-call")
    assert pool.call(lambda: 41 + 1) == 42
    assert pool.call(threading.current_thread) is not threading.current_thread()

    def boom() -> None:
        raise KeyError("lost")

    with pytest.raises(KeyError, match="lost"):
        pool.call(boom)
    assert pool.call(lambda: "still serving", timeout=30) == "still serving"


def test_a_call_past_its_timeout_goes_on_and_the_next_wait_is_not_fooled():
    """The first call outlives its wait; when it ends it wakes this thread, which by then
    waits for another call: that wait must go on until its own call is done."""
    pool = Workers(name="test-call-timeout")
    release, second_started, finish_second = (threading.Event() for _ in range(3))
    done: list[str] = []

    def first() -> str:
        release.wait(30)
        done.append("first")
        return "first"

    with pytest.raises(TimeoutError):
        pool.call(first, timeout=0.01)  # first() waits on release: it cannot be done

    def second() -> str:
        second_started.set()
        finish_second.wait(30)
        return "second"

    def release_both() -> None:
        second_started.wait(30)
        release.set()  # first() ends now and sets this thread's wake-up
        _until(lambda: done == ["first"])
        finish_second.set()

    helper = threading.Thread(target=release_both)
    helper.start()
    assert pool.call(second, timeout=30) == "second"
    helper.join(30)


def test_future_waits_survive_a_wake_up_meant_for_an_earlier_wait():
    pool = Workers(name="test-future-wake")
    release = threading.Event()
    slow = pool.submit(lambda: release.wait(30))
    with pytest.raises(TimeoutError):
        slow.result(0.01)
    release.set()
    assert slow.result(30) is True
    gate = threading.Event()
    later = pool.submit(lambda: gate.wait(30) and "later")
    threading.Timer(0.01, gate.set).start()
    assert later.result(30) == "later"
    assert later.exception(30) is None


def test_wakes_past_the_descriptor_cap_use_a_lock():
    from rlm.comms import workers as module

    before = module._fd_wakes
    wakes = [module.Wake() for _ in range(module.MAX_FD_WAKES + 3)]
    try:
        assert any(w._lock is not None for w in wakes)
        for wake in wakes:
            assert not wake.wait(0)
            wake.set()
            wake.set()  # twice: one wait consumes both
            assert wake.wait(30)
    finally:
        del wakes
    assert module._fd_wakes == before  # the descriptors went back with the wakes


def test_a_forked_child_gets_descriptor_wakes_of_its_own():
    """The parent's wakes (held by its worker threads) do not count against the child's
    cap: a child's new wake uses a descriptor, and the child's calls work."""
    import os

    from rlm.comms import workers

    release = threading.Event()
    pool = Workers()
    held = [pool.submit(release.wait) for _ in range(workers.MAX_FD_WAKES + 4)]
    try:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report, then leave without running the parent's cleanup
            try:
                wake = workers.Wake()
                ok = wake._lock is None and workers.call(lambda: 42, 10) == 42
                os.write(write, b"1" if ok else b"0")
            finally:
                os._exit(0)
        os.close(write)
        try:
            assert os.read(read, 1) == b"1"
        finally:
            os.close(read)
            os.waitpid(pid, 0)
    finally:
        release.set()
        for future in held:
            future.result(10)
