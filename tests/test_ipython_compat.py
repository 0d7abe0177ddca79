"""IPythonREPL as rlms 0.1.3 builds it: one class, ``kernel_mode`` "in_process" or
"subprocess", its timeouts, ``subcall_fn``, and the guarantees around them (one cell at
a time, no reentry deadlock, sleeps that obey the cell limit, nothing left in the host
process after cleanup). Everything runs for real: IPython, the worker process, an
LMHandler around the scripted model."""

from __future__ import annotations

import gc
import sys
import threading
import time
import weakref

import pytest

pytest.importorskip("IPython")

from rlm.core.types import ModelUsageSummary, RLMChatCompletion, UsageSummary
from rlm.environments import SupportsPersistence, get_environment
from rlm.environments.ipython_repl import IPythonREPL, check_kwargs
from rlm.utils.exceptions import ConfigurationError

MODES = ["in_process", "subprocess"]


def completion(prompt, text: str) -> RLMChatCompletion:
    usage = UsageSummary({"child": ModelUsageSummary(1, 3, 2)})
    return RLMChatCompletion("child", prompt, text, usage, 0.0)


@pytest.fixture
def make():
    built: list[IPythonREPL] = []

    def build(**kwargs) -> IPythonREPL:
        repl = IPythonREPL(**kwargs)
        built.append(repl)
        return repl

    yield build
    for repl in built:
        repl.cleanup()


# ---------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({}, "in_process"),
        ({"kernel_mode": "in_process"}, "in_process"),
        ({"mode": "inprocess"}, "in_process"),
        ({"kernel_mode": "subprocess"}, "subprocess"),
        ({"mode": "kernel"}, "subprocess"),
        ({"kernel_mode": "subprocess", "mode": "kernel"}, "subprocess"),
    ],
)
def test_both_spellings_of_the_mode(make, kwargs, expected):
    repl = make(**kwargs)
    assert repl.kernel_mode == expected
    assert repl.execute_code("print(6 * 7)").stdout == "42\n"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"kernel_mode": "nonsense"}, "kernel_mode"),
        ({"kernel_mode": "in_process", "mode": "kernel"}, "disagree"),
        ({"startup_timeout": 0}, "startup_timeout"),
        ({"startup_timeout": -2}, "startup_timeout"),
        ({"subcall_timeout": 0}, "subcall_timeout"),
        ({"subcall_timeout": -0.5}, "subcall_timeout"),
        ({"cell_timeout": "soon"}, "cell_timeout"),
        ({"sandbox": "none"}, "kernel_mode='subprocess'"),
        ({"kernel_mode": "subprocess", "bogus": 1}, "bogus"),
    ],
)
def test_bad_options_fail_at_construction_and_in_the_rlm_check(kwargs, match):
    with pytest.raises(ConfigurationError, match=match):
        check_kwargs(kwargs)
    with pytest.raises(ValueError, match=match):  # ConfigurationError is a ValueError
        IPythonREPL(**kwargs)


def test_timeouts_are_kept_and_startup_timeout_is_the_kernel_start_limit(make):
    repl = make(kernel_mode="in_process", subcall_timeout=None, startup_timeout=5)
    assert (repl.subcall_timeout, repl.startup_timeout) == (None, 5)
    kernel = make(kernel_mode="subprocess", startup_timeout=45, subcall_timeout=3)
    assert kernel.engine.start_timeout == 45
    assert kernel.subcall_timeout == 3


@pytest.mark.parametrize("mode", MODES)
def test_cell_timeout_zero_means_no_limit_and_it_can_be_changed_later(make, mode):
    repl = make(kernel_mode=mode, cell_timeout=0)
    assert repl.cell_timeout is None
    assert repl.execute_code("print('ran')").stdout == "ran\n"
    repl.cell_timeout = 0.3
    assert repl.cell_timeout == 0.3
    assert repl.execute_code("while True: pass").error.startswith("TimeoutError")
    repl.cell_timeout = -1
    assert repl.cell_timeout is None


@pytest.mark.parametrize("mode", MODES)
def test_registry_returns_the_class_users_import(mode):
    from rlm.environments import IPythonREPL as exported

    assert exported is IPythonREPL
    env = get_environment("ipython", {"kernel_mode": mode})
    try:
        assert isinstance(env, IPythonREPL)
        assert env.execute_code("print(2 ** 10)").stdout == "1024\n"
    finally:
        env.cleanup()


