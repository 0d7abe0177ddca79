"""The RLM loop, driven end to end by the scripted LM through a real handler and a real LocalREPL."""

from __future__ import annotations

import _thread
import asyncio
import signal
import threading

import pytest

from rlm import (
    RLM,
    BudgetExceededError,
    CancellationError,
    ErrorThresholdExceededError,
    TimeoutExceededError,
    TokenLimitExceededError,
)
from rlm.clients.scripted import ScriptedLM
from rlm.core.types import RLMChatCompletion
from rlm.utils.exceptions import ConfigurationError


def block(code: str) -> str:
    return f"```repl\n{code}\n```"


def make_rlm(responses, sub_responses=None, backend_kwargs=None, **kwargs) -> RLM:
    bk = {"responses": responses, **(backend_kwargs or {})}
    if sub_responses is not None:
        bk["sub_responses"] = sub_responses
    return RLM(backend="scripted", backend_kwargs=bk, **kwargs)


def root_calls(rlm: RLM) -> list[list[dict]]:
    client = rlm.client
    assert isinstance(client, ScriptedLM)
    return [m for m in client.calls if m and m[0].get("role") == "system"]


# ---------------------------------------------------------------------------
# Final-answer forms
# ---------------------------------------------------------------------------


def test_answer_dict_ends_the_run():
    rlm = make_rlm(
        [
            block("n = len(context)"),
            block("answer['content'] = f'length {n}'\nanswer['ready'] = True"),
            "never asked",
        ]
    )
    result = rlm.completion("abcdef")
    assert isinstance(result, RLMChatCompletion)
    assert result.response == "length 6"
    assert len(root_calls(rlm)) == 2
    assert result.prompt == "abcdef"
    assert result.root_model == "scripted"
    assert result.error is None


def test_answer_update_and_rebinding_end_the_run():
    rlm = make_rlm([block("answer.update(content='via update', ready=True)")])
    assert rlm.completion("c").response == "via update"
    rlm = make_rlm([block("answer = {'content': 'rebound', 'ready': True}")])
    assert rlm.completion("c").response == "rebound"


def test_final_var_inside_a_block_ends_the_run():
    rlm = make_rlm([block("found = context.upper()\nFINAL_VAR('found')"), "never"])
    assert rlm.completion("shout").response == "SHOUT"


def test_final_line_ends_the_run():
    rlm = make_rlm(["I know it already.\nFINAL(the answer is (a) 42)\n", "never"])
    assert rlm.completion("c").response == "the answer is (a) 42"


def test_final_var_line_after_a_block_that_defines_it():
    rlm = make_rlm([block("result = context[::-1]") + "\nFINAL_VAR(result)\n", "never"])
    assert rlm.completion("olleh").response == "hello"


def test_final_var_line_in_a_later_iteration():
    rlm = make_rlm([block("kept = 'from turn one'"), "FINAL_VAR(kept)"])
    assert rlm.completion("c").response == "from turn one"


def test_final_var_line_of_a_missing_name_does_not_end_the_run():
    rlm = make_rlm(["FINAL_VAR(nothing_here)", "FINAL(recovered)"])
    assert rlm.completion("c").response == "recovered"
    assert len(root_calls(rlm)) == 2


def test_final_inside_a_code_block_is_not_a_final_line():
    rlm = make_rlm([block("s = 'FINAL(not this)'"), "FINAL(this)"])
    assert rlm.completion("c").response == "this"


# ---------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------


def test_every_block_runs_in_order_and_the_first_answer_stops_the_rest():
    log: list[int] = []
    response = "\n".join(
        [
            "First I look.",
            block("record(1)"),
            "Then more.",
            block("record(2)\nanswer['content'] = 'second'\nanswer['ready'] = True"),
            block("record(3)"),
        ]
    )
    rlm = make_rlm([block("record(0)\nrecord(0.5)"), response], custom_tools={"record": log.append})
    result = rlm.completion("c")
    assert result.response == "second"
    assert log == [0, 0.5, 1, 2]


