"""LocalREPL: notebook semantics, output capture, containment, final answers, helpers, safety."""

from __future__ import annotations

import gc
import sys
import threading
import types
from collections import deque

import pytest

from rlm import RLM
from rlm.clients.base_lm import BaseLM
from rlm.core.lm_handler import LMHandler
from rlm.environments import RESERVED_TOOL_NAMES, LocalREPL


@pytest.fixture
def repl():
    env = LocalREPL(cell_timeout=30)
    yield env
    env.cleanup()


# ---------------------------------------------------------------------------
# Notebook semantics
# ---------------------------------------------------------------------------


def test_assignment_before_exception_survives(repl):
    result = repl.execute_code("kept = 41\nraise ValueError('boom')\nnever = 1")
    assert result.error is not None and "ValueError" in result.error
    assert "boom" in result.stderr
    assert repl.locals["kept"] == 41
    assert "never" not in repl.locals
    assert repl.execute_code("print(kept + 1)").stdout == "42\n"


def test_function_sees_names_defined_in_later_cells(repl):
    repl.execute_code("def reader():\n    return later_value * 2")
    missing = repl.execute_code("reader()")
    assert "NameError" in (missing.error or "")
    repl.execute_code("later_value = 21")
    assert repl.execute_code("print(reader())").stdout == "42\n"


def test_imports_and_classes_persist_across_cells(repl):
    repl.execute_code("import json\nclass Box:\n    def __init__(self, v): self.v = v")
    result = repl.execute_code("print(json.dumps({'v': Box(3).v}))")
    assert result.stdout == '{"v": 3}\n'
    # A comprehension inside a function reads names from the shared namespace.
    repl.execute_code("factor = 10\ndef scale(xs):\n    return [x * factor for x in xs]")
    assert repl.execute_code("print(scale([1, 2]))").stdout == "[10, 20]\n"


def test_trailing_expression_value_is_shown(repl):
    assert repl.execute_code("x = 20\nx + 22").stdout == "42\n"
    assert repl.execute_code("'text'").stdout == "'text'\n"
    # None is not echoed, and a trailing statement shows nothing.
    assert repl.execute_code("None").stdout == ""
    assert repl.execute_code("y = 1").stdout == ""
    # print() then a trailing expression: both, in order.
    assert repl.execute_code("print('a')\n'b'").stdout == "a\n'b'\n"


def test_syntax_error_reported_and_repl_usable(repl):
    result = repl.execute_code("def broken(:\n    pass")
    assert result.error is not None and result.error.startswith("SyntaxError")
    assert "SyntaxError" in result.stderr
    assert repl.execute_code("print('fine')").stdout == "fine\n"


def test_result_locals_lists_user_variables_only(repl):
    result = repl.execute_code("alpha = 1\n_private = 2")
    assert result.locals["alpha"] == 1
    assert "_private" not in result.locals
    for name in ("llm_query", "llm_query_batched", "rlm_query", "SHOW_VARS", "FINAL_VAR"):
        assert name not in result.locals
    shown = repl.execute_code("print(SHOW_VARS())").stdout
    assert "alpha (int)" in shown


# ---------------------------------------------------------------------------
# Context handed over as the same object
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        "line one\r\nline two\r\n",
        {1: "one", 2: ["two", 2.0], "three": {3: None}},
        b"\x00\xffraw bytes\r\n",
        ["a", {"role": "user", "content": "b"}, 3],
    ],
    ids=["crlf-str", "int-key-dict", "bytes", "mixed-list"],
)
def test_context_is_the_same_object(payload):
    env = LocalREPL(context_payload=payload)
    try:
        assert env.locals["context"] is payload
        assert env.locals["context_0"] is payload
        result = env.execute_code("print(type(context).__name__, context is context_0)")
        assert result.stdout == f"{type(payload).__name__} True\n"
    finally:
        env.cleanup()


def test_context_details_survive_inside_the_repl():
    env = LocalREPL(context_payload={1: "a\r\nb"})
    try:
        result = env.execute_code("print(list(context), repr(context[1]))")
        assert result.stdout == "[1] 'a\\r\\nb'\n"
    finally:
        env.cleanup()


