"""The event stream of a run tree: order and parent links, the subscribers written from it
(log, callbacks) against the baseline written by the loop before the stream, raising
subscribers, limits, and one RLM and logger shared by 16 threads."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import warnings
from pathlib import Path

import pytest

from rlm import RLM
from rlm.core import events as ev
from rlm.logger import RLMLogger
from rlm.logger.rlm_logger import read_runs
from rlm.utils.exceptions import BudgetExceededError

FIXTURES = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
from make_stream_baseline import make_rlm  # noqa: E402

#: Fields that differ from run to run (clock readings).
VOLATILE = {"timestamp", "iteration_time", "execution_time"}


def normalised(value):
    if isinstance(value, dict):
        return {k: ("*" if k in VOLATILE else normalised(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [normalised(v) for v in value]
    return value


def lines(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def test_a_depth_two_stream_yields_its_events_in_order_with_parent_links():
    events = list(make_rlm(None, []).stream("the root context"))
    last = events[-1]
    assert isinstance(last, ev.RunFinished) and last.parent_run_id is None
    assert last.result.response == "root:child:sub:inner" and last.error is None
    assert [e.seq for e in events] == sorted(e.seq for e in events)
    root = events[0]
    assert isinstance(root, ev.RunStarted) and root.depth == 0 and root.parent_run_id is None
    child_start = next(e for e in events if e.type == "run_started" and e.depth == 1)
    spawn = next(e for e in events if e.type == "subcall_started" and e.kind == "rlm")
    assert spawn.child_run_id == child_start.run_id and spawn.run_id == root.run_id
    assert child_start.parent_run_id == root.run_id
    child = [e for e in events if e.run_id == child_start.run_id]
    # The child's events nest between the subcall's start and finish.
    done = next(e for e in events if e.type == "subcall_finished" and e.kind == "rlm")
    assert spawn.seq < child[0].seq and child[-1].seq < done.seq
    assert child[-1].type == "run_finished" and child[-1].result.response == "child:sub:inner"
    assert all(e.parent_run_id == root.run_id and e.depth == 1 for e in child)

    def kinds(run_id):
        # cell_output: one or more per stream, while the cell runs (checked below).
        skip = ("root_token", "cell_output")
        return [e.type for e in events if e.run_id == run_id and e.type not in skip]

    assert kinds(root.run_id) == [
        "run_started",
        "iteration_started",
        "cell_started",
        "subcall_started",  # llm_query("hello")
        "subcall_finished",
        "subcall_started",  # the two batch items
        "subcall_started",
        "subcall_finished",
        "subcall_finished",
        "subcall_started",  # rlm_query: the child's events come here
        "subcall_finished",
        "cell_finished",
        "iteration_finished",
        "iteration_started",
        "cell_started",
        "cell_finished",
        "iteration_finished",
        "final_answer",
        "run_finished",
    ]
    for cell in (e for e in events if e.type == "cell_finished" and e.run_id == root.run_id):
        started = next(
            e.seq
            for e in events
            if e.type == "cell_started"
            and e.run_id == root.run_id
            and e.cell == cell.cell
            and e.iteration == cell.iteration
        )
        output = [
            e for e in events
            if e.type == "cell_output" and e.run_id == root.run_id and started < e.seq < cell.seq
        ]  # fmt: skip
        assert "".join(e.text for e in output if e.stream == "stdout") == cell.result.stdout
    tokens = [e for e in events if e.type == "root_token" and e.run_id == root.run_id]
    assert "".join(t.text for t in tokens if t.iteration == 1).startswith("Let me look.")
    batch = [e for e in events if e.type == "subcall_finished" and e.kind == "llm_batch_item"]
    assert sorted(e.response_preview for e in batch) == ["sub:a", "sub:b"]
    for event in events:
        assert event.iteration is None or event.iteration >= 1
        json.dumps(event.to_dict(), default=repr)  # every event has a JSON form


def test_stream_yields_a_running_cells_output_before_the_cell_ends():
    # The cell prints, then waits for the consumer to have seen that print: only a
    # cell_output sent while the cell runs lets it go on (no clock involved).
    seen = threading.Event()
    code = 'print("first", flush=True)\nprint("released" if seen.wait(60) else "never seen")'
    rlm = RLM(
        backend="scripted",
        backend_kwargs={"responses": [f"```repl\n{code}\n```", "FINAL(done)"]},
        custom_tools={"seen": seen},
    )
    order = []
    for event in rlm.stream("ctx"):
        if event.type == "cell_output" and "first" in event.text:
            order.append("first")
            seen.set()
        elif event.type == "cell_finished":
            order.append("finished")
            assert event.result.stdout == "first\nreleased\n"
    assert order == ["first", "finished"]


def test_the_log_written_from_the_stream_equals_the_baseline_field_for_field(tmp_path):
    logger = RLMLogger(log_dir=tmp_path, file_name="now")
    for _ in make_rlm(logger, []).stream("the root context"):
        pass
    assert normalised(lines(logger.log_file_path)) == normalised(
        lines(FIXTURES / "stream_baseline.jsonl")
    )


def test_callbacks_fire_with_the_same_arguments_as_before():
    calls: list = []
    make_rlm(None, calls).completion("the root context")
    baseline = json.loads((FIXTURES / "stream_baseline_callbacks.json").read_text())
    assert normalised([list(c[:3]) for c in calls]) == [c[:3] for c in baseline]
    assert [len(c) for c in calls] == [len(c) for c in baseline]
    assert all(isinstance(c[3], float) for c in calls if c[0] == "iteration_complete")


def test_a_raising_subscriber_is_reported_once_and_the_run_goes_on(caplog):
    rlm = make_rlm(None, [])
    seen: list[str] = []

    def broken(event):
        raise ValueError("subscriber bug")

    rlm.subscribe(broken)
    rlm.subscribe(lambda e: seen.append(e.type))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with caplog.at_level("WARNING", logger="rlm"):
            assert rlm.completion("the root context").response == "root:child:sub:inner"
    reports = [w for w in caught if "subscriber bug" in str(w.message)]
    assert len(reports) == 1 and issubclass(reports[0].category, RuntimeWarning)
    assert sum("subscriber bug" in r.getMessage() for r in caplog.records) == 1
    assert seen[-1] == "run_finished" and "run_started" in seen


def test_a_limit_stop_yields_limit_stopped_and_run_finished_then_raises():
    rlm = RLM(
        backend="scripted",
        backend_kwargs={"responses": ["```repl\nprint(1)\n```"] * 5, "input_price": 1e6},
        max_budget=0.5,
    )
    seen: list[ev.Event] = []
    with pytest.raises(BudgetExceededError) as raised:
        for event in rlm.stream("ctx"):
            seen.append(event)
    assert [e.type for e in seen[-2:]] == ["limit_stopped", "run_finished"]
    assert seen[-2].limit == "budget" and seen[-2].message == str(raised.value)
    assert seen[-1].error.startswith("BudgetExceededError") and seen[-1].result is None


def test_astream_yields_the_same_events():
    async def collect():
        return [e async for e in make_rlm(None, []).astream("the root context")]

    events = asyncio.run(collect())
    assert events[-1].type == "run_finished" and events[-1].parent_run_id is None
    assert events[-1].result.response == "root:child:sub:inner"


def test_sixteen_threads_sharing_one_rlm_and_logger_give_sixteen_separable_runs(tmp_path):
    def script(messages):
        turns = sum(1 for m in messages if m["role"] == "assistant")
        if turns == 0:
            return "```repl\nprint(context[:8])\n```"
        return '```repl\nanswer["content"] = context\nanswer["ready"] = True\n```'

    logger = RLMLogger(log_dir=tmp_path, file_name="shared")
    rlm = RLM(backend="scripted", backend_kwargs={"responses": script}, logger=logger)
    results: dict[int, object] = {}
    barrier = threading.Barrier(16)

    def work(i: int) -> None:
        barrier.wait()
        results[i] = rlm.completion(f"doc-{i:02d} body")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {r.response for r in results.values()} == {f"doc-{i:02d} body" for i in range(16)}
    for i, result in results.items():  # each result carries its own trajectory
        its = result.metadata["iterations"]
        assert len(its) == 2 and f"doc-{i:02d}" in its[0]["code_blocks"][0]["result"]["stdout"]
    runs = [run for path in logger.run_log_paths for run in read_runs(path)]
    assert len(runs) == 16
    docs = set()
    for run in runs:
        assert [it["iteration"] for it in run["iterations"]] == [1, 2]
        out = run["iterations"][0]["code_blocks"][0]["result"]["stdout"]
        assert run["iterations"][1]["final_answer"].startswith(out.strip())
        docs.add(out.strip())
        assert run["run_metadata"]["root_model"] == "scripted"
    assert len(docs) == 16


def test_the_context_is_measured_once_per_run():
    """The system prompt and RunStarted share one measurement of the context."""
    from rlm.core.run import Run

    rlm = RLM(backend="scripted", backend_kwargs={"responses": ["FINAL(x)"]})
    run = Run(rlm)
    context = [{"id": 1}, "abc", ["nested"]]
    first = run.context_metadata(context)
    assert run.context_metadata(context) is first
    assert (first.context_type, first.context_lengths) == ("list", [9, 3, 10])
    other = run.context_metadata(["another context"])
    assert other is not first and other.context_lengths == [15]

    seen = []
    rlm.subscribe(seen.append)
    rlm.completion(context)
    started = next(e for e in seen if isinstance(e, ev.RunStarted))
    assert (started.context_type, started.context_length) == ("list", 22)
