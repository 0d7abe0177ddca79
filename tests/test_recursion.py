"""Recursion, leased limits, routing, sessions, tools, compaction and callbacks (issue #3).

Every test drives the real loop with the scripted LM: real LocalREPLs, real
LMHandler sockets, real child RLMs.
"""

from __future__ import annotations

import gc
import sys
import threading
import time

import pytest

from rlm import RLM, BudgetExceededError
from rlm.clients.base_lm import BaseLM
from rlm.core.lm_handler import LMHandler
from rlm.logger import RLMLogger


def answer(expr: str) -> str:
    return f'```repl\nanswer["content"] = {expr}\nanswer["ready"] = True\n```'


def turns(messages) -> int:
    return sum(1 for m in messages if m["role"] == "assistant")


def task(messages) -> str:
    """The text that describes this run's task (the question and context description)."""
    return messages[1]["content"]


# ---------------------------------------------------------------------------
# Recursive sub-calls
# ---------------------------------------------------------------------------


def tree_script(messages):
    """Root asks one MID child; each MID asks two LEAF grandchildren; leaves answer."""
    desc = task(messages)
    if "LEAF" in desc:
        return answer('"leaf:" + context.split()[1]')
    if "MID" in desc:
        if turns(messages) == 0:
            return '```repl\nr = rlm_query_batched(["LEAF a", "LEAF b"])\nprint(r)\n```'
        return answer('"mid(" + ",".join(r) + ")"')
    if turns(messages) == 0:
        return '```repl\nres = rlm_query("MID task")\nprint(res)\n```'
    return answer('"root[" + res + "]"')


def test_depth_three_tree_answers_and_usage_sums_over_the_whole_tree():
    logger = RLMLogger()
    rlm = RLM(
        backend="scripted", backend_kwargs={"responses": tree_script}, max_depth=3, logger=logger
    )
    result = rlm.completion("ROOT context", root_prompt="go")
    assert result.response == "root[mid(leaf:a,leaf:b)]"

    # 2 root calls + 2 mid calls + 1 call per leaf (x2) = 6 calls, all in the root's usage.
    usage = result.usage_summary.model_usage_summaries["scripted"]
    assert usage.total_calls == 6

    # The child's own record carries its subtree's usage and its trajectory.
    block = result.metadata["iterations"][0]["code_blocks"][0]
    child = block["result"]["rlm_calls"][0]
    assert child["usage_summary"]["model_usage_summaries"]["scripted"]["total_calls"] == 4
    child_iterations = child["metadata"]["iterations"]
    grandchildren = child_iterations[0]["code_blocks"][0]["result"]["rlm_calls"]
    assert [g["response"] for g in grandchildren] == ["leaf:a", "leaf:b"]
    assert all(g["metadata"]["iterations"] for g in grandchildren)

    # Token totals add up: the root's tokens equal its own calls plus the child's subtree.
    root_tokens = result.usage_summary.total_tokens
    child_tokens = child["usage_summary"]["model_usage_summaries"]["scripted"]
    assert root_tokens > child_tokens["total_input_tokens"] + child_tokens["total_output_tokens"]


def test_children_at_the_depth_cap_are_plain_model_calls():
    calls: list[str] = []

    def script(messages):
        if messages[0]["role"] != "system":  # a plain sub-call
            calls.append(messages[-1]["content"])
            return "plain answer"
        if "MID" in task(messages):
            if turns(messages) == 0:
                return '```repl\nx = rlm_query("LEAF q")\n```'
            return answer("x")
        if turns(messages) == 0:
            return '```repl\ny = rlm_query("MID q")\n```'
        return answer("y")

    rlm = RLM(backend="scripted", backend_kwargs={"responses": script}, max_depth=2)
    assert rlm.completion("ctx").response == "plain answer"
    assert calls == ["LEAF q"]  # the MID child ran an RLM; its own rlm_query hit the cap


def test_batched_children_never_exceed_max_concurrent_subcalls():
    lock = threading.Lock()
    state = {"now": 0, "peak": 0}

    def script(messages):
        desc = task(messages)
        if "CHILD" in desc:
            with lock:
                state["now"] += 1
                state["peak"] = max(state["peak"], state["now"])
            time.sleep(0.05)  # stay busy so overlapping children would be seen
            with lock:
                state["now"] -= 1
            return answer("context")
        if turns(messages) == 0:
            return '```repl\nout = rlm_query_batched(["CHILD %d" % i for i in range(8)])\n```'
        return answer('"|".join(out)')

    rlm = RLM(
        backend="scripted",
        backend_kwargs={"responses": script},
        max_depth=2,
        max_concurrent_subcalls=2,
    )
    result = rlm.completion("ctx")
    assert result.response == "|".join(f"CHILD {i}" for i in range(8))  # input order
    assert state["peak"] == 2