def test_add_context_binds_context_n_and_keeps_context_0():
    env = LocalREPL(context_payload="first", persistent=True)
    try:
        second = {"k": 2}
        assert env.add_context(second) == 1
        assert env.get_context_count() == 2
        assert env.locals["context_1"] is second
        assert env.locals["context"] == "first"
    finally:
        env.cleanup()


# ---------------------------------------------------------------------------
# Output capture
# ---------------------------------------------------------------------------


def test_sixteen_repls_in_threads_do_not_mix_output():
    count = 16
    lines_each = 300
    envs = [LocalREPL(cell_timeout=60) for _ in range(count)]
    results: dict[int, object] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(count)

    def work(i: int) -> None:
        try:
            barrier.wait()
            code = (
                "import sys\n"
                f"for n in range({lines_each}):\n"
                f"    print('marker-{i}')\n"
                f"    sys.stdout.write('marker-{i}\\n')\n"
            )
            results[i] = envs[i].execute_code(code)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert not errors
        assert len(results) == count
        for i in range(count):
            lines = results[i].stdout.splitlines()
            assert len(lines) == 2 * lines_each
            assert set(lines) == {f"marker-{i}"}, f"REPL {i} captured foreign output"
            assert results[i].stderr == ""
    finally:
        for env in envs:
            env.cleanup()


def test_output_is_bounded_and_the_cut_is_announced():
    env = LocalREPL(max_output_chars=1_000)
    try:
        result = env.execute_code("for i in range(1000):\n    print('y' * 99)\ndone = True")
        assert result.stdout.startswith("y" * 99 + "\n")
        kept, _, note = result.stdout.partition("[output truncated")
        assert len(kept.strip("\n")) <= 1_000
        assert note, "the cut must be announced"
        assert "99,000" in note  # 100,000 written, 1,000 kept
        # Nothing in the REPL itself is lost.
        assert env.locals["done"] is True
    finally:
        env.cleanup()


def test_print_from_threads_started_by_the_cell_is_captured(repl):
    code = (
        "import threading\n"
        "from concurrent.futures import ThreadPoolExecutor\n"
        "t = threading.Thread(target=lambda: print('from thread'))\n"
        "t.start(); t.join()\n"
        "with ThreadPoolExecutor(4) as pool:\n"
        "    list(pool.map(lambda i: print('worker', i), range(3)))\n"
    )
    lines = repl.execute_code(code).stdout.splitlines()
    assert sorted(lines) == ["from thread", "worker 0", "worker 1", "worker 2"]


def test_stderr_is_captured_separately(repl):
    result = repl.execute_code("import sys\nprint('to err', file=sys.stderr)\nprint('to out')")
    assert result.stdout == "to out\n"
    assert result.stderr == "to err\n"


# ---------------------------------------------------------------------------
# Time limit and containment
# ---------------------------------------------------------------------------


def test_infinite_loop_is_stopped_by_the_cell_timeout():
    env = LocalREPL(cell_timeout=0.5)
    try:
        result = env.execute_code("before = 1\nwhile True:\n    pass")
        assert result.error is not None and "TimeoutError" in result.error
        assert "TimeoutError" in result.stderr
        assert env.locals["before"] == 1
        after = env.execute_code("print('alive', before)")
        assert after.stdout == "alive 1\n"
        assert after.error is None
    finally:
        env.cleanup()


def test_per_call_timeout_overrides_and_loop_in_try_except_is_still_stopped(repl):
    code = "while True:\n    try:\n        pass\n    except Exception:\n        pass"
    result = repl.execute_code(code, timeout=0.3)
    assert "TimeoutError" in (result.error or "")
    assert repl.execute_code("print(2)").stdout == "2\n"


def test_cell_blocked_in_native_code_is_abandoned_and_the_repl_stays_usable():
    env = LocalREPL(cell_timeout=0.2)
    try:
        result = env.execute_code("import time\nmarker = 'set'\ntime.sleep(30)")
        assert result.error is not None and "TimeoutError" in result.error
        assert "did not stop" in result.error
        follow = env.execute_code("print(marker)", timeout=10)
        assert follow.stdout == "set\n"
    finally:
        env.cleanup()


