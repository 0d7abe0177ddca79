"""Cells that run inline (issue #15, "Recursion reuses"): a cell asked for from a thread
that runs a cell already -- a child RLM's, from its parent's cell -- runs in that thread,
so a tree holds one cell thread; its time limit, interruption, output capture and live
output stay its own.

Threads are counted with ``threading.enumerate()`` at the deepest child; nothing here
depends on timing (time limits have wide margins, waits are on events and threads).
"""

from __future__ import annotations

import asyncio
import signal
import threading

import pytest

from rlm import RLM, CancellationError
from rlm.environments.local_repl import LocalREPL
from rlm.environments.repl_core import ReplCore
from rlm.logger import RLMLogger


def answer(expr: str) -> str:
    return f'```repl\nanswer["content"] = {expr}\nanswer["ready"] = True\n```'


def turns(messages) -> int:
    return sum(1 for m in messages if m["role"] == "assistant")


def task(messages) -> str:
    return messages[1]["content"]


def names() -> list[str]:
    return [t.name for t in threading.enumerate()]


# ---------------------------------------------------------------------------
# Threads in a tree
# ---------------------------------------------------------------------------


def test_a_sequential_tree_runs_every_cell_in_one_thread_and_grows_no_thread_per_level():
    """Depth 4, each run asks one child with rlm_query: every run's cell runs in the root
    cell's thread, and the deepest cell sees as many threads as the first child's cell did
    (the root's, at most one fewer: its own root calls run in its loop's thread, a child's
    on a pool worker, which the process may have had idle already)."""
    seen: dict[int, list] = {}

    def script(messages):
        depth = task(messages).count("child")
        if turns(messages) == 0:
            return f'```repl\nwhere({depth})\nr = rlm_query("child " * {depth + 1})\n```'
        return answer("r")

    def where(depth):
        seen.setdefault(depth, []).append(
            (threading.current_thread(), threading.active_count(), names().count("rlm-cell"))
        )

    leaf_threads: list[list[str]] = []
    rlm = RLM(
        backend="scripted",
        backend_kwargs={
            "responses": script,
            "sub_responses": lambda prompt: leaf_threads.append(names()) or "leaf",
        },
        max_depth=4,
        custom_tools={"where": where},
    )
    assert rlm.completion("ctx").response == "leaf"
    assert sorted(seen) == [0, 1, 2, 3]
    root_thread, root_count, _ = seen[0][0]
    child_count = seen[1][0][1]
    assert root_count <= child_count <= root_count + 1
    for depth in range(4):
        thread, count, cells = seen[depth][0]
        assert thread is root_thread, f"depth {depth} ran its cell in another thread"
        expected = root_count if depth == 0 else child_count
        assert count == expected, f"depth {depth} sees {count} threads, not {expected}"
        assert cells == 1
    assert len(leaf_threads) == 1 and leaf_threads[0].count("rlm-cell") == 1


def test_a_batched_tree_holds_one_cell_thread_and_lends_its_waiting_threads():
    """Depth 3, fan-out 2 with rlm_query_batched: the children's cells run in the threads
    that asked for them (the asking cell's own thread takes an item too), so the tree
    holds one cell thread, and one helper thread per batch of two."""
    cell_threads: set[threading.Thread] = set()
    peak = {"cells": 0, "subcall": 0, "leaves": 0}
    lock = threading.Lock()

    def sample():
        now = names()
        with lock:
            peak["cells"] = max(peak["cells"], now.count("rlm-cell"))
            peak["subcall"] = max(
                peak["subcall"], sum(1 for n in now if n.startswith("rlm-subcall"))
            )

    def script(messages):
        sample()
        if turns(messages) == 0:
            return '```repl\nhere()\nr = rlm_query_batched(["a", "b"])\n```'
        return answer('"done"')

    def leaf(prompt):
        sample()
        with lock:
            peak["leaves"] += 1
        return "leaf"

    def here():
        with lock:
            cell_threads.add(threading.current_thread())

    rlm = RLM(
        backend="scripted",
        backend_kwargs={"responses": script, "sub_responses": leaf},
        max_depth=3,
        custom_tools={"here": here},
    )
    assert rlm.completion("ctx").response == "done"
    assert peak["leaves"] == 8
    assert peak["cells"] == 1
    # 7 runs with a REPL, each with one batch of two: at most one helper thread each.
    assert peak["subcall"] <= 7
    # 7 cells in 4 threads at most: the root's cell thread, and one lent by each batch
    # of the root and of its two children (each takes one item in its own thread).
    assert len(cell_threads) <= 4
    assert sum(1 for t in cell_threads if t.name == "rlm-cell") == 1