def test_one_concurrency_cap_for_model_calls_across_the_tree():
    lock = threading.Lock()
    state = {"now": 0, "peak": 0}

    def sub(messages):
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        time.sleep(0.02)
        with lock:
            state["now"] -= 1
        return "ok"

    def script(messages):
        if "CHILD" in task(messages):
            if turns(messages) == 0:
                return '```repl\nr = llm_query_batched(["q"] * 10)\n```'
            return answer("str(len(r))")
        if turns(messages) == 0:
            return '```repl\nout = rlm_query_batched(["CHILD %d" % i for i in range(4)])\n```'
        return answer('",".join(out)')

    rlm = RLM(
        backend="scripted",
        backend_kwargs={"responses": script, "sub_responses": sub},
        max_depth=2,
        max_concurrent_subcalls=4,
        max_concurrent_lm_calls=3,
    )
    assert rlm.completion("ctx").response == "10,10,10,10"
    assert 1 < state["peak"] <= 3


# ---------------------------------------------------------------------------
# Limits leased per subtree
# ---------------------------------------------------------------------------


def test_a_budget_spent_inside_a_child_stops_the_root_with_the_amount():
    def script(messages):
        if "CHILD" in task(messages):
            # The child keeps spending until its lease runs out.
            return '```repl\nfor _ in range(50):\n    llm_query("spend " * 200)\n```'
        if turns(messages) == 0:
            return '```repl\nr = rlm_query("CHILD work")\nprint(r)\n```'
        return answer('"never"')

    rlm = RLM(
        backend="scripted",
        backend_kwargs={
            "responses": script,
            "sub_responses": lambda m: "spent",
            "input_price": 1.0,  # USD per million tokens
            "output_price": 1.0,
        },
        max_depth=2,
        max_budget=0.002,
    )
    with pytest.raises(BudgetExceededError) as info:
        rlm.completion("ctx")
    assert info.value.spent > 0.002
    assert info.value.budget == 0.002
    assert info.value.partial_answer  # the root's last response


def test_a_child_receives_what_is_left_of_the_limits():
    seen: list[tuple] = []
    original = RLM._spawn_child

    def spy(self, run, model):
        child = original(self, run, model)
        seen.append(
            (
                child.depth,
                child.max_budget,
                child.max_tokens,
                child.max_timeout,
                child.max_iterations,
            )
        )
        return child

    def script(messages):
        if "CHILD" in task(messages):
            return answer('"c"')
        n = turns(messages)
        if n < 2:
            return f'```repl\nv{n} = rlm_query("CHILD {n}")\n```'
        return answer("v0 + v1")

    RLM._spawn_child = spy
    try:
        rlm = RLM(
            backend="scripted",
            backend_kwargs={"responses": script, "input_price": 1.0, "output_price": 1.0},
            max_depth=2,
            max_budget=1.0,
            max_tokens=100_000,
            max_timeout=60,
            max_iterations=5,
        )
        assert rlm.completion("ctx").response == "cc"
    finally:
        RLM._spawn_child = original
    (d1, budget1, tokens1, timeout1, iters1), (_, budget2, tokens2, timeout2, iters2) = seen
    assert d1 == 1
    assert budget2 < budget1 < 1.0 and tokens2 < tokens1 < 100_000
    assert timeout2 <= timeout1 <= 60
    # Each child gets the full max_iterations, as in rlms; money, tokens and time are leased.
    assert (iters1, iters2) == (5, 5)


def _reachable(roots, max_depth: int = 6):
    """Objects reachable from ``roots`` through attributes, closures and gc referents,
    not walking into modules, module globals or classes."""
    module_dicts = {id(m.__dict__) for m in list(sys.modules.values()) if hasattr(m, "__dict__")}
    seen: dict[int, object] = {}
    frontier = list(roots)
    for _ in range(max_depth):
        nxt = []
        for obj in frontier:
            if id(obj) in seen or isinstance(obj, (type, type(sys))) or id(obj) in module_dicts:
                continue
            seen[id(obj)] = obj
            for name in (
                "__self__",
                "__wrapped__",
                "__func__",
                "__dict__",
                "__defaults__",
                "__kwdefaults__",
            ):
                try:
                    nxt.append(getattr(obj, name))
                except Exception:
                    pass
            for cell in getattr(obj, "__closure__", None) or ():
                try:
                    nxt.append(cell.cell_contents)
                except ValueError:
                    pass
            nxt.extend(gc.get_referents(obj))
        frontier = nxt
    return list(seen.values())