def test_interrupt_from_another_thread_stops_the_running_cell(repl):
    started = threading.Event()
    env = LocalREPL(custom_tools={"started": started.set}, cell_timeout=30)
    try:
        box: dict[str, object] = {}
        worker = threading.Thread(
            target=lambda: box.update(
                r=env.execute_code("n = 0\nstarted()\nwhile True:\n    n += 1")
            )
        )
        worker.start()
        assert started.wait(10)
        env.interrupt()
        worker.join(10)
        assert not worker.is_alive()
        result = box["r"]
        assert result.error is not None and result.error.startswith("Interrupted")
        assert "Interrupted" in result.stderr
        assert env.locals["n"] > 0
        assert env.execute_code("print('after')").stdout == "after\n"
        env.interrupt()  # between cells: nothing to stop, nothing breaks
        assert env.execute_code("print('still')").stdout == "still\n"
    finally:
        env.cleanup()


def _cell_thread(env: LocalREPL) -> threading.Thread:
    """The thread the next cell of ``env`` runs on (found by the ident the cell reports)."""
    env.execute_code("import threading as _t\n_ident = _t.get_ident()")
    ident = env.globals["_ident"]
    return next(t for t in threading.enumerate() if t.ident == ident)


def test_cells_run_on_one_thread_per_repl_that_cleanup_ends():
    env = LocalREPL(cell_timeout=30)
    other = LocalREPL(cell_timeout=30)
    try:
        thread = _cell_thread(env)
        assert thread is not threading.current_thread() and thread.name == "rlm-cell"
        for _ in range(5):
            assert _cell_thread(env) is thread
        assert _cell_thread(other) is not thread  # one per environment
    finally:
        env.cleanup()
        other.cleanup()
    assert not thread.is_alive()  # cleanup joins it: no thread is left behind


def test_an_engine_dropped_without_close_ends_its_thread():
    from rlm.environments.repl_core import ReplCore

    core = ReplCore()
    core.run_cell("import threading as _t\n_ident = _t.get_ident()")
    ident = core.ns["_ident"]
    thread = next(t for t in threading.enumerate() if t.ident == ident)
    del core
    gc.collect()
    thread.join(30)
    assert not thread.is_alive()


def test_a_cell_stopped_at_its_limit_leaves_its_thread_to_the_next_cells(repl):
    thread = _cell_thread(repl)
    # The cell catches the first interruption and ends: later ones must not reach the
    # cells that follow on the same thread.
    code = "try:\n    while True:\n        pass\nexcept BaseException:\n    caught = True\n"
    result = repl.execute_code(code + "tail = sum(range(1000))", timeout=0.3)
    assert result.error is not None and "TimeoutError" in result.error
    assert "was stopped" in result.error
    for i in range(50):
        follow = repl.execute_code(f"n = {i}\nprint(n)")
        assert follow.error is None and follow.stdout == f"{i}\n"
    assert _cell_thread(repl) is thread


def test_a_cell_that_did_not_stop_keeps_its_thread_and_the_next_cell_gets_a_new_one():
    gate = threading.Lock()
    gate.acquire()
    env = LocalREPL(custom_tools={"gate": gate}, cell_timeout=30)
    try:
        first = _cell_thread(env)
        # Lock.acquire() waits in C: the interruption cannot land until it returns.
        result = env.execute_code("gate.acquire()\nprint('late')\nreached = True", timeout=0.2)
        assert "did not stop" in result.error
        second = _cell_thread(env)
        assert second is not first and first.is_alive()
        gate.release()  # the abandoned cell ends (interrupted), then its thread
        first.join(30)
        assert not first.is_alive()
        assert "reached" not in env.locals  # the pending interruption stopped it
        assert env.execute_code("print('on')").stdout == "on\n"
        assert _cell_thread(env) is second
    finally:
        env.cleanup()
    assert not second.is_alive()


@pytest.mark.parametrize(
    "code, expected",
    [
        ("import sys\nsys.exit()", "SystemExit"),
        ("import sys\nsys.exit(3)", "SystemExit"),
        ("raise SystemExit", "SystemExit"),
        ("raise SystemExit('bye')", "SystemExit"),
        ("raise KeyboardInterrupt", "KeyboardInterrupt"),
        ("exit()", "SystemExit"),
    ],
)
def test_exit_and_interrupt_are_contained(repl, code, expected):
    repl.execute_code("survivor = 'still here'")
    result = repl.execute_code(code)  # must not raise into the test
    assert result.error is not None and expected in result.error
    assert expected in result.stderr
    follow = repl.execute_code("print(survivor)")
    assert follow.stdout == "still here\n"