def test_block_output_is_fed_back_to_the_model():
    seen: list[str] = []

    def root(messages):
        if len(seen) == 0:
            seen.append("")
            return block("print('visible-' + context)")
        seen.append("\n".join(str(m["content"]) for m in messages))
        return "FINAL(ok)"

    make_rlm(root).completion("token")
    assert "visible-token" in seen[1]


def test_error_in_a_block_is_shown_and_the_run_continues():
    seen: list[str] = []

    def root(messages):
        if not seen:
            seen.append("")
            return block("x = 1\nundefined_name")
        seen.append("\n".join(str(m["content"]) for m in messages))
        return block("FINAL_VAR(x)")

    assert make_rlm(root).completion("c").response == "1"
    assert "NameError" in seen[1]


# ---------------------------------------------------------------------------
# Limits
# ---------------------------------------------------------------------------


def test_max_iterations_then_one_final_answer_request():
    rlm = make_rlm([block("a = 1"), block("b = 2"), "my best guess"], max_iterations=2)
    result = rlm.completion("c")
    assert result.response == "my best guess"
    calls = root_calls(rlm)
    assert len(calls) == 3
    assert "no turns left" in calls[-1][-1]["content"]


def test_max_iterations_final_request_understands_final_line():
    rlm = make_rlm([block("a = 1"), "Reasoning...\nFINAL(clean answer)"], max_iterations=1)
    assert rlm.completion("c").response == "clean answer"


def test_max_timeout_during_a_long_cell():
    response = "Looping.\n" + block("started = True\nwhile True:\n    pass")
    rlm = make_rlm([response, "never"], max_timeout=1)
    with pytest.raises(TimeoutExceededError) as info:
        rlm.completion("c")
    assert info.value.partial_answer == response
    assert info.value.timeout == 1
    assert info.value.elapsed >= 1


def test_max_timeout_during_a_slow_root_call():
    rlm = make_rlm(["FINAL(too late)"], backend_kwargs={"delay": 1.5}, max_timeout=0.3)
    with pytest.raises(TimeoutExceededError) as info:
        rlm.completion("c")
    assert info.value.partial_answer is None
    assert "root model" in str(info.value)


def test_max_timeout_partial_answer_from_an_earlier_iteration():
    calls = {"n": 0}

    def root(messages):
        calls["n"] += 1
        if calls["n"] == 1:
            return "draft answer text\n" + block("x = 1")
        return block("while True:\n    pass")

    with pytest.raises(TimeoutExceededError) as info:
        make_rlm(root, max_timeout=1).completion("c")
    assert info.value.partial_answer is not None
    assert "while True" in info.value.partial_answer


def test_max_timeout_does_not_disturb_a_quick_run():
    assert make_rlm(["FINAL(quick)"], max_timeout=30).completion("c").response == "quick"


def test_max_budget():
    got: list[str] = []
    response = "Spending.\n" + block("got(llm_query('sub question'))")
    rlm = make_rlm(
        [response, "never"],
        sub_responses=lambda m: "sub answer",
        backend_kwargs={"input_price": 1000.0, "output_price": 1000.0},
        max_budget=0.01,
        custom_tools={"got": got.append},
    )
    with pytest.raises(BudgetExceededError) as info:
        rlm.completion("c")
    err = info.value
    assert err.budget == 0.01
    assert err.spent > 0.01
    assert err.partial_answer == response
    # Once the budget was spent, the sub-call was refused with an Error: string.
    assert got[0].startswith("Error:") and "Budget exhausted" in got[0]


def test_max_budget_not_reached():
    rlm = make_rlm(
        [block("x = 1"), "FINAL(cheap)"],
        backend_kwargs={"input_price": 0.001, "output_price": 0.001},
        max_budget=10.0,
    )
    result = rlm.completion("c")
    assert result.response == "cheap"
    assert result.usage_summary.total_cost is not None
    assert 0 < result.usage_summary.total_cost < 10.0