def test_rlm_query_batched_keeps_the_order_and_the_concurrency_cap():
    inside = {"now": 0, "most": 0}
    lock = threading.Lock()
    release = threading.Event()

    def script(messages):
        if "item" in task(messages):
            return answer("context.upper()") if turns(messages) else "```repl\nenter()\n```"
        if turns(messages) == 0:
            return '```repl\nr = rlm_query_batched(["item %d" % i for i in range(7)])\n```'
        return answer('",".join(r)')

    def enter():
        with lock:
            inside["now"] += 1
            inside["most"] = max(inside["most"], inside["now"])
            if inside["now"] == 3:
                release.set()
        release.wait(10)  # the first three wait for each other: three run at once
        with lock:
            inside["now"] -= 1

    rlm = RLM(
        backend="scripted",
        backend_kwargs={"responses": script},
        max_depth=2,
        max_concurrent_subcalls=3,
        custom_tools={"enter": enter},
    )
    result = rlm.completion("ctx")
    assert result.response == ",".join(f"ITEM {i}" for i in range(7))
    assert inside["most"] == 3


# ---------------------------------------------------------------------------
# A child's cell keeps its limits, its interruption and its output
# ---------------------------------------------------------------------------


@pytest.fixture
def cores():
    outer, inner = ReplCore(), ReplCore()
    outer.ns["inner"] = inner
    yield outer, inner
    outer.close()
    inner.close()


def test_an_inline_cell_runs_in_the_asking_thread_with_its_own_output(cores):
    outer, inner = cores
    outer.ns["threads"] = inner.ns["threads"] = threads = []
    code = (
        "import threading\n"
        "threads.append(threading.current_thread())\n"
        "print('before')\n"
        "got = inner.run_cell('import threading\\n"
        'threads.append(threading.current_thread())\\nprint("inner")\\n1 + 1\')\n'
        "print('after', repr(got.stdout))"
    )
    outcome = outer.run_cell(code, timeout=30)
    assert outcome.error is None, outcome.stderr
    assert threads[0] is threads[1] and threads[0] is not threading.current_thread()
    assert outcome.stdout == "before\nafter 'inner\\n2\\n'\n"


def test_an_inline_cell_is_stopped_at_its_own_limit_and_the_asking_cell_goes_on(cores):
    outer, inner = cores
    code = (
        "got = inner.run_cell('while True:\\n    pass', timeout=0.3)\n"
        "print(got.timed_out, got.error)"
    )
    outcome = outer.run_cell(code, timeout=60)
    assert outcome.error is None, outcome.stderr
    assert outcome.stdout.startswith("True TimeoutError: the cell ran longer than its limit")
    assert "was stopped" in outcome.stdout
    again = inner.run_cell("x = 41\nx + 1")  # the inner namespace still works
    assert again.stdout == "42\n"


def test_an_inline_cell_that_catches_its_timeout_is_stopped_by_the_repeat(cores):
    outer, inner = cores
    looping = (
        "while True:\\n"
        "    try:\\n"
        "        while True:\\n"
        "            pass\\n"
        "    except BaseException:\\n"
        "        break\\n"
        "while True:\\n"
        "    pass"
    )
    outcome = outer.run_cell(
        f"got = inner.run_cell('{looping}', timeout=0.3)\nprint(got.timed_out)", timeout=60
    )
    assert outcome.stdout == "True\n", outcome.stderr