# ---------------------------------------------------------------------------
# Final answers
# ---------------------------------------------------------------------------


def test_answer_dict_item_assignment(repl):
    result = repl.execute_code("answer['content'] = 'forty-two'\nanswer['ready'] = True")
    assert result.final_answer == "forty-two"
    # The answer is consumed: the next cell starts fresh.
    assert repl.execute_code("x = 1").final_answer is None
    assert repl.locals["answer"] == {"content": "", "ready": False}


def test_answer_content_without_ready_is_not_final(repl):
    assert repl.execute_code("answer['content'] = 'draft'").final_answer is None


def test_answer_update(repl):
    result = repl.execute_code("answer.update(content='updated', ready=True)")
    assert result.final_answer == "updated"


def test_answer_rebinding(repl):
    result = repl.execute_code("answer = {'content': 'rebound', 'ready': True}")
    assert result.final_answer == "rebound"
    # Rebinding to something that is not a dict makes it an ordinary variable (0.1.1
    # code: answer = llm_query(...); FINAL_VAR(answer)); deleting it brings the dict back.
    assert repl.execute_code("answer = 'not a dict'").final_answer is None
    assert repl.locals["answer"] == "not a dict"
    repl.execute_code("del answer")
    assert repl.execute_code("answer['content'] = 'x'; answer['ready'] = True").final_answer == "x"


def test_answer_non_string_content_is_text(repl):
    assert repl.execute_code("answer.update(content=42, ready=True)").final_answer == "42"


def test_final_var_by_name(repl):
    result = repl.execute_code("result_text = 'from a variable'\nFINAL_VAR('result_text')")
    assert result.final_answer == "from a variable"


def test_final_var_by_value(repl):
    result = repl.execute_code("FINAL_VAR([1, 2, 3])")
    assert result.final_answer == "[1, 2, 3]"
    result = repl.execute_code("v = 7\nFINAL_VAR(v * 6)")
    assert result.final_answer == "42"


def test_final_var_of_missing_name_is_an_error_string(repl):
    repl.execute_code("present = 1")
    result = repl.execute_code("msg = FINAL_VAR('absent_name')\nprint(msg)")
    assert result.final_answer is None
    assert result.error is None
    assert result.stdout.startswith("Error:")
    assert "absent_name" in result.stdout
    assert "present" in result.stdout  # the message lists what exists


def test_resolve_final_var(repl):
    repl.execute_code("found = 'yes'")
    assert repl.resolve_final_var("found") == "yes"
    assert repl.resolve_final_var("'found'") == "yes"
    assert repl.resolve_final_var("missing") is None


# ---------------------------------------------------------------------------
# Reserved names
# ---------------------------------------------------------------------------


def test_reserved_names_are_restored_after_the_model_overwrites_them():
    payload = "the real context"
    env = LocalREPL(context_payload=payload)
    try:
        original = env.globals["llm_query"]
        result = env.execute_code(
            "llm_query = None\ncontext = 'hijacked'\nFINAL_VAR = 1\nSHOW_VARS = 2\n"
            "print(llm_query, context)"
        )
        assert result.stdout == "None hijacked\n"  # visible inside the cell...
        assert env.globals["llm_query"] is original  # ...restored after it
        assert env.globals["context"] is payload
        follow = env.execute_code("print(callable(llm_query), callable(FINAL_VAR), context)")
        assert follow.stdout == "True True the real context\n"
        env.execute_code("del context\ndel llm_query_batched")
        assert env.globals["context"] is payload
        assert callable(env.globals["llm_query_batched"])
    finally:
        env.cleanup()


def test_builtins_replaced_by_the_model_are_restored(repl):
    repl.execute_code("__builtins__ = {}")
    assert repl.execute_code("print(len('abc'))").stdout == "3\n"


# ---------------------------------------------------------------------------
# Sub-calls through a real LMHandler
# ---------------------------------------------------------------------------