def test_max_tokens():
    response = block("x = 1")
    rlm = make_rlm([response, "never"], max_tokens=50)
    with pytest.raises(TokenLimitExceededError) as info:
        rlm.completion("c")
    assert info.value.token_limit == 50
    assert info.value.tokens_used > 50
    assert info.value.partial_answer == response


def test_max_errors_after_consecutive_failures():
    failing = block("raise ValueError('always broken')")
    rlm = make_rlm([failing, failing, failing, "never"], max_errors=3)
    with pytest.raises(ErrorThresholdExceededError) as info:
        rlm.completion("c")
    assert info.value.error_count == 3
    assert info.value.threshold == 3
    assert "always broken" in (info.value.last_error or "")
    assert len(root_calls(rlm)) == 3


def test_max_errors_counter_resets_after_a_clean_iteration():
    bad = block("1 / 0")
    good = block("ok = True")
    rlm = make_rlm([bad, good, bad, good, bad, "FINAL(made it)"], max_errors=2)
    assert rlm.completion("c").response == "made it"

    rlm = make_rlm([bad, good, bad, bad, "never"], max_errors=2)
    with pytest.raises(ErrorThresholdExceededError) as info:
        rlm.completion("c")
    assert "ZeroDivisionError" in (info.value.last_error or "")
    assert len(root_calls(rlm)) == 4


# ---------------------------------------------------------------------------
# Containment and cancellation
# ---------------------------------------------------------------------------


def test_sys_exit_and_keyboard_interrupt_in_blocks_never_escape():
    rlm = make_rlm(
        [
            block("import sys\nsys.exit(1)"),
            block("raise SystemExit('bye')"),
            block("raise KeyboardInterrupt"),
            block("import os\nexit()"),
            "FINAL(survived)",
        ]
    )
    assert rlm.completion("c").response == "survived"


@pytest.mark.parametrize("max_timeout", [None, 60])
def test_ctrl_c_during_the_root_call_gives_cancellation_error(max_timeout):
    turn = {"n": 0}
    first = "first look\n" + block("x = 1")

    def root(messages):
        # Without a deadline the root call runs in the loop's thread, where Ctrl-C reaches
        # the call itself; with one, in a helper thread while the caller waits (and gets it).
        in_main = threading.current_thread() is threading.main_thread()
        assert in_main is (max_timeout is None)
        turn["n"] += 1
        if turn["n"] == 1:
            return first
        _thread.interrupt_main()  # what Ctrl-C does: KeyboardInterrupt in the main thread
        return block("y = 2")

    rlm = make_rlm(root, max_iterations=10, max_timeout=max_timeout)
    with pytest.raises(CancellationError) as info:
        rlm.completion("c")
    assert info.value.partial_answer is not None
    assert turn["n"] == 2


def test_ctrl_c_while_a_slow_root_call_runs_in_its_own_thread():
    """With max_timeout the root call runs in a helper thread; Ctrl-C still cancels at once."""
    main_id = threading.main_thread().ident
    release = threading.Event()
    threads: list[str] = []

    def root(messages):
        threads.append(threading.current_thread().name)
        if len(threads) == 1:
            return block("x = 1")
        signal.pthread_kill(main_id, signal.SIGINT)
        release.wait(10)  # a model call that is still running when the user presses Ctrl-C
        return "FINAL(too late)"

    rlm = make_rlm(root, max_timeout=60)
    try:
        with pytest.raises(CancellationError) as info:
            rlm.completion("c")
    finally:
        release.set()
    assert all(name != threading.main_thread().name for name in threads)
    assert info.value.partial_answer == block("x = 1")