def test_an_inline_cell_that_ends_long_after_its_stop_says_so(cores):
    """An inline cell cannot be abandoned: one that swallows its stop ends when it ends,
    and its error says it ended late instead of "was stopped"."""
    outer, inner = cores
    # It swallows every repeat of its stop and leaves once they have ceased (they go on
    # for the grace, 2 s), so it ends well past the grace.
    swallowing = (
        "import time\\n"
        "last = None\\n"
        "while last is None or time.monotonic() - last < 1.5:\\n"
        "    try:\\n"
        "        time.sleep(0.01)\\n"
        "    except BaseException:\\n"
        "        last = time.monotonic()"
    )
    outcome = outer.run_cell(
        f"got = inner.run_cell('{swallowing}', timeout=0.3)\nprint(got.timed_out, got.error)",
        timeout=120,
    )
    assert outcome.error is None, outcome.stderr
    assert outcome.stdout.startswith("True TimeoutError: the cell ran longer than its limit")
    assert "after it was told to stop" in outcome.stdout and "was stopped" not in outcome.stdout


def test_interrupting_an_inline_cell_from_another_thread(cores):
    outer, inner = cores
    started = threading.Event()
    outer.ns["started"] = started.set
    inner.ns["started"] = started.set

    def interrupter():
        started.wait(10)
        inner.interrupt()

    threading.Thread(target=interrupter, daemon=True).start()
    code = (
        "got = inner.run_cell('started()\\nwhile True:\\n    pass', timeout=60)\nprint(got.error)"
    )
    outcome = outer.run_cell(code, timeout=60)
    assert outcome.stdout.startswith("Interrupted: the cell was stopped"), outcome.stderr


def test_stopping_the_asking_cell_stops_the_inline_one_and_unwinds_to_it(cores):
    """The outer cell's limit passes while the inner cell (without a limit) loops: the
    inner cell stops, the rest of the outer cell's code does not run."""
    outer, inner = cores
    inner.ns["after_inner"] = after = []
    outer.ns["after_outer"] = outer_after = []
    code = "inner.run_cell('while True:\\n    pass\\nafter_inner.append(1)')\nafter_outer.append(1)"
    outcome = outer.run_cell(code, timeout=0.5)
    assert outcome.timed_out and "was stopped" in outcome.error
    assert after == [] and outer_after == []
    assert outer.run_cell("1").stdout == "1\n" and inner.run_cell("2").stdout == "2\n"


@pytest.mark.parametrize("inner_limit", [None, 0.5])
def test_an_abandoned_asking_cell_leaves_its_inline_cell_supervised(cores, inner_limit):
    """Both cells swallow every interruption: the outer one is abandoned at its limit (its
    caller gets the result at once), and a thread of its own goes on supervising the inline
    one; once the code lets go, the inline cell ends, its stop unwinds the outer one, and
    both threads end."""
    outer, inner = cores
    release = threading.Event()
    inner.ns["release"] = release
    stubborn = (
        "while not release.is_set():\\n"
        "    try:\\n"
        "        while not release.is_set():\\n"
        "            pass\\n"
        "    except BaseException:\\n"
        "        pass"
    )
    outcome = outer.run_cell(f"inner.run_cell('{stubborn}', timeout={inner_limit})", timeout=0.3)
    assert outcome.timed_out and "did not stop" in outcome.error
    watchers = [t for t in threading.enumerate() if t.name == "rlm-cell-watch"]
    assert len(watchers) == 1
    release.set()
    watchers[0].join(10)
    assert not watchers[0].is_alive()
    assert not outer.cell_still_running(wait=10)


def test_interrupting_the_asking_cell_reaches_the_inline_one(cores):
    outer, inner = cores
    started = threading.Event()
    inner.ns["started"] = started.set

    def interrupter():
        started.wait(10)
        outer.interrupt()

    threading.Thread(target=interrupter, daemon=True).start()
    outcome = outer.run_cell("inner.run_cell('started()\\nwhile True:\\n    pass')", timeout=60)
    assert outcome.error.startswith("Interrupted: the cell was stopped"), outcome.error


