"""Behaviour kept by the per-iteration shortcuts (issue #15): a cell run again reuses its
compiled code and still reports itself; limits still apply when the loop skips work for
runs without them."""

from __future__ import annotations

import gc
import os
import threading

import pytest

from rlm import RLM
from rlm.clients.llama_cpp import LlamaCppClient
from rlm.clients.scripted import ScriptedLM
from rlm.environments.local_repl import LocalREPL
from rlm.environments.repl_core import COMPILED_CACHE_CELLS, ReplCore

FAILING = "def f():\n    return [1 / 0 for _ in range(1)]\nf()"


def test_a_cell_run_again_names_itself_in_its_traceback():
    core = ReplCore()
    try:
        first = core.run_cell(FAILING)
        again = core.run_cell(FAILING)
    finally:
        core.close()
    assert first.error == again.error == "ZeroDivisionError: division by zero"
    assert '"<cell 1>", line 3' in first.stderr and "<cell 2>" not in first.stderr
    # The module, the function and the comprehension all report the second cell.
    assert again.stderr.count('"<cell 2>"') == 3, again.stderr
    assert "<cell 1>" not in again.stderr
    assert "return [1 / 0 for _ in range(1)]" in again.stderr


def test_a_cell_run_again_shows_its_last_value_and_sees_the_namespace_of_now():
    core = ReplCore()
    try:
        code = "x = x + 1 if 'x' in dir() else 1\nx * 10"
        outputs = [core.run_cell(code).stdout for _ in range(3)]
        core.run_cell("x = 100")
        outputs.append(core.run_cell(code).stdout)
    finally:
        core.close()
    assert outputs == ["10\n", "20\n", "30\n", "1010\n"]


def test_the_compiled_cells_kept_are_bounded():
    core = ReplCore()
    try:
        for i in range(COMPILED_CACHE_CELLS + 10):
            assert core.run_cell(f"v{i} = {i}\nv{i}").stdout == f"{i}\n"
        assert len(core._compiled) == COMPILED_CACHE_CELLS
        assert core.run_cell("v0 + 1").stdout == "1\n"  # an evicted cell compiles anew
    finally:
        core.close()


# ---------------------------------------------------------------------------
# Where the root call runs
# ---------------------------------------------------------------------------


def _block(code: str) -> str:
    return f"```repl\n{code}\n```"


def _threads_of_root_calls(**kwargs):
    threads: list[threading.Thread] = []

    def root(messages):
        threads.append(threading.current_thread())
        return _block("x = 1") if len(threads) == 1 else "FINAL(done)"

    rlm = RLM(backend="scripted", backend_kwargs={"responses": root}, **kwargs)
    return rlm, threads


def test_a_root_run_without_a_deadline_calls_its_model_in_its_own_thread():
    rlm, threads = _threads_of_root_calls()
    assert rlm.completion("ctx").response == "done"
    assert threads == [threading.current_thread()] * 2


def test_a_deadline_puts_the_root_call_on_a_worker_thread():
    rlm, threads = _threads_of_root_calls(max_timeout=60)
    assert rlm.completion("ctx").response == "done"
    assert len(threads) == 2 and threading.current_thread() not in threads


def test_a_client_can_keep_its_root_calls_off_the_loops_thread():
    class OffThread(ScriptedLM):
        inline_root_calls = False

    rlm, threads = _threads_of_root_calls()
    rlm.client = OffThread(responses=rlm.client._root._fn)
    assert rlm.completion("ctx").response == "done"
    assert len(threads) == 2 and threading.current_thread() not in threads
    assert LlamaCppClient.inline_root_calls is False


def test_closing_a_stream_gives_up_a_root_call_that_never_returns():
    """A run of stream() is on a pool worker: its root call still runs on another thread,
    so closing the stream ends the run while the call is stuck."""
    entered, release = threading.Event(), threading.Event()

    def root(messages):
        if not any(m["role"] == "assistant" for m in messages):
            return _block("x = 1")
        entered.set()
        release.wait(60)
        return "FINAL(late)"

    rlm = RLM(backend="scripted", backend_kwargs={"responses": root})
    finished = threading.Event()
    errors: list[str | None] = []

    def watch(event):
        if event.type == "run_finished":
            errors.append(event.error)
            finished.set()

    rlm.subscribe(watch)
    events = rlm.stream("ctx")
    try:
        for event in events:
            if event.type == "iteration_started" and event.iteration == 2:
                break
        assert entered.wait(30)
        events.close()  # cancels the run
        assert finished.wait(30), "the run waited for the stuck root call"
        assert not release.is_set()
        assert errors and errors[0] is not None and "Cancellation" in errors[0]
    finally:
        release.set()


# ---------------------------------------------------------------------------
# Descriptors of the cell hand-off
# ---------------------------------------------------------------------------


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd")
def test_cleanup_releases_the_descriptors_of_the_cell_hand_off_at_once():
    """The engine refers back to itself (its helpers), so only a garbage collection would
    free it: cleanup() itself must let go of its wake-ups' descriptors."""

    def one_repl() -> None:
        env = LocalREPL()
        try:
            assert env.execute_code("print(6 * 7)").stdout == "42\n"
        finally:
            env.cleanup()

    one_repl()  # this thread's own wake-up and the pool's are made once
    enabled = gc.isenabled()
    gc.disable()
    try:
        before = _open_fds()
        for _ in range(5):
            one_repl()
        assert _open_fds() == before
    finally:
        if enabled:
            gc.enable()