def test_ctrl_c_during_a_long_cell_gives_cancellation_error():
    main_id = threading.main_thread().ident
    cell_threads: list[threading.Thread] = []

    def press_ctrl_c():
        # Fired as the cell starts: the signal may land while the main thread is still
        # starting the cell's thread, not yet waiting for it.
        cell_threads.append(threading.current_thread())
        signal.pthread_kill(main_id, signal.SIGINT)

    rlm = make_rlm(
        [block("ctrl_c()\nwhile True:\n    pass"), "never"],
        custom_tools={"ctrl_c": press_ctrl_c},
        environment_kwargs={"cell_timeout": 20},
    )
    with pytest.raises(CancellationError):
        rlm.completion("c")
    cell_threads[0].join(10)
    assert not cell_threads[0].is_alive(), "the interrupted cell kept running"


def test_acompletion_task_cancellation_stops_the_run():
    started = threading.Event()
    release = threading.Event()
    count = {"root": 0}

    def root(messages):
        count["root"] += 1
        started.set()
        release.wait(10)
        return block("x = 1")

    rlm = make_rlm(root, max_iterations=50)

    async def main():
        task = asyncio.ensure_future(rlm.acompletion("c"))
        await asyncio.to_thread(started.wait, 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()

    asyncio.run(main())  # waits for the worker thread (default executor shutdown)
    assert count["root"] == 1  # the run stopped instead of iterating on


def test_acompletion_cancellation_stops_a_running_cell():
    from rlm.logger import RLMLogger

    started = threading.Event()
    logger = RLMLogger()
    rlm = make_rlm(
        [block("started()\nwhile True:\n    pass"), "never"],
        custom_tools={"started": started.set},
        environment_kwargs={"cell_timeout": 30},
        logger=logger,
    )

    async def main():
        task = asyncio.ensure_future(rlm.acompletion("c"))
        await asyncio.to_thread(started.wait, 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())  # returns once the worker thread has finished
    iterations = logger.get_trajectory()["iterations"]
    assert len(iterations) == 1
    error = iterations[0]["code_blocks"][0]["result"]["error"]
    assert error.startswith("Interrupted"), error  # stopped by the cancel, not by the timeout
    assert len(root_calls(rlm)) == 1


def test_cancelled_run_reports_cancellation_not_an_error_threshold():
    """A cell stopped by cancellation is not counted as the model's error."""
    from rlm.core.rlm import _Run

    started = threading.Event()
    rlm = make_rlm(
        [block("started()\nwhile True:\n    pass"), "never"],
        custom_tools={"started": started.set},
        environment_kwargs={"cell_timeout": 30},
        max_errors=1,
    )
    run = _Run(rlm)
    box: dict[str, BaseException] = {}

    def work():
        try:
            rlm._completion("c", None, run)
        except BaseException as exc:  # inspected below
            box["exc"] = exc

    worker = threading.Thread(target=work)
    worker.start()
    assert started.wait(10)
    run.cancel()
    worker.join(10)
    assert isinstance(box.get("exc"), CancellationError)


# ---------------------------------------------------------------------------
# Depth, callbacks, async, prompt types
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [1, 2])
def test_depth_at_or_beyond_max_depth_is_one_plain_call(depth):
    rlm = make_rlm(["direct answer"], depth=depth, max_depth=1)
    result = rlm.completion("what is it?")
    assert isinstance(result, RLMChatCompletion)
    assert result.response == "direct answer"
    assert result.usage_summary.total_calls == 1
    calls = rlm.client.calls
    assert len(calls) == 1
    assert calls[0] == [{"role": "user", "content": "what is it?"}]