def test_llm_query_through_handler_records_calls(scripted_handler):
    handler = scripted_handler(sub_responses=lambda m: "sub:" + m[-1]["content"])
    env = LocalREPL(lm_handler_address=handler.address)
    try:
        result = env.execute_code("a = llm_query('hello')\nprint(a)")
        assert result.stdout == "sub:hello\n"
        assert len(result.rlm_calls) == 1
        call = result.rlm_calls[0]
        assert call.prompt == "hello"
        assert call.response == "sub:hello"
        assert call.usage_summary.total_calls == 1
        # Calls are recorded per cell.
        assert env.execute_code("x = 1").rlm_calls == []
    finally:
        env.cleanup()


def test_llm_query_batched_keeps_order_and_records_each(scripted_handler):
    handler = scripted_handler(sub_responses=lambda m: m[-1]["content"].upper())
    env = LocalREPL(lm_handler_address=handler.address)
    try:
        prompts = [f"item {i}" for i in range(20)]
        result = env.execute_code(f"out = llm_query_batched({prompts!r})\nprint(len(out))")
        assert result.stdout == "20\n"
        assert env.locals["out"] == [p.upper() for p in prompts]
        assert sorted(c.response for c in result.rlm_calls) == sorted(p.upper() for p in prompts)
        assert handler.get_usage_summary().total_calls == 20
    finally:
        env.cleanup()


def test_llm_query_batched_one_failing_item_fails_alone(scripted_handler):
    def sub(messages):
        text = messages[-1]["content"]
        if text == "bad":
            raise RuntimeError("model exploded on this prompt")
        return "ok:" + text

    handler = scripted_handler(sub_responses=sub)
    env = LocalREPL(lm_handler_address=handler.address)
    try:
        result = env.execute_code("out = llm_query_batched(['a', 'bad', 'c'])")
        assert result.error is None
        out = env.locals["out"]
        assert out[0] == "ok:a"
        assert out[2] == "ok:c"
        assert out[1].startswith("Error:")
        assert "model exploded" in out[1]
        assert len(result.rlm_calls) == 2
    finally:
        env.cleanup()


def test_llm_query_failure_is_an_error_string(scripted_handler):
    def sub(messages):
        raise RuntimeError("no capacity")

    handler = scripted_handler(sub_responses=sub)
    env = LocalREPL(lm_handler_address=handler.address)
    try:
        result = env.execute_code("r = llm_query('x')")
        assert result.error is None
        assert env.locals["r"].startswith("Error:")
        assert "no capacity" in env.locals["r"]
    finally:
        env.cleanup()


def test_rlm_query_without_subcall_fn_falls_back_to_a_model_call(scripted_handler):
    handler = scripted_handler(sub_responses=lambda m: "plain:" + m[-1]["content"])
    env = LocalREPL(lm_handler_address=handler.address)
    try:
        result = env.execute_code("r = rlm_query('q')\nrs = rlm_query_batched(['a', 'b'])")
        assert result.error is None
        assert env.locals["r"] == "plain:q"
        assert env.locals["rs"] == ["plain:a", "plain:b"]
        assert len(result.rlm_calls) == 3
    finally:
        env.cleanup()


def test_helpers_without_a_handler_return_error_strings(repl):
    code = (
        "a = llm_query('x')\n"
        "b = llm_query_batched(['x', 'y'])\n"
        "c = rlm_query('x')\n"
        "d = rlm_query_batched(['x'])\n"
        "e = llm_query_batched('not a list')\n"
    )
    result = repl.execute_code(code)
    assert result.error is None
    ns = repl.locals
    assert ns["a"].startswith("Error:")
    assert len(ns["b"]) == 2 and all(s.startswith("Error:") for s in ns["b"])
    assert ns["c"].startswith("Error:")
    assert len(ns["d"]) == 1 and ns["d"][0].startswith("Error:")
    assert ns["e"][0].startswith("Error:")


def test_helpers_after_the_handler_stopped_return_error_strings(scripted_handler):
    handler = scripted_handler()
    env = LocalREPL(lm_handler_address=handler.address, cell_timeout=30)
    try:
        assert env.execute_code("print(llm_query('x'))").stdout == "sub:x\n"
        handler.stop()
        result = env.execute_code("r = llm_query('x')\nrb = llm_query_batched(['y'])")
        assert result.error is None
        assert env.locals["r"].startswith("Error:")
        assert env.locals["rb"][0].startswith("Error:")
    finally:
        env.cleanup()


# ---------------------------------------------------------------------------
# Custom tools
# ---------------------------------------------------------------------------