# ---------------------------------------------------------------------------
# The in-process shell leaves the host process as it found it
# ---------------------------------------------------------------------------


def test_in_process_shell_has_its_own_module_and_leaves_main_alone(make):
    main = sys.modules["__main__"]
    first, second = make(), make()
    assert sys.modules["__main__"] is main
    names = {first._user_module.__name__, second._user_module.__name__}
    assert len(names) == 2 and "__main__" not in names
    assert all(sys.modules[name] is not None for name in names)
    first.execute_code("x = 'first'")
    second.execute_code("x = 'second'")
    assert first.execute_code("print(x)").stdout == "first\n"
    # A class defined in a cell pickles: its module is importable by name.
    result = first.execute_code(
        "import pickle\nclass Point:\n    pass\nprint(type(pickle.loads(pickle.dumps(Point()))).__name__)"
    )
    assert result.stdout == "Point\n", result.stderr
    first.cleanup()
    assert first._user_module is None and first._shell is None
    assert not any(name in sys.modules for name in names - {second._user_module.__name__})


def test_after_cleanup_nothing_in_the_process_holds_the_shell():
    """IPython registers atexit hooks that would keep every shell (and its namespace)
    alive for the life of the process; cleanup() removes them."""
    repl = IPythonREPL()
    repl.execute_code("big = list(range(1000))\n%time small = 1")
    shell = weakref.ref(repl._shell)
    repl.cleanup()
    repl.cleanup()  # twice is fine
    del repl
    gc.collect()
    assert shell() is None


def test_input_raises_and_in_process_it_is_restored_after_a_rebinding(make):
    kernel = make(kernel_mode="subprocess")
    assert "RuntimeError" in kernel.execute_code("input('name? ')").stderr
    repl = make()
    assert "RuntimeError" in repl.execute_code("input('name? ')").stderr
    repl.execute_code("input = lambda *a: 'typed'")
    assert "RuntimeError" in repl.execute_code("input('name? ')").stderr


def test_in_process_traceback_names_the_models_frames(make):
    result = make().execute_code("def boom():\n    1/0\n\nboom()")
    assert "Traceback" in result.stderr and "boom" in result.stderr
    assert result.error.startswith("ZeroDivisionError")


# ---------------------------------------------------------------------------
# Sleeps obey the cell limit
# ---------------------------------------------------------------------------


def test_in_process_sleep_stops_at_the_limit_and_only_the_repl_sees_the_change(make):
    real_sleep = time.sleep
    repl = make(cell_timeout=0.3)
    repl.execute_code("kept = 1")
    start = time.perf_counter()
    result = repl.execute_code("import time\ntime.sleep(30)")
    assert time.perf_counter() - start < 1.5
    assert "TimeoutError" in result.stderr and "stopped" in result.stderr
    assert "abandoned" not in result.stderr
    assert time.sleep is real_sleep  # the host's time module is untouched
    result = repl.execute_code("from time import sleep\nsleep(0.01)\nprint(kept, time.time() > 0)")
    assert result.stdout == "1 True\n"
    assert "ValueError" in repl.execute_code("time.sleep(-1)").stderr


def test_kernel_sleep_stops_at_the_limit_without_a_worker_restart(make):
    repl = make(kernel_mode="subprocess", cell_timeout=0.5)
    repl.execute_code("kept = 1")
    start = time.perf_counter()
    result = repl.execute_code("import time; time.sleep(30)")
    assert time.perf_counter() - start < 2.0
    assert "TimeoutError" in result.stderr
    assert repl.restarts == 0
    assert repl.execute_code("print(kept)").stdout == "1\n"


# ---------------------------------------------------------------------------
# subcall_fn (rlm_query), one cap, no reentry
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_subcall_fn_serves_rlm_query_and_each_cell_reports_its_own_calls(make, mode):
    seen = []

    def subcall_fn(prompt, model=None):
        seen.append((prompt, model))
        return completion(prompt, f"child:{prompt}")

    repl = make(kernel_mode=mode, subcall_fn=subcall_fn)
    first = repl.execute_code("print(rlm_query('a'), rlm_query_batched(['b', 'c'], model='m'))")
    assert first.stdout == "child:a ['child:b', 'child:c']\n"
    assert sorted(c.response for c in first.rlm_calls) == ["child:a", "child:b", "child:c"]
    assert ("b", "m") in seen
    assert repl.execute_code("print('none')").rlm_calls == []