def test_all_callbacks_fire_with_the_right_arguments():
    events: list[tuple] = []
    root_turns = iter([block("r = rlm_query('sub question here')\nprint(r)"), "FINAL(done)"])

    def script(messages):
        if "sub question here" in messages[1]["content"]:  # the child's own task
            return "FINAL(child says hi)"
        return next(root_turns)

    rlm = make_rlm(
        script,
        max_depth=2,
        on_subcall_start=lambda *a: events.append(("sub_start", *a)),
        on_subcall_complete=lambda *a: events.append(("sub_done", *a)),
        on_iteration_start=lambda *a: events.append(("it_start", *a)),
        on_iteration_complete=lambda *a: events.append(("it_done", *a)),
    )
    assert rlm.completion("c").response == "done"
    # The root's iteration 1 starts a child RLM (depth 1), whose own iterations fire too.
    kinds = [(e[0], e[1]) for e in events]
    assert kinds[:2] == [("it_start", 0), ("sub_start", 1)]
    assert kinds[-3:] == [("it_done", 0), ("it_start", 0), ("it_done", 0)]
    assert events[0] == ("it_start", 0, 1)
    assert events[1] == ("sub_start", 1, "scripted", "sub question here")
    sub_done = next(e for e in events if e[0] == "sub_done")
    assert sub_done[:3] == ("sub_done", 1, "scripted")
    assert isinstance(sub_done[3], float) and sub_done[3] >= 0
    assert sub_done[4] is None
    assert all(depth == 1 for kind, depth in kinds[2:-3] if kind.startswith("it_"))


def test_subcall_callbacks_do_not_fire_for_plain_calls_at_the_depth_cap():
    # As in rlms, on_subcall_* report child RLMs; rlm_query at the cap is a plain call.
    events: list[tuple] = []
    rlm = make_rlm(
        [block("r = rlm_query('q')"), "FINAL(ok)"],
        sub_responses=lambda m: "plain",
        on_subcall_start=lambda *a: events.append(a),
        on_subcall_complete=lambda *a: events.append(a),
    )
    assert rlm.completion("c").response == "ok"
    assert events == []


def test_rlm_query_falls_back_to_a_model_call_at_max_depth_one():
    got: list[str] = []
    rlm = make_rlm(
        [block("got(rlm_query('q1'))\ngot(rlm_query_batched(['q2', 'q3']))"), "FINAL(ok)"],
        sub_responses=lambda m: "re:" + m[-1]["content"],
        custom_tools={"got": got.append},
    )
    assert rlm.completion("c").response == "ok"
    assert got == ["re:q1", ["re:q2", "re:q3"]]


def test_subcall_error_reaches_on_subcall_complete():
    events: list[tuple] = []

    got: list[str] = []
    responses = iter([block("got(rlm_query('CHILD task'))"), "FINAL(ok)"])

    def root(messages):
        if "CHILD" in messages[1]["content"]:  # the child's own task
            raise RuntimeError("child model down")
        return next(responses)

    rlm = RLM(
        backend="scripted",
        backend_kwargs={"responses": root},
        max_depth=2,
        custom_tools={"got": got.append},
        on_subcall_complete=lambda *a: events.append(a),
    )
    assert rlm.completion("c").response == "ok"
    assert got[0].startswith("Error: Child RLM completion failed")
    assert "child model down" in (events[0][3] or "")


def test_raising_callbacks_never_break_the_run():
    def boom(*args):
        raise RuntimeError("callback bug")

    rlm = make_rlm(
        [block("r = rlm_query('q')"), "FINAL(fine)"],
        sub_responses=lambda m: "sub",
        on_subcall_start=boom,
        on_subcall_complete=boom,
        on_iteration_start=boom,
        on_iteration_complete=boom,
    )
    assert rlm.completion("c").response == "fine"


def test_acompletion_returns_the_same_result_as_completion():
    script = [block("n = len(context)\nm = llm_query('half')"), block("FINAL_VAR(n)")]
    sync = make_rlm(list(script), sub_responses=lambda m: "sub").completion("twelve chars")
    async_result = asyncio.run(
        make_rlm(list(script), sub_responses=lambda m: "sub").acompletion("twelve chars")
    )
    assert isinstance(async_result, RLMChatCompletion)
    assert async_result.response == sync.response == "12"
    assert async_result.prompt == sync.prompt
    assert async_result.root_model == sync.root_model
    assert async_result.usage_summary.to_dict() == sync.usage_summary.to_dict()