def test_model_code_cannot_reach_limits_or_the_depth_cap_through_the_helpers():
    grabbed: dict = {}

    def script(messages):
        if turns(messages) == 0:
            return "```repl\ngrab(globals())\n```"
        return answer('"done"')

    def grab(ns):
        grabbed.update(ns)
        return "ok"

    rlm = RLM(
        backend="scripted",
        backend_kwargs={"responses": script},
        max_depth=2,
        max_budget=0.5,
        custom_tools={"grab": grab},
    )
    rlm.completion("ctx")
    helpers = [
        grabbed[n] for n in ("llm_query", "llm_query_batched", "rlm_query", "rlm_query_batched")
    ]
    found = _reachable(helpers)
    assert not [o for o in found if isinstance(o, (RLM, LMHandler, BaseLM))]
    assert not any(hasattr(h, "__self__") for h in helpers)


def test_a_forged_depth_in_a_request_does_not_lift_the_depth_cap():
    """Model code that sends its own rlm request claiming depth 0 still gets a plain call."""
    plain: list[str] = []

    def script(messages):
        if messages[0]["role"] != "system":
            plain.append(messages[-1]["content"])
            return "plain"
        if "CHILD" in task(messages):
            if turns(messages) == 0:
                return (
                    "```repl\nfrom rlm.core.comms_utils import LMRequest, send_lm_request\n"
                    "import rlm.core.comms_utils as cu\n"
                    "addr = list(cu._tokens)[-1]\n"  # this child's own handler
                    "r = send_lm_request(addr, LMRequest(prompt='DEEPER', depth=0, kind='rlm'))\n"
                    "got = r.chat_completion.response if r.chat_completion else r.error\n```"
                )
            return answer("got")
        if turns(messages) == 0:
            return '```repl\nx = rlm_query("CHILD q")\n```'
        return answer("x")

    rlm = RLM(backend="scripted", backend_kwargs={"responses": script}, max_depth=2)
    assert rlm.completion("ctx").response == "plain"
    assert plain == ["DEEPER"]


# ---------------------------------------------------------------------------
# Routing
# ---------------------------------------------------------------------------


def test_other_backends_register_models_and_take_depth_routing():
    rlm = RLM(
        backend="scripted",
        backend_kwargs={
            "responses": [
                '```repl\na = llm_query("x")\nb = llm_query("y", model="small")\n'
                'c = llm_query("z", model="big")\n```',
                answer('a + "/" + b + "/" + c'),
            ]
        },
        other_backends=["scripted", "scripted"],
        other_backend_kwargs=[
            {"model_name": "small", "sub_responses": lambda m: "S"},
            {"model_name": "big", "sub_responses": lambda m: "B"},
        ],
    )
    result = rlm.completion("ctx")
    # depth 1 goes to the first other backend; model= picks any registered one.
    assert result.response == "S/S/B"
    assert set(result.usage_summary.model_usage_summaries) == {"scripted", "small", "big"}


def test_depth_models_map_a_depth_to_a_registered_model():
    def script(messages):
        if "CHILD" in task(messages):
            if turns(messages) == 0:
                return '```repl\nv = llm_query("q")\n```'
            return answer("v")
        if turns(messages) == 0:
            return '```repl\nw = llm_query("q") + ":" + rlm_query("CHILD")\n```'
        return answer("w")

    rlm = RLM(
        backend="scripted",
        backend_kwargs={"responses": script},
        max_depth=2,
        other_backends=["scripted", "scripted"],
        other_backend_kwargs=[
            {"model_name": "one", "sub_responses": lambda m: "one"},
            {"model_name": "two", "sub_responses": lambda m: "two"},
        ],
        depth_models={2: "two"},
    )
    assert rlm.completion("ctx").response == "one:two"
    # Clients are built at the first completion (as in rlms), so the check runs there.
    unserved = RLM(
        backend="scripted", backend_kwargs={"responses": ["x"]}, depth_models={1: "nope"}
    )
    with pytest.raises(ValueError, match="depth_models"):
        unserved.completion("ctx")