def test_custom_tools_callables_and_values():
    def double(x):
        return 2 * x

    env = LocalREPL(
        custom_tools={
            "double": double,
            "LOOKUP": {"a": 1},
            "described": {"tool": lambda: "described-ok", "description": "says ok"},
            "LIMIT": 5,
        }
    )
    try:
        result = env.execute_code("print(double(21), LOOKUP['a'], described(), LIMIT)")
        assert result.stdout == "42 1 described-ok 5\n"
        assert env.globals["double"].__wrapped__ is double  # wrapped: errors become strings
    finally:
        env.cleanup()


@pytest.mark.parametrize("name", sorted(RESERVED_TOOL_NAMES))
def test_reserved_tool_names_raise(name):
    with pytest.raises(ValueError, match="reserved"):
        LocalREPL(custom_tools={name: lambda: None})


def test_reserved_tool_names_raise_in_rlm():
    with pytest.raises(ValueError, match="reserved"):
        RLM(backend="scripted", backend_kwargs={"responses": ["x"]}, custom_tools={"context": 1})
    with pytest.raises(ValueError):
        LocalREPL(custom_tools={"not an identifier": 1})


def test_custom_tool_that_raises_returns_an_error_string_and_the_cell_goes_on(repl):
    def fail():
        raise LookupError("tool broke")

    env = LocalREPL(custom_tools={"fail": fail})
    try:
        result = env.execute_code("ok = 1\nmsg = fail()\nafter = 2")
        assert result.error is None
        assert env.locals["msg"] == "Error: tool fail() failed: LookupError: tool broke"
        assert env.locals["ok"] == 1 and env.locals["after"] == 2
    finally:
        env.cleanup()


# ---------------------------------------------------------------------------
# Lifecycle
# ---------------------------------------------------------------------------


def test_cleanup_is_idempotent_and_refuses_further_cells():
    env = LocalREPL(context_payload="c")
    env.cleanup()
    env.cleanup()
    with pytest.raises(RuntimeError):
        env.execute_code("print(1)")


def test_context_manager_cleans_up():
    with LocalREPL(setup_code="seeded = 'yes'") as env:
        assert env.locals["seeded"] == "yes"
    with pytest.raises(RuntimeError):
        env.execute_code("1")


# ---------------------------------------------------------------------------
# No client, handler, RLM or API key reachable from the REPL's helpers
# ---------------------------------------------------------------------------

FAKE_KEY = "sk-fake-key-DO-NOT-LEAK-8d1f3a"


def test_local_repl_says_it_is_not_a_security_boundary():
    from rlm.environments import local_repl

    assert "not a security boundary" in local_repl.__doc__
    assert "subprocess" in local_repl.__doc__  # and names the isolated alternative


def _openai_kwargs() -> dict:
    """A real OpenAI client holding FAKE_KEY; port 9 (discard) refuses connections at once."""
    return {
        "model_name": "gpt-fake",
        "api_key": FAKE_KEY,
        "base_url": "http://127.0.0.1:9/v1",
        "max_retries": 0,
    }


def _module_dicts() -> list[dict]:
    return [m.__dict__ for m in list(sys.modules.values()) if m is not None]


def _reachable(roots: list[object], max_depth: int = 6) -> list[tuple[object, str]]:
    """Bounded BFS over attributes and gc referents; modules, module dicts and classes skipped."""
    module_dicts = _module_dicts()
    seen: set[int] = set()
    found: list[tuple[object, str]] = []
    queue: deque[tuple[object, int, str]] = deque((r, 0, repr(r)[:60]) for r in roots)
    while queue:
        obj, depth, path = queue.popleft()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, (types.ModuleType, type)):
            continue
        if isinstance(obj, dict) and any(obj is d for d in module_dicts):
            continue
        found.append((obj, path))
        if depth >= max_depth:
            continue
        children: list[tuple[object, str]] = []
        for attr in (
            "__self__",
            "__wrapped__",
            "__func__",
            "__dict__",
            "__defaults__",
            "__kwdefaults__",
        ):
            try:
                value = object.__getattribute__(obj, attr)
            except Exception:
                continue
            children.append((value, attr))
        closure = getattr(obj, "__closure__", None) if callable(obj) else None
        for cell in closure or ():
            try:
                children.append((cell.cell_contents, "<cell>"))
            except ValueError:
                pass
        for ref in gc.get_referents(obj):
            children.append((ref, "<ref>"))
        for child, step in children:
            if child is not None and id(child) not in seen:
                queue.append((child, depth + 1, f"{path} -> {step}"))
    return found