def test_concurrent_acompletions_on_one_rlm_do_not_mix():
    rlm = make_rlm(lambda m: block("answer.update(content=str(context), ready=True)"))

    async def main():
        return await asyncio.gather(*(rlm.acompletion(f"ctx-{i}") for i in range(6)))

    results = asyncio.run(main())
    assert [r.response for r in results] == [f"ctx-{i}" for i in range(6)]


@pytest.mark.parametrize(
    "prompt, type_name",
    [
        ("plain text", "str"),
        (["chunk one", "chunk two"], "list"),
        ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "list"),
        ({"doc": "text", 7: [1, 2]}, "dict"),
        (b"raw\x00bytes", "bytes"),
    ],
    ids=["str", "list-of-str", "messages", "dict", "bytes"],
)
def test_prompt_types(prompt, type_name):
    seen: list[object] = []
    rlm = make_rlm(
        [block("seen(context)\nanswer.update(content=type(context).__name__, ready=True)")],
        custom_tools={"seen": seen.append},
    )
    result = rlm.completion(prompt)
    assert result.response == type_name
    assert seen[0] is prompt
    assert result.prompt is prompt


def test_root_prompt_reaches_the_model():
    rlm = make_rlm(["FINAL(x)"])
    rlm.completion("big context", root_prompt="Which colour is the sky?")
    text = "\n".join(str(m["content"]) for m in root_calls(rlm)[0])
    assert "Which colour is the sky?" in text
    assert "big context" not in text  # the context itself stays in the REPL


def test_usage_summary_counts_root_and_sub_calls():
    rlm = make_rlm(
        [block("a = llm_query('one')\nb = llm_query_batched(['two', 'three'])"), "FINAL(done)"],
        sub_responses=lambda m: "s",
    )
    result = rlm.completion("c")
    usage = result.usage_summary
    assert usage.total_calls == 5  # 2 root + 3 sub
    assert usage.model_usage_summaries["scripted"].total_calls == 5
    assert usage.total_input_tokens > 0 and usage.total_output_tokens > 0


def test_usage_per_model_with_other_backends():
    rlm = make_rlm(
        [block("a = llm_query('one')"), "FINAL(done)"],
        other_backends=["scripted"],
        other_backend_kwargs=[{"model_name": "small", "responses": lambda m: "s"}],
    )
    usage = rlm.completion("c").usage_summary
    assert usage.model_usage_summaries["scripted"].total_calls == 2
    assert usage.model_usage_summaries["small"].total_calls == 1


# ---------------------------------------------------------------------------
# Construction
# ---------------------------------------------------------------------------


def test_unknown_backend_raises_at_the_first_completion():
    # As in rlms, clients are built when first needed: RLM(...) itself constructs.
    rlm = RLM(backend="no-such-backend")
    with pytest.raises(ConfigurationError, match="no-such-backend"):
        rlm.completion("c")


def test_unknown_environment_raises_at_construction():
    with pytest.raises(ConfigurationError, match="nowhere"):
        make_rlm(["x"], environment="nowhere")


def test_mismatched_other_backends_raises():
    with pytest.raises(ConfigurationError, match="other_backend_kwargs"):
        make_rlm(
            ["x"],
            other_backends=["scripted", "scripted"],
            other_backend_kwargs=[{"responses": ["y"]}],
        )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_iterations": 0},
        {"max_iterations": -3},
        {"max_iterations": 2.5},
        {"max_depth": 0},
        {"depth": -1},
        {"max_budget": -1.0},
        {"max_budget": 0},
        {"max_timeout": 0},
        {"max_timeout": "10"},
        {"max_tokens": -5},
        {"max_errors": 0},
        {"max_concurrent_subcalls": 0},
        {"compaction_threshold_pct": 0},
        {"compaction_threshold_pct": 1.5},
    ],
)
def test_bad_numbers_raise_at_construction(kwargs):
    with pytest.raises(ConfigurationError):
        make_rlm(["x"], **kwargs)