@pytest.mark.parametrize("mode", MODES)
def test_max_concurrent_subcalls_caps_the_whole_repl(make, mode):
    lock = threading.Lock()
    state = {"now": 0, "peak": 0}
    hold = threading.Event()

    def subcall_fn(prompt, model=None):
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        hold.wait(0.02)  # stay in flight long enough for overlaps to show
        with lock:
            state["now"] -= 1
        return completion(prompt, "ok")

    repl = make(kernel_mode=mode, subcall_fn=subcall_fn, max_concurrent_subcalls=2)
    result = repl.execute_code(
        "import threading\n"
        "out = []\n"
        "ts = [threading.Thread(target=lambda: out.extend(rlm_query_batched(['p'] * 6)))"
        " for _ in range(3)]\n"
        "for t in ts: t.start()\n"
        "for t in ts: t.join()\n"
        "print(len(out), set(out))"
    )
    assert result.stdout == "18 {'ok'}\n", result.stderr
    assert state["peak"] == 2


@pytest.mark.parametrize("mode", MODES)
def test_subcall_fn_calling_back_into_its_repl_is_refused(make, mode):
    holder = {}
    errors = []

    def subcall_fn(prompt, model=None):
        try:
            holder["repl"].execute_code("print('inner')")
        except RuntimeError as exc:
            errors.append(str(exc))
            raise
        return completion(prompt, "unreachable")

    repl = holder["repl"] = make(kernel_mode=mode, subcall_fn=subcall_fn, cell_timeout=20)
    result = repl.execute_code("print(rlm_query('p'))")
    assert errors and "Reentrant" in errors[0]
    assert result.stdout.startswith("Error:") and "Reentrant" in result.stdout
    assert repl.execute_code("print('after')").stdout == "after\n"


@pytest.mark.parametrize("mode", MODES)
def test_a_tool_calling_back_into_its_repl_is_refused(make, mode):
    holder = {}

    def nested(code):
        return holder["repl"].execute_code(code).stdout

    repl = holder["repl"] = make(kernel_mode=mode, custom_tools={"nested": nested}, cell_timeout=20)
    result = repl.execute_code("print(nested('print(1)'))")
    assert "Reentrant" in result.stdout + result.stderr


def test_the_rlms_handler_routed_subcall_fn_is_not_called(make, scripted_handler):
    handler = scripted_handler()

    def via_handler(prompt, model=None):
        raise AssertionError("rlm_query must go through the LM handler")

    via_handler.rlm_routed_via_handler = True
    repl = make(lm_handler_address=handler.address, subcall_fn=via_handler)
    assert repl.subcall_fn is None
    result = repl.execute_code("print(rlm_query('q'))")
    assert result.stdout == "sub:q\n"
    assert len(result.rlm_calls) == 1


@pytest.mark.parametrize("mode", MODES)
def test_cells_from_many_threads_run_one_at_a_time_with_their_own_calls(make, mode):
    repl = make(kernel_mode=mode, subcall_fn=lambda p, m=None: completion(p, "x"), persistent=True)
    counts, indices = [], []

    def worker(i):
        indices.append(repl.add_context(f"payload-{i}"))
        for _ in range(3):
            counts.append(len(repl.execute_code("rlm_query('p')").rlm_calls))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counts == [1] * 12
    assert sorted(indices) == [0, 1, 2, 3] and repl.get_context_count() == 4


# ---------------------------------------------------------------------------
# Kernel mode: contexts are data
# ---------------------------------------------------------------------------


def test_kernel_context_must_be_json_and_locals_shows_what_was_sent(make):
    with pytest.raises(TypeError, match="JSON"):
        IPythonREPL(kernel_mode="subprocess", context_payload={"bad": object()})
    repl = make(kernel_mode="subprocess", context_payload={"k": [1, 2]}, persistent=True)
    assert isinstance(repl, SupportsPersistence)
    repl.add_history([{"role": "user", "content": "hi"}])
    assert repl.locals["context"] == {"k": [1, 2]}
    assert repl.locals["history_0"][0]["content"] == "hi"
    with pytest.raises(TypeError):
        repl.add_context({1, 2})
    assert repl.get_context_count() == 1