def _assert_nothing_sensitive(roots: list[object]) -> int:
    found = _reachable(roots)
    for obj, path in found:
        assert not isinstance(obj, (BaseLM, LMHandler, RLM)), f"{type(obj).__name__} via {path}"
        if isinstance(obj, (str, bytes)):
            text = obj if isinstance(obj, str) else obj.decode("latin-1")
            assert FAKE_KEY not in text, f"API key reachable via {path}"
    return len(found)


def _helper_roots(namespace: dict) -> list[object]:
    names = ("llm_query", "llm_query_batched", "rlm_query", "rlm_query_batched")
    roots = [namespace[n] for n in (*names, "SHOW_VARS", "FINAL_VAR")]
    roots.append(namespace["__builtins__"]["print"])
    return roots


def test_helpers_expose_no_client_handler_rlm_or_key_during_a_run():
    grabbed: list[object] = []
    report: dict[str, object] = {}

    def root(messages):
        if len(report) == 0:
            report["turn"] = 1
            return "```repl\ngrab(globals())\n```"
        # Turn 2: the REPL is alive (the run is in progress); walk from its helpers.
        namespace = grabbed[0]
        roots = _helper_roots(namespace)
        report["visited"] = _assert_nothing_sensitive(roots)
        report["has_self"] = hasattr(namespace["llm_query"], "__self__")
        report["client_in_locals"] = any(isinstance(v, BaseLM) for v in namespace.values())
        return "FINAL(walked)"

    # The root model is scripted; the sub-call client is a real OpenAI client holding the key.
    rlm = RLM(
        backend="scripted",
        backend_kwargs={"responses": root, "model_name": "walk"},
        other_backends=["openai"],
        other_backend_kwargs=[_openai_kwargs()],
        custom_tools={"grab": grabbed.append},
    )
    result = rlm.completion("some context")
    assert result.response == "walked"
    assert report["has_self"] is False
    assert report["client_in_locals"] is False
    assert report["visited"] > 50  # the walk really went somewhere


def test_helpers_expose_nothing_in_an_environment_built_by_rlm():
    from rlm.core.rlm import _Run

    rlm = RLM(
        backend="openai",
        backend_kwargs=_openai_kwargs(),
        other_backends=["openai"],
        other_backend_kwargs=[{**_openai_kwargs(), "model_name": "sub"}],
    )
    run = _Run(rlm)
    handler = rlm._make_handler(run)
    handler.start()
    env = rlm._environment("ctx", handler, run)
    try:
        # Use the helpers once so connection pools are populated (the server is unreachable:
        # the calls come back as Error: strings).
        env.execute_code("r = llm_query('hi')\nrb = llm_query_batched(['a'])")
        assert env.locals["r"].startswith("Error:")
        assert env.locals["rb"][0].startswith("Error:")
        assert not hasattr(env.globals["llm_query"], "__self__")
        assert not any(isinstance(v, BaseLM) for v in env.locals.values())
        assert _assert_nothing_sensitive(_helper_roots(env.globals)) > 50
    finally:
        env.cleanup()
        handler.stop()


def test_the_walk_does_find_a_planted_client():
    """The detector itself works: a client put into the namespace is found from the helpers."""
    from rlm.clients.openai import OpenAIClient

    env = LocalREPL(custom_tools={"leak": OpenAIClient(**_openai_kwargs())})
    try:
        with pytest.raises(AssertionError, match="OpenAIClient|API key"):
            _assert_nothing_sensitive(_helper_roots(env.globals))
    finally:
        env.cleanup()


def test_a_custom_tool_that_raises_gives_the_model_an_error_string():
    def broken(x):
        raise RuntimeError(f"cannot handle {x}")

    env = LocalREPL(custom_tools={"broken": broken})
    try:
        result = env.execute_code("out = broken(3)\nprint(out)")
        assert result.error is None
        assert result.stdout.startswith(
            "Error: tool broken() failed: RuntimeError: cannot handle 3"
        )
    finally:
        env.cleanup()