def test_every_contract_keyword_is_accepted():
    rlm = RLM(
        backend="scripted",
        backend_kwargs={"responses": ["FINAL(ok)"]},
        environment="local",
        environment_kwargs={},
        depth=0,
        max_depth=1,
        max_iterations=5,
        max_budget=100.0,
        max_timeout=60.0,
        max_tokens=1_000_000,
        max_errors=5,
        custom_system_prompt=None,
        other_backends=None,
        other_backend_kwargs=None,
        logger=None,
        verbose=False,
        persistent=False,
        custom_tools=None,
        custom_sub_tools=None,
        compaction=False,
        compaction_threshold_pct=0.85,
        max_concurrent_subcalls=4,
        on_subcall_start=None,
        on_subcall_complete=None,
        on_iteration_start=None,
        on_iteration_complete=None,
        sampling_args=None,
        sub_sampling_args=None,
        orchestrator=True,
        user_prologue=None,
    )
    assert rlm.completion("c").response == "ok"


# ---------------------------------------------------------------------------
# Clients and prompts
# ---------------------------------------------------------------------------


def test_sampling_args_reach_the_root_client():
    rlm = make_rlm(["FINAL(x)"], sampling_args={"temperature": 0.0, "top_p": 0.5})
    assert rlm.client.sampling_args == {"temperature": 0.0, "top_p": 0.5}
    assert rlm.other_clients == []


def test_sub_sampling_args_create_a_second_client_for_sub_calls():
    rlm = make_rlm(
        [block("a = llm_query('to the sub client')"), "FINAL(x)"],
        sub_responses=lambda m: "sub",
        sampling_args={"temperature": 0.0},
        sub_sampling_args={"temperature": 0.9},
    )
    assert rlm.client.sampling_args == {"temperature": 0.0}
    assert len(rlm.other_clients) == 1
    sub_client = rlm.other_clients[0]
    assert isinstance(sub_client, ScriptedLM)
    assert sub_client is not rlm.client
    assert sub_client.sampling_args == {"temperature": 0.9}
    rlm.completion("c")
    assert any(m[-1]["content"] == "to the sub client" for m in sub_client.calls)
    assert all(m[0]["role"] == "system" for m in rlm.client.calls)


def test_sub_sampling_args_apply_to_the_first_other_backend():
    rlm = make_rlm(
        ["x"],
        other_backends=["scripted"],
        other_backend_kwargs=[{"model_name": "small", "responses": ["y"]}],
        sub_sampling_args={"max_tokens": 12},
    )
    assert rlm.other_clients[0].sampling_args == {"max_tokens": 12}
    assert rlm.client.sampling_args == {}


def test_other_backends_routing_by_model_name():
    got: list[object] = []
    code = (
        "got(llm_query('q', model='big'))\n"
        "got(llm_query('q'))\n"
        "got(llm_query('q', model='scripted'))\n"
        "got(llm_query_batched(['q', 'r'], model='big'))"
    )
    rlm = make_rlm(
        [block(code), "FINAL(ok)"],
        sub_responses=lambda m: "from-root",
        other_backends=["scripted", "scripted"],
        other_backend_kwargs=[
            {"model_name": "small", "responses": lambda m: "from-small"},
            {"model_name": "big", "responses": lambda m: "from-big"},
        ],
        custom_tools={"got": got.append},
    )
    assert rlm.completion("c").response == "ok"
    assert got == ["from-big", "from-small", "from-root", ["from-big", "from-big"]]


def test_custom_system_prompt_with_braces_and_user_prologue():
    custom = 'You are a {strange} bot. Reply as JSON: {"answer": [1, 2]} and {0} {}.'
    rlm = make_rlm(["FINAL(x)"], custom_system_prompt=custom, user_prologue="PROLOGUE-7f3a")
    rlm.completion("c")
    first = root_calls(rlm)[0]
    assert first[0]["role"] == "system"
    assert first[0]["content"].startswith(custom)
    prologue = [m for m in first if m["content"] == "PROLOGUE-7f3a"]
    assert prologue and prologue[0]["role"] == "user"
    assert first.index(prologue[0]) > 0