def test_sampling_args_reach_root_and_sub_clients():
    rlm = RLM(
        backend="scripted",
        backend_kwargs={"responses": ["x"]},
        sampling_args={"temperature": 0.1},
        sub_sampling_args={"temperature": 0.9},
    )
    assert rlm.client.sampling_args == {"temperature": 0.1}
    assert rlm.other_clients[0].sampling_args == {"temperature": 0.9}


# ---------------------------------------------------------------------------
# Persistent sessions
# ---------------------------------------------------------------------------


def test_a_variable_from_turn_one_is_used_in_turn_three():
    prompts: list[str] = []

    def script(messages):
        prompts.append(messages[-1]["content"])
        if len(prompts) == 1:  # turn one stores a variable
            return '```repl\nsecret = "kept-" + context\nanswer["content"] = "stored"\nanswer["ready"] = True\n```'
        return answer('secret + "+" + context_2 + "+" + str(len(history_1))')

    with RLM(backend="scripted", backend_kwargs={"responses": script}, persistent=True) as rlm:
        assert rlm.completion("A").response == "stored"
        rlm.completion("B")
        third = rlm.completion("C")
        assert third.response.startswith("kept-A+C+")
        assert "3 contexts" in prompts[-1] and "2 previous conversations" in prompts[-1]
        env = rlm._persistent_env
        assert env is not None and env.get_context_count() == 3
    assert rlm._persistent_env is None  # the context manager released it


# ---------------------------------------------------------------------------
# Custom tools
# ---------------------------------------------------------------------------


def test_children_inherit_custom_sub_tools():
    def script(messages):
        if "CHILD" in task(messages):
            return answer('"tools:" + str("double" in dir()) + str("triple" in dir())')
        if turns(messages) == 0:
            return '```repl\nr = rlm_query("CHILD")\nd = double(2)\n```'
        return answer('r + ":" + str(d)')

    rlm = RLM(
        backend="scripted",
        backend_kwargs={"responses": script},
        max_depth=2,
        custom_tools={"double": {"tool": lambda x: 2 * x, "description": "doubles a number"}},
        custom_sub_tools={"triple": lambda x: 3 * x},
    )
    assert rlm.completion("ctx").response == "tools:FalseTrue:4"
    assert "doubles a number" in rlm.client.calls[0][0]["content"]


def test_custom_sub_tools_none_inherits_and_empty_means_none():
    def script(messages):
        if "CHILD" in task(messages):
            return answer('str("double" in dir())')
        if turns(messages) == 0:
            return '```repl\nr = rlm_query("CHILD")\n```'
        return answer("r")

    tools = {"double": lambda x: 2 * x}
    inherit = RLM(
        backend="scripted", backend_kwargs={"responses": script}, max_depth=2, custom_tools=tools
    )
    assert inherit.completion("ctx").response == "True"
    none = RLM(
        backend="scripted",
        backend_kwargs={"responses": script},
        max_depth=2,
        custom_tools=tools,
        custom_sub_tools={},
    )
    assert none.completion("ctx").response == "False"


def test_reserved_tool_names_are_refused_at_construction():
    with pytest.raises(ValueError, match="reserved"):
        RLM(
            backend="scripted",
            backend_kwargs={"responses": ["x"]},
            custom_tools={"llm_query": print},
        )
    with pytest.raises(ValueError, match="reserved"):
        RLM(backend="scripted", backend_kwargs={"responses": ["x"]}, custom_sub_tools={"answer": 1})


# ---------------------------------------------------------------------------
# Compaction
# ---------------------------------------------------------------------------


def test_compaction_restarts_from_a_summary_and_history_keeps_everything():
    seen_lengths: list[int] = []

    def script(messages):
        seen_lengths.append(len(messages))
        if "about to be shortened" in messages[-1]["content"]:
            return "SUMMARY: printed three steps so far"
        if "shortened once" in str(messages):
            return answer("str(len(history))")
        n = turns(messages)
        return f'```repl\nprint("step {n}", "x" * 600)\n```'

    rlm = RLM(
        backend="scripted",
        backend_kwargs={"responses": script},
        compaction=True,
        compaction_threshold_pct=0.5,
        context_window=1500,
        max_iterations=12,
    )
    result = rlm.completion("ctx")
    # The history was restarted: some prompt is shorter than the one before it ...
    assert any(b < a for a, b in zip(seen_lengths, seen_lengths[1:], strict=False))
    # ... the restarted prompt carries the summary, and `history` kept every segment + it.
    assert int(result.response) >= 2
    assert any("SUMMARY" in m["content"] for m in rlm.client.calls[-1])
    assert "`history`" in rlm.client.calls[0][0]["content"]