def test_the_stdout_router_is_one_object_kept_alive_across_cells():
    # print() holds sys.stdout as a borrowed reference; a router freed by another thread
    # while a print is under way was a use-after-free (RecursionError, segfault). Every
    # cell must reuse the same live router for the same stream.
    import sys

    repl = LocalREPL()
    try:
        seen = set()
        for _ in range(3):
            result = repl.execute_code("import sys\nrouter_id = id(sys.stdout)")
            assert result.error is None
            seen.add(repl.globals["router_id"])
        assert len(seen) == 1
        assert type(sys.stdout).__name__ != "_Router"  # and the host's stream is back after
    finally:
        repl.cleanup()


def test_a_logger_with_a_relative_log_dir_writes_there_whatever_the_cwd(tmp_path, monkeypatch):
    import json
    import os

    from rlm.logger import RLMLogger

    monkeypatch.chdir(tmp_path)
    logger = RLMLogger(log_dir="logs")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.chdir(elsewhere)  # as a local REPL cell of another run does while it runs
    logger._append(logger.log_file_path, json.dumps({"type": "probe"}) + "\n")  # one line
    written = list((tmp_path / "logs").glob("*.jsonl"))
    assert len(written) == 1 and json.loads(written[0].read_text()) == {"type": "probe"}
    assert not (elsewhere / "logs").exists()


# ---------------------------------------------------------------------------
# Live output (on_output, and cell_output events while the cell runs)
# ---------------------------------------------------------------------------


def test_on_output_gets_what_the_cell_printed_while_it_runs():
    released = threading.Event()
    chunks: list[tuple[str, str]] = []

    def on_output(stream, text):
        assert threading.current_thread() is threading.main_thread()  # the caller's thread
        chunks.append((stream, text))
        if "first" in "".join(t for s, t in chunks if s == "stdout"):
            released.set()  # the cell waits for this: it only comes from a live chunk

    env = LocalREPL(custom_tools={"released": released}, cell_timeout=60)
    try:
        code = (
            "import sys\nprint('first')\nprint('warn', file=sys.stderr)\n"
            "assert released.wait(60)\nprint('second')"
        )
        result = env.execute_code(code, on_output=on_output)
        assert result.error is None, result.stderr
        assert result.stdout == "first\nsecond\n"
        for stream in ("stdout", "stderr"):
            sent = "".join(t for s, t in chunks if s == stream)
            assert getattr(result, stream).startswith(sent)
        assert "".join(t for s, t in chunks if s == "stdout").startswith("first\n")
        assert env.execute_code("print(3)").stdout == "3\n"  # no callback: as before
    finally:
        env.cleanup()


def test_a_raising_on_output_does_not_reach_the_cell():
    released = threading.Event()
    calls = []

    def on_output(stream, text):
        calls.append(text)
        released.set()
        raise RuntimeError("a broken subscriber")

    env = LocalREPL(custom_tools={"released": released}, cell_timeout=60)
    try:
        result = env.execute_code(
            "print('a')\nassert released.wait(60)\nprint('b')", on_output=on_output
        )
        assert result.error is None and result.stdout == "a\nb\n"
        assert calls == ["a\n"]  # not called again for this cell
    finally:
        env.cleanup()


def test_live_cell_output_events_for_a_subscriber_that_wants_them():
    released = threading.Event()
    events = []

    def subscriber(event):
        events.append(event)
        if event.type == "cell_output" and "first" in event.text:
            released.set()

    subscriber.wants_live_output = True
    code = "print('first')\nassert released.wait(60)\nprint('second')\nanswer = 'x'"
    rlm = RLM(
        backend="scripted",
        backend_kwargs={"responses": [f"```repl\n{code}\n```", "FINAL(done)"]},
        custom_tools={"released": released},
    )
    rlm.subscribe(subscriber)
    assert rlm.completion("ctx").response == "done"
    kinds = [e.type for e in events if e.type.startswith("cell_")]
    assert kinds[0] == "cell_started" and kinds[-1] == "cell_finished"
    outputs = [e for e in events if e.type == "cell_output" and e.stream == "stdout"]
    assert outputs[0].text.startswith("first\n")  # it went out before the cell ended
    finished = next(e for e in events if e.type == "cell_finished")
    assert "".join(e.text for e in outputs) == finished.result.stdout == "first\nsecond\n"