def test_custom_system_prompt_tools_placeholder_and_tool_descriptions():
    rlm = make_rlm(
        ["FINAL(x)"],
        custom_system_prompt="Head {custom_tools_section} Tail {braces}",
        custom_tools={"fetch": {"tool": lambda: 1, "description": "fetches the thing"}},
    )
    rlm.completion("c")
    text = root_calls(rlm)[0][0]["content"]
    assert "{custom_tools_section}" not in text
    assert "fetches the thing" in text
    assert "Tail {braces}" in text


def test_default_system_prompt_names_every_repl_name():
    rlm = make_rlm(["FINAL(x)"])
    rlm.completion("c")
    text = root_calls(rlm)[0][0]["content"]
    for name in (
        "context",
        "llm_query",
        "llm_query_batched",
        "rlm_query",
        "rlm_query_batched",
        "SHOW_VARS",
        "FINAL_VAR",
        "answer",
        "FINAL(",
        "```repl",
    ):
        assert name in text


# ---------------------------------------------------------------------------
# Persistence
# ---------------------------------------------------------------------------


def test_persistent_keeps_variables_across_completions_and_close_releases():
    rlm = make_rlm(
        [
            block("kept = 41"),
            "FINAL(first)",
            block(
                "answer['content'] = f'{kept + 1} {context_1} {context_0} {len(history)}'\n"
                "answer['ready'] = True"
            ),
        ],
        persistent=True,
    )
    assert rlm.completion("ctx-a").response == "first"
    env = rlm._persistent_env
    assert env is not None
    result = rlm.completion("ctx-b")
    n_history = len(env.locals["history_0"])
    assert result.response == f"42 ctx-b ctx-a {n_history}"
    assert rlm._persistent_env is env
    rlm.close()
    assert rlm._persistent_env is None
    with pytest.raises(RuntimeError):
        env.execute_code("print(kept)")
    rlm.close()  # twice is fine


def test_persistent_context_manager_closes():
    with make_rlm(["FINAL(a)"], persistent=True) as rlm:
        rlm.completion("c")
        env = rlm._persistent_env
    with pytest.raises(RuntimeError):
        env.execute_code("1")


def test_non_persistent_environment_is_cleaned_up_after_each_completion():
    grabbed: list[dict] = []
    rlm = make_rlm([block("grab(globals())\nFINAL_VAR(1)")], custom_tools={"grab": grabbed.append})
    rlm.completion("c")
    assert grabbed[0] == {}  # the namespace was released


def test_final_in_a_block_yields_to_a_later_final_var_block_of_the_same_response():
    # 0.1.1 order: FINAL_VAR wins over an earlier FINAL; FINAL alone still ends the run.
    response = block('FINAL("weak")') + "\n" + block('x = "strong"\nFINAL_VAR("x")')
    rlm = make_rlm([response, "never"])
    assert rlm.completion("c").response == "strong"
    alone = make_rlm([block('FINAL("only")'), "never"])
    assert alone.completion("c").response == "only"


def test_acompletion_is_not_capped_by_the_default_executor():
    """More acompletion() calls than asyncio's default executor has threads (at most 32)
    all run at once: each root model waits until every one of them has started."""
    count = 34
    everyone = threading.Barrier(count)

    def root(messages):
        everyone.wait(60)  # BrokenBarrierError if fewer than `count` ran at once
        return block('answer["content"] = str(context)\nanswer["ready"] = True')

    rlms = [make_rlm(root) for _ in range(count)]

    async def main():
        return await asyncio.gather(*(r.acompletion(f"item-{i}") for i, r in enumerate(rlms)))

    results = asyncio.run(main())
    assert [r.response for r in results] == [f"item-{i}" for i in range(count)]