def test_compaction_history_entries_are_segments_and_summaries():
    grabbed: dict = {}

    def grab(h):
        grabbed["history"] = list(h)
        return "ok"

    def script(messages):
        last = messages[-1]["content"]
        if "about to be shortened" in last:
            return "SUMMARY-TEXT"
        if "shortened once" in str(messages):
            return '```repl\ngrab(history)\nanswer["content"] = "done"\nanswer["ready"] = True\n```'
        return '```repl\nprint("y" * 800)\n```'

    rlm = RLM(
        backend="scripted",
        backend_kwargs={"responses": script},
        compaction=True,
        compaction_threshold_pct=0.5,
        context_window=1200,
        custom_tools={"grab": grab},
        max_iterations=10,
    )
    assert rlm.completion("ctx").response == "done"
    history = grabbed["history"]
    summaries = [e for e in history if isinstance(e, dict) and e.get("type") == "summary"]
    segments = [e for e in history if isinstance(e, list)]
    assert summaries and summaries[0]["content"] == "SUMMARY-TEXT"
    assert segments and all(m["role"] in ("user", "assistant") for seg in segments for m in seg)
    # As in rlms, an iteration's entry is [the model's reply, the REPL output fed back].
    assert all(seg[0]["role"] == "assistant" for seg in segments)
    assert all(seg[-1]["role"] == "user" for seg in segments)


# ---------------------------------------------------------------------------
# Callbacks
# ---------------------------------------------------------------------------


def test_every_callback_fires_for_root_and_children_and_raising_ones_are_harmless():
    events: list[tuple] = []

    def boom(*args):
        raise RuntimeError("callback bug")

    rlm = RLM(
        backend="scripted",
        backend_kwargs={"responses": tree_script},
        max_depth=3,
        on_iteration_start=lambda d, i: events.append(("it_start", d, i)),
        on_iteration_complete=lambda d, i, s: events.append(("it_done", d, i, s >= 0)),
        on_subcall_start=lambda d, m, p: events.append(("sub_start", d, m, p)),
        on_subcall_complete=lambda d, m, s, e: events.append(("sub_done", d, m, e)),
    )
    assert rlm.completion("ROOT", root_prompt="go").response == "root[mid(leaf:a,leaf:b)]"
    depths = {e[1] for e in events if e[0] == "it_start"}
    assert depths == {0, 1, 2}
    assert ("sub_start", 1, "scripted", "MID task") in events
    assert sorted(e for e in events if e[0] == "sub_start" and e[1] == 2) == [
        ("sub_start", 2, "scripted", "LEAF a"),
        ("sub_start", 2, "scripted", "LEAF b"),
    ]
    assert all(e[3] is None for e in events if e[0] == "sub_done")
    assert all(e[3] for e in events if e[0] == "it_done")

    noisy = RLM(
        backend="scripted",
        backend_kwargs={"responses": tree_script},
        max_depth=3,
        on_iteration_start=boom,
        on_iteration_complete=boom,
        on_subcall_start=boom,
        on_subcall_complete=boom,
    )
    assert noisy.completion("ROOT", root_prompt="go").response == "root[mid(leaf:a,leaf:b)]"


def test_cancelling_acompletion_stops_a_running_child_cell():
    import asyncio

    ticks: list[float] = []

    def script(messages):
        if "CHILD" in task(messages):
            return (
                "```repl\nimport time\nfor _ in range(400):\n    tick()\n    time.sleep(0.05)\n```"
            )
        if turns(messages) == 0:
            return '```repl\nr = rlm_query("CHILD loop")\n```'
        return answer("r")

    rlm = RLM(
        backend="scripted",
        backend_kwargs={"responses": script},
        max_depth=2,
        custom_tools={"tick": lambda: ticks.append(time.monotonic())},
    )

    async def main():
        task_ = asyncio.ensure_future(rlm.acompletion("ctx"))
        while not ticks:  # the child's cell is running
            await asyncio.sleep(0.01)
        task_.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task_

    asyncio.run(main())
    time.sleep(3.0)  # past the interrupt grace period
    settled = len(ticks)
    time.sleep(0.5)
    assert len(ticks) == settled  # the child's loop no longer runs
    assert settled < 400


