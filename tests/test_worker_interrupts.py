"""Interrupts of isolated environments reach the cell they are meant for.

An interrupt names its cell (the exec id). The worker keeps one that comes before
its cell has started and does not run that cell, presses one for the running cell
until it lands (the engine ignores it while it is still setting the cell up), and
ignores one for a cell that has ended, so it never stops the next cell. Before,
an interrupt that reached the worker before its queued cell had started was lost
and the cell ran to its limit.

The worker tests drive the real worker program (``python3 -c BOOTSTRAP``, as every
transport starts it) over its pipes with frames in an order chosen by the test; the
host tests use a real ``subprocess`` environment. Every process is stopped by its
fixture, whatever the test's outcome.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
from typing import Any

import pytest

from rlm.comms.frames import encode_frame, read_frame, stream_read_exact
from rlm.environments.isolated import BOOTSTRAP, worker_sources
from rlm.environments.subprocess_repl import SubprocessREPL, SubprocessTransport

#: A hang guard only: a cell whose interrupt is lost spins until this limit (or forever).
GUARD = 60.0
SPIN = "while True: pass"
REPEATS = 20


class WorkerPipe:
    """The worker program in a plain child process, spoken to in frames."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", BOOTSTRAP],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.frames: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.send(worker_sources())
        assert self.next()["type"] == "ready"
        self.send({"type": "init", "depth": 1, "max_output_chars": 10_000, "tools": {}})

    def _read(self) -> None:
        stream = self.proc.stdout
        try:
            while True:
                payload = read_frame(lambda n: stream_read_exact(stream, n), 1 << 27)
                if payload is None:
                    break
                self.frames.put(json.loads(payload))
        finally:
            self.frames.put(None)

    def send(self, *messages: dict[str, Any]) -> None:
        """Write ``messages`` in one write: the worker reads them back to back."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"".join(encode_frame(m) for m in messages))
        self.proc.stdin.flush()

    def next(self) -> dict[str, Any]:
        frame = self.frames.get(timeout=GUARD)  # queue.Empty: the worker hung
        assert frame is not None, "the worker closed its channel"
        return frame

    def result(self, cell_id: int) -> dict[str, Any]:
        frame = self.next()
        assert frame["type"] == "result" and frame["id"] == cell_id, frame
        return frame

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


@pytest.fixture
def worker():
    pipe = WorkerPipe()
    try:
        yield pipe
    finally:
        pipe.stop()


def exec_frame(cell_id: int, code: str) -> dict[str, Any]:
    return {"type": "exec", "id": cell_id, "code": code, "timeout": GUARD}


def test_an_interrupt_that_comes_before_its_cell_stops_it(worker):
    for cell_id in range(1, REPEATS + 1):
        worker.send({"type": "interrupt", "id": cell_id}, exec_frame(cell_id, SPIN))
        result = worker.result(cell_id)
        assert result["error"].startswith("Interrupted"), result
        assert result["timed_out"] is False and result["abandoned"] is False
    worker.send(exec_frame(100, "print('next')"))
    assert worker.result(100)["stdout"] == "next\n"


def test_an_interrupt_right_after_its_cell_stops_it(worker):
    # The exec is queued for the main thread when the interrupt is read: the cell may
    # not have started yet, or its engine may still be setting it up.
    for cell_id in range(1, REPEATS + 1):
        worker.send(exec_frame(cell_id, SPIN), {"type": "interrupt", "id": cell_id})
        result = worker.result(cell_id)
        assert result["error"].startswith("Interrupted"), result
        assert result["timed_out"] is False and result["abandoned"] is False
    worker.send(exec_frame(100, "print('next')"))
    assert worker.result(100)["stdout"] == "next\n"


def _call(worker: WorkerPipe) -> int:
    """The id of the next frame, a call of ``llm_query`` (its cell is running)."""
    call = worker.next()
    assert call["type"] == "call" and call["op"] == "llm_query", call
    return call["id"]


def test_an_interrupt_for_a_finished_cell_does_not_stop_the_next(worker):
    worker.send(exec_frame(1, "x = 1"))
    assert worker.result(1)["error"] is None
    worker.send({"type": "interrupt", "id": 1})  # late, between cells
    worker.send(exec_frame(2, "a = llm_query('q1')\nb = llm_query('q2')\nprint(a, b)"))
    first = _call(worker)
    # Late, while the next cell runs: the worker reads it before the reply, so a cell
    # it stopped could not ask its second question.
    worker.send({"type": "interrupt", "id": 1}, {"type": "reply", "id": first, "value": "p1"})
    worker.send({"type": "reply", "id": _call(worker), "value": "p2"})
    result = worker.result(2)
    assert (result["error"], result["stdout"]) == (None, "p1 p2\n")


def test_an_interrupt_without_an_id_stops_the_running_cell(worker):
    worker.send(exec_frame(1, "answer = llm_query('q')"))
    call_id = _call(worker)
    worker.send({"type": "interrupt"})  # the older form: whatever runs now
    assert worker.result(1)["error"].startswith("Interrupted")
    worker.send({"type": "reply", "id": call_id, "value": "too late"})
    worker.send(exec_frame(2, "print(x if 'x' in dir() else 'fresh')"))
    assert worker.result(2)["stdout"] == "fresh\n"


# -- the host side ---------------------------------------------------------------------


class _WatchedTransport(SubprocessTransport):
    """The subprocess transport, calling ``on_exec`` after each exec frame is written."""

    on_exec: Any = None

    def start(self):
        channel = super().start()
        write = channel.write

        def watched(data: bytes) -> None:
            write(data)
            if self.on_exec is not None and data[4:].startswith(b'{"type": "exec"'):
                self.on_exec()

        channel.write = watched
        return channel


class _WatchedREPL(SubprocessREPL):
    TRANSPORT = _WatchedTransport


@pytest.fixture
def watched():
    env = _WatchedREPL()
    try:
        yield env
    finally:
        env.cleanup()


def _run_in_thread(env: SubprocessREPL, code: str) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: box.update(r=env.execute_code(code, GUARD)))
    thread.start()
    return thread, box


def test_interrupt_right_after_the_cell_is_sent_stops_it(watched):
    sent = threading.Semaphore(0)
    watched.transport.on_exec = sent.release
    for _ in range(REPEATS):
        thread, box = _run_in_thread(watched, SPIN)
        assert sent.acquire(timeout=GUARD)
        watched.interrupt()
        thread.join(GUARD)
        assert not thread.is_alive(), "the cell ran on after its interrupt"
        assert box["r"].error.startswith("Interrupted"), box["r"].error
    assert watched.execute_code("print('next')").stdout == "next\n"
    assert watched.restarts == 0


def test_interrupt_while_the_cell_is_being_sent_stops_it(watched):
    # interrupt() from inside the write of the exec frame: its own send waits for that
    # write, and execute_code sends it again after the exec.
    watched.transport.on_exec = watched.interrupt
    for _ in range(REPEATS):
        thread, box = _run_in_thread(watched, SPIN)
        thread.join(GUARD)
        assert not thread.is_alive(), "the cell ran on after its interrupt"
        assert box["r"].error.startswith("Interrupted"), box["r"].error
    watched.transport.on_exec = None
    assert watched.execute_code("print('next')").stdout == "next\n"


def test_interrupt_between_cells_does_not_stop_the_next(watched):
    assert watched.execute_code("x = 1").error is None
    watched.interrupt()
    result = watched.execute_code("import time\ntime.sleep(0.2)\nprint(x)")
    assert (result.error, result.stdout) == (None, "1\n")