def test_an_inline_cells_live_output_comes_from_another_thread(cores):
    outer, inner = cores
    seen: list[tuple[str, str, threading.Thread]] = []
    shown = threading.Event()

    def on_output(stream, text):
        seen.append((stream, text, threading.current_thread()))
        shown.set()

    inner.ns["shown"] = lambda: shown.wait(10)
    outer.ns["on_output"] = on_output
    code = (
        "got = inner.run_cell('print(\"hello\")\\nprint(shown())', on_output=on_output)\n"
        "import threading\n"
        "me = threading.current_thread()\n"
    )
    outcome = outer.run_cell(code, timeout=60)
    assert outcome.error is None, outcome.stderr
    got = outer.ns["got"]
    assert got.stdout == "hello\nTrue\n"
    assert seen and seen[0][:2] == ("stdout", "hello\n")
    assert all(thread is not outer.ns["me"] for _, _, thread in seen)


# ---------------------------------------------------------------------------
# In a tree: Ctrl-C, cancellation, a child's timeout
# ---------------------------------------------------------------------------


def test_ctrl_c_stops_the_childs_running_cell():
    """Ctrl-C while a child's cell loops: CancellationError, and the cell thread the child's
    cell runs in ends with the run (the child's loop does not go on)."""
    main_id = threading.main_thread().ident
    cell_threads: list[threading.Thread] = []

    def press_ctrl_c():
        cell_threads.append(threading.current_thread())
        signal.pthread_kill(main_id, signal.SIGINT)

    def script(messages):
        if "CHILD" in task(messages):
            return "```repl\nctrl_c()\nwhile True:\n    pass\n```"
        if turns(messages) == 0:
            return '```repl\nr = rlm_query("CHILD task")\n```'
        return answer("r")

    rlm = RLM(
        backend="scripted",
        backend_kwargs={"responses": script},
        max_depth=2,
        custom_tools={"ctrl_c": press_ctrl_c},
        environment_kwargs={"cell_timeout": 60},
    )
    with pytest.raises(CancellationError):
        rlm.completion("ctx")
    assert cell_threads[0].name == "rlm-cell"  # the root cell's thread
    cell_threads[0].join(10)
    assert not cell_threads[0].is_alive(), "the child's cell kept running"


def test_cancelling_a_run_stops_the_cells_of_batched_children():
    started: list[threading.Thread] = []
    lock = threading.Lock()
    both = threading.Event()

    def script(messages):
        if "CHILD" in task(messages):
            return "```repl\nstarted()\nwhile True:\n    pass\n```"
        if turns(messages) == 0:
            return '```repl\nr = rlm_query_batched(["CHILD a", "CHILD b"])\n```'
        return answer('"done"')

    def on_start():
        with lock:
            started.append(threading.current_thread())
            if len(started) == 2:
                both.set()

    rlm = RLM(
        backend="scripted",
        backend_kwargs={"responses": script},
        max_depth=2,
        custom_tools={"started": on_start},
        environment_kwargs={"cell_timeout": 60},
    )

    async def main():
        task_ = asyncio.ensure_future(rlm.acompletion("ctx"))
        await asyncio.to_thread(both.wait, 10)
        task_.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task_

    asyncio.run(main())
    assert len(started) == 2 and started[0] is not started[1]
    for thread in started:
        if thread.name.startswith("rlm-subcall"):
            thread.join(10)
            assert not thread.is_alive(), "a child's cell kept running"


def test_a_childs_cell_limit_stops_its_cell_and_the_parent_reads_the_result():
    """The child's environment has a short cell limit, the parent's a long one (a parent
    that builds its child's REPL with its own options: a subcall_fn run by hand)."""

    def script(messages):
        if turns(messages) == 0:
            return (
                "```repl\nchild = make_child()\n"
                "got = child.execute_code('while True:\\n    pass', timeout=0.3)\n"
                "print(got.error)\nchild.cleanup()\n```"
            )
        return answer('"ok"')

    rlm = RLM(
        backend="scripted",
        backend_kwargs={"responses": script},
        custom_tools={"make_child": lambda: LocalREPL(depth=2)},
        environment_kwargs={"cell_timeout": 60},
        logger=(logger := RLMLogger()),
    )
    assert rlm.completion("ctx").response == "ok"
    block = logger.get_trajectory()["iterations"][0]["code_blocks"][0]["result"]
    assert block["stdout"].startswith("TimeoutError: the cell ran longer than its limit of 0.3 s")