def test_a_stopped_handler_refuses_batches_without_starting_a_thread():
    from rlm.clients import get_client
    from rlm.core.comms_utils import LMRequest

    handler = LMHandler(get_client("scripted", {"responses": lambda m: "ok"}))
    handler.start()
    handler.stop()
    before = {t.name for t in threading.enumerate()}
    response = handler.handle_request(LMRequest(prompts=["a", "b"]))
    assert response.error and "stopped" in response.error
    assert not ({t.name for t in threading.enumerate()} - before)


# ---------------------------------------------------------------------------
# What a tree holds: one listener per handler, no connections, one accept thread
# ---------------------------------------------------------------------------


def _open_sockets() -> int:
    import os

    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{name}").startswith("socket:")
        except OSError:
            pass
    return count


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts /proc/self/fd")
def test_a_tree_holds_a_listener_per_run_and_no_connections():
    """Depth 3, fan-out 2, children at once: 7 runs alive, so at most 7 sockets (their
    handlers' listeners), and one accept thread for all of them."""
    seen = {"sockets": 0, "accept_threads": set(), "leaves": 0}
    lock = threading.Lock()

    def sample():
        names = [t.name for t in threading.enumerate()]
        with lock:
            seen["sockets"] = max(seen["sockets"], _open_sockets())
            seen["accept_threads"].add(sum(1 for n in names if n == "rlm-lm-accept"))
            assert not any(n.startswith("rlm-lm-handler") for n in names)

    def script(messages):
        sample()
        if turns(messages) == 0:
            return '```repl\nr = rlm_query_batched(["a", "b"])\n```'
        return answer('"done"')

    def leaf(messages):
        sample()
        with lock:
            seen["leaves"] += 1
        return "leaf"

    before = _open_sockets()
    rlm = RLM(
        backend="scripted",
        backend_kwargs={"responses": script, "sub_responses": leaf},
        max_depth=3,
    )
    assert rlm.completion("ctx").response == "done"
    assert seen["leaves"] == 8
    assert seen["sockets"] - before <= 7
    assert seen["accept_threads"] == {1}


def test_a_child_runs_in_the_thread_that_asked_for_it():
    """``rlm_query`` from a cell: the child's loop runs in that cell's thread (as in rlms),
    not on a thread of its own."""
    where: dict[int, list[threading.Thread]] = {}

    def note(depth, iteration):
        where.setdefault(depth, []).append(threading.current_thread())

    cells: list[threading.Thread] = []

    def script(messages):
        if "child task" in task(messages):
            return answer('"from the child"')
        if turns(messages) == 0:
            return '```repl\nhere()\nr = rlm_query("child task")\n```'
        return answer("r")

    rlm = RLM(
        backend="scripted",
        backend_kwargs={"responses": script},
        max_depth=2,
        custom_tools={"here": lambda: cells.append(threading.current_thread())},
        on_iteration_start=note,
    )
    assert rlm.completion("ctx").response == "from the child"
    assert where[1] == [cells[0]]
    assert where[0][0] is threading.current_thread()


def test_what_a_child_run_prints_is_not_the_parent_cells_output(capsys):
    """A child run runs in the parent cell's thread: its subscribers' prints and the
    warnings of a raising subscriber go to the real streams, not into the cell's output
    that the root model reads."""

    def script(messages):
        if "CHILD" in task(messages):
            return answer('"child-done"')
        if turns(messages) == 0:
            return '```repl\nres = rlm_query("CHILD task")\nprint("parent sees", res)\n```'
        return answer("res")

    def bad(event):
        if event.type == "subcall_started":
            raise ValueError("subscriber bug")

    rlm = RLM(
        backend="scripted",
        backend_kwargs={"responses": script},
        max_depth=2,
        logger=RLMLogger(),  # in memory: result.metadata holds the trajectory
    )
    rlm.subscribe(lambda event: print("SUBSCRIBER", event.type))
    rlm.subscribe(bad)
    with pytest.warns(RuntimeWarning, match="subscriber bug"):
        result = rlm.completion("ROOT context", root_prompt="go")
    assert result.response == "child-done"
    cell = result.metadata["iterations"][0]["code_blocks"][0]["result"]
    assert cell["stdout"] == "parent sees child-done\n"
    assert "subscriber bug" not in cell["stderr"]
    printed = capsys.readouterr().out
    assert "SUBSCRIBER subcall_started" in printed and "SUBSCRIBER run_started" in printed
