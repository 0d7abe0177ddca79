"""Trajectory objects, the HTML summary, records, and offline replay (issue 6).

Runs are recorded for real: ``RLM(backend="scripted", logger=RLMLogger(log_dir=...))``
through a real LMHandler and LocalREPL. The public-format fixtures are hand-written
from the documented fields of ``rlms`` 0.1.1 and 0.1.3 (tests/fixtures/README.md).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from unittest import mock

import pytest

import rlm
from rlm import RLM, Trajectory, load_trajectory
from rlm.cli import main
from rlm.logger import RLMLogger
from rlm.trajectory import (
    RecordingLM,
    ReplayDivergenceError,
    ReplayError,
    load_trajectories,
    same_output,
)
from rlm.utils.text import truncate_middle

FIXTURES = Path(__file__).parent / "fixtures"
CONTEXT = "The secret number is 42. " + "filler text. " * 200
BIG = 30_000  # characters printed by one block: more than the logger keeps

ROOT_SCRIPT = [
    "Let me look.\n```repl\nprint(len(context))\nsecret = llm_query('Find the secret in: ' + context[:24])\nprint(secret)\n```",
    "Two blocks.\n```repl\nprint('step two')\nprint(undefined_name)\n```\n```repl\nprint('x' * 20000 + 'MIDDLE' + 'y' * 9994)\n```",
    "```repl\nparts = llm_query_batched(['part a', 'part b'])\nprint(parts)\nanswer['content'] = 'secret=' + secret + ' parts=' + '+'.join(parts)\nanswer['ready'] = True\n```",
]


def _sub(messages):
    prompt = messages[-1]["content"]
    return "42" if prompt.startswith("Find the secret") else prompt.upper()


@pytest.fixture
def recorded(tmp_path):
    """A real scripted run with a file logger: (completion, log path)."""
    logger = RLMLogger(log_dir=tmp_path / "logs")
    engine = RLM(
        backend="scripted",
        backend_kwargs={"responses": list(ROOT_SCRIPT), "sub_responses": _sub},
        logger=logger,
    )
    result = engine.completion(CONTEXT, root_prompt="What is the secret?")
    assert result.response == "secret=42 parts=PART A+PART B"
    return result, Path(logger.log_file_path)


def _edit(path: Path, edit) -> Path:
    """Rewrite the log with ``edit(records)`` applied; returns a new file."""
    records = [json.loads(line) for line in path.read_text().splitlines()]
    edit(records)
    out = path.with_name("edited.jsonl")
    out.write_text("".join(json.dumps(r) + "\n" for r in records))
    return out


# ---------------------------------------------------------------------------
# Loading: ours and the public formats
# ---------------------------------------------------------------------------


def test_load_our_log(recorded):
    result, path = recorded
    t = rlm.load_trajectory(path)
    assert isinstance(t, Trajectory)
    assert t.root_model == "scripted" and t.backend == "scripted"
    assert t.environment_type == "local" and t.metadata["max_iterations"] == 30
    assert [it.number for it in t.iterations] == [1, 2, 3]
    assert t.final_answer == result.response

    first = t.iterations[0].blocks[0]
    assert first.stdout == f"{len(CONTEXT)}\n42\n"
    assert [c.response for c in first.calls] == ["42"]
    assert first.calls[0].prompt == "Find the secret in: The secret number is 42."
    assert first.calls[0].depth == 1

    failing, big = t.iterations[1].blocks
    assert failing.failed and failing.error.startswith("NameError")
    assert "Traceback" in failing.stderr and failing.stdout == "step two\n"
    assert not big.failed and big.output_cut  # the logger kept head and tail only
    assert t.errors == [failing]

    last = t.iterations[2].blocks[0]
    assert [c.prompt for c in last.calls] == ["part a", "part b"]
    assert last.final_answer == result.response
    assert len(list(t.subcalls())) == 3
    usage = t.subcall_usage.model_usage_summaries["scripted"]
    assert usage.total_calls == 3 and usage.total_input_tokens > 0
    # Our logs record each iteration's root-model usage: the log's totals are exact.
    assert t.usage_complete
    assert t.usage.to_dict() == result.usage_summary.to_dict()


def test_from_completion_matches_the_file_and_keeps_usage_and_context(recorded):
    result, path = recorded
    from_result = Trajectory.from_completion(result)
    from_file = load_trajectory(path)
    assert [b.stdout for b in from_result.blocks] == [b.stdout for b in from_file.blocks]
    assert from_result.final_answer == from_file.final_answer
    assert from_result.usage_complete and from_result.usage is result.usage_summary
    assert from_result.usage.total_calls == 6  # 3 root calls + 3 sub-calls
    assert from_result.context == CONTEXT and from_result.total_time == result.execution_time
    assert Trajectory.from_completion(result.to_dict()).final_answer == result.response


def test_from_completion_without_a_logger_says_what_to_do():
    engine = RLM(backend="scripted", backend_kwargs={"responses": ["FINAL(done)"]})
    with pytest.raises(ValueError, match="logger"):
        Trajectory.from_completion(engine.completion("ctx"))


def test_load_public_0_1_1_log():
    t = load_trajectory(FIXTURES / "rlms_0_1_1.jsonl")
    assert t.root_model == "gpt-5-nano" and t.metadata["backend"] == "openai"
    assert len(t.iterations) == 2
    block = t.iterations[0].blocks[0]
    assert block.final_answer is None and block.error is None and not block.failed
    assert block.stdout == "The secret number is 42.\n42\n"
    (call,) = block.calls
    assert (call.model, call.response, call.usage.total_input_tokens) == ("gpt-5-nano", "42", 120)
    assert call.usage.total_cost is None
    assert t.iterations[1].blocks == [] and t.final_answer == "The secret number is 42"
    assert t.total_time == pytest.approx(3.6)


def test_load_public_0_1_3_log_with_child_runs_errors_and_costs():
    t = load_trajectory(FIXTURES / "rlms_0_1_3.jsonl")
    assert t.root_model == "gpt-5-mini" and t.metadata["other_backends"] == ["openai"]
    assert t.final_answer == "Summary: one + two"
    summary_call, flaky = t.iterations[0].blocks[0].calls
    assert flaky.error == "RateLimitError: slow down"
    child = summary_call.child
    assert child is not None and child.final_answer == "one + two"
    assert [c.response for c in child.iterations[0].blocks[0].calls] == ["one", "two"]
    tree = list(t.subcalls())
    assert [(c.prompt, c.depth) for c in tree] == [
        ("Summarise the two halves", 1),
        ("half one", 2),
        ("half two", 2),
        ("ping", 1),
    ]
    # A 0.1.3 child's usage covers its own llm_query calls, so they are not added again.
    nano = t.usage.model_usage_summaries["gpt-5-nano"]
    assert nano.total_input_tokens == 300
    assert nano.total_cost == pytest.approx(0.0002)
    assert not t.usage_complete  # 0.1.3 logs do not record the root model's usage
    # 0.1.3 records no block `error`: a traceback in stderr marks the failure.
    assert [b.failed for b in t.iterations[1].blocks] == [True, False]
    assert t.iterations[1].blocks[1].final_answer == "Summary: one + two"


def test_a_file_with_several_completions_and_a_torn_last_line(tmp_path):
    logger = RLMLogger(log_dir=tmp_path)
    engine = RLM(
        backend="scripted",
        backend_kwargs={"responses": iter(["FINAL(one)", "FINAL(two)"])},
        logger=logger,
    )
    engine.completion("a")
    engine.completion("b")
    with open(logger.log_file_path, "a") as handle:
        handle.write('{"type": "iteration", "iter')  # a run killed mid-write
    runs = load_trajectories(logger.log_file_path)
    assert [r.final_answer for r in runs] == ["one", "two"]
    assert load_trajectory(logger.log_file_path).final_answer == "two"
    assert load_trajectory(logger.log_file_path, run=0).final_answer == "one"
    assert runs[-1].warnings and "not valid JSON" in runs[-1].warnings[0]


def test_not_a_log_is_refused_in_plain_words(tmp_path):
    junk = tmp_path / "junk.jsonl"
    junk.write_text("hello\n")
    with pytest.raises(ValueError, match="no trajectory records"):
        load_trajectory(junk)
    with pytest.raises(FileNotFoundError):
        load_trajectory(tmp_path / "missing.jsonl")


# ---------------------------------------------------------------------------
# Display and records
# ---------------------------------------------------------------------------


def test_objects_print_and_navigate(recorded):
    _, path = recorded
    t = load_trajectory(path)
    assert "3 iterations" in repr(t) and "secret=42" in str(t)
    assert repr(t[1]).startswith("<Iteration 2: 2 blocks")
    assert "error" in repr(t[1].blocks[0]) and "NameError" in str(t[1].blocks[0])
    assert "Find the secret" in str(t[0].blocks[0].calls[0])
    assert [it.number for it in t] == [1, 2, 3] and len(t) == 3

    from rich.console import Console

    console = Console(record=True, width=100)
    console.print(t[0].blocks[0])
    console.print(t)
    assert "llm_query" in console.export_text()


def test_html_summary_is_readable_and_escaped(tmp_path):
    payload = "<script>alert('x')</script>"
    logger = RLMLogger(log_dir=tmp_path)
    engine = RLM(
        backend="scripted",
        backend_kwargs={
            "responses": [
                f'```repl\nprint("{payload}")\nllm_query("{payload}")\n```',
                "FINAL(<b>&done</b>)",
            ],
            "sub_responses": [payload],
        },
        logger=logger,
    )
    page = Trajectory.from_completion(engine.completion("ctx"))._repr_html_()
    assert "<script>alert" not in page and "&lt;script&gt;alert" in page
    assert "&lt;b&gt;&amp;done&lt;/b&gt;" in page  # the final answer, escaped
    assert "Final answer" in page and "iteration 1" in page and "scripted" in page

    public = load_trajectory(FIXTURES / "rlms_0_1_3.jsonl")._repr_html_()
    assert "Summary: one + two" in public and "RateLimitError" in public
    assert "child run: 1 iterations" in public and "0.000200" in public


def test_to_records(recorded):
    _, path = recorded
    t = load_trajectory(path)
    blocks = t.to_records()
    assert [(r["iteration"], r["block"], r["failed"]) for r in blocks] == [
        (1, 0, False),
        (2, 0, True),
        (2, 1, False),
        (3, 0, False),
    ]
    assert [r["final_answer"] for r in t.to_records("iterations")][-1] == t.final_answer
    subcalls = load_trajectory(FIXTURES / "rlms_0_1_3.jsonl").to_records("subcalls")
    assert [(r["depth"], r["response"]) for r in subcalls] == [
        (1, "one + two"),
        (2, "one"),
        (2, "two"),
        (1, ""),
    ]
    with pytest.raises(ValueError, match="kind"):
        t.to_records("rows")


@pytest.mark.skipif(importlib.util.find_spec("pandas") is None, reason="pandas is not installed")
def test_to_dataframe(recorded):
    _, path = recorded
    frame = load_trajectory(path).to_dataframe("blocks")
    assert list(frame["iteration"]) == [1, 2, 2, 3]


# ---------------------------------------------------------------------------
# Replay
# ---------------------------------------------------------------------------


def test_same_output_understands_the_loggers_cut():
    full = "a" * 30_000 + "b" * 10_000
    recorded = truncate_middle(full, 20_000)
    assert same_output(recorded, full)
    assert not same_output(recorded, full[:-1] + "c")  # the kept tail differs
    assert not same_output(recorded, "a" * 30_001 + "b" * 10_000)  # the length differs
    assert same_output("plain", "plain") and not same_output("plain", "plain!")


def test_replay_from_the_log_reproduces_the_run(recorded):
    result, path = recorded
    t = load_trajectory(path)
    replayed = t.replay(context=CONTEXT)
    assert replayed.response == result.response
    report = replayed.metadata["replay"]
    assert report == {
        "source": str(path),
        "environment": "subprocess",  # isolated by default: the log's code is untrusted
        "blocks": 4,
        "matches": True,
        "divergence": None,
    }
    # No provider: the root model's answers came from the recording, sub-calls too.
    assert replayed.usage_summary.total_calls == 6
    # The replayed run is itself a trajectory, equal block for block.
    again = Trajectory.from_completion(replayed)
    assert [b.stdout for b in again.blocks] == [b.stdout for b in t.blocks]
    assert t.compare(context=CONTEXT) is None


def test_replay_from_a_completion_needs_no_context(recorded):
    result, _ = recorded
    assert Trajectory.from_completion(result).replay().response == result.response


def test_replay_steps_block_by_block(recorded):
    _, path = recorded
    replay = load_trajectory(path).replay_steps(context=CONTEXT)
    steps = list(replay)
    assert [(s.iteration_index, s.block_index) for s in steps] == [(0, 0), (1, 0), (1, 1), (2, 0)]
    assert all(s.matches for s in steps)
    assert steps[1].result.error.startswith("NameError")
    assert len(steps[2].stdout) == BIG + 1  # the real output, although the log holds a cut one
    assert replay.final_answer == "secret=42 parts=PART A+PART B" and replay.divergence is None


def test_replay_without_the_context_asks_for_it(recorded):
    _, path = recorded
    with pytest.raises(ReplayError, match="context"):
        load_trajectory(path).replay()


def test_edited_output_diverges_at_that_block(recorded):
    _, path = recorded

    def edit(records):
        records[2]["code_blocks"][0]["result"]["stdout"] = "step 2\n"  # iteration 2, block 0

    divergence = load_trajectory(_edit(path, edit)).compare(context=CONTEXT)
    assert (divergence.iteration_index, divergence.block_index) == (1, 0)
    assert divergence.iteration == 2 and divergence.field == "stdout"
    assert (divergence.expected, divergence.actual) == ("step 2\n", "step two\n")
    assert "-step 2" in str(divergence) and "+step two" in str(divergence)


def test_edited_tail_of_a_cut_output_diverges(recorded):
    _, path = recorded

    def edit(records):
        result = records[2]["code_blocks"][1]["result"]
        result["stdout"] = result["stdout"][:-3] + "zz\n"

    divergence = load_trajectory(_edit(path, edit)).compare(context=CONTEXT)
    assert (divergence.iteration_index, divergence.block_index, divergence.field) == (
        1,
        1,
        "stdout",
    )


def test_edited_sub_call_answer_diverges_where_it_is_printed(recorded):
    _, path = recorded

    def edit(records):
        records[1]["code_blocks"][0]["result"]["rlm_calls"][0]["response"] = "41"

    t = load_trajectory(_edit(path, edit))
    completion, divergence = t.replay(context=CONTEXT), t.compare(context=CONTEXT)
    assert (divergence.iteration_index, divergence.block_index) == (0, 0)
    assert divergence.actual.endswith("\n41\n")
    assert completion.response == "secret=41 parts=PART A+PART B"
    assert completion.metadata["replay"]["divergence"]["block_index"] == 0
    with pytest.raises(ReplayDivergenceError, match="iteration 1"):
        t.replay(context=CONTEXT, strict=True)


def test_edited_code_making_an_unrecorded_call_gets_a_clear_error(recorded):
    _, path = recorded

    def edit(records):
        block = records[1]["code_blocks"][0]
        block["code"] = block["code"].replace("Find the secret in: ", "Where is the secret? ")

    divergence = load_trajectory(_edit(path, edit)).compare(context=CONTEXT)
    assert (divergence.iteration_index, divergence.block_index) == (0, 0)
    assert (
        "not in the recording" in divergence.actual and "Where is the secret?" in divergence.actual
    )


def test_recording_client_errors_name_the_missing_call(recorded):
    _, path = recorded
    client = RecordingLM(load_trajectory(path))
    assert client.completion("part a") == "PART A"
    with pytest.raises(ReplayError, match="sub-call not in the recording: prompt 'nope'"):
        client.completion("nope")
    for _ in range(3):
        client.completion([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}])
    with pytest.raises(ReplayError, match="root call 4 is not in the recording"):
        client.completion([{"role": "system", "content": "s"}])


def test_recording_client_drives_the_real_loop(recorded):
    """The seam users patch in their own tests: the real RLM loop, answered from a log."""
    result, path = recorded
    client = RecordingLM(load_trajectory(path))
    with mock.patch("rlm.core.rlm.get_client", return_value=client):
        again = RLM(backend="openai").completion(CONTEXT, root_prompt="What is the secret?")
    assert again.response == result.response


def test_replay_public_0_1_1_log():
    t = load_trajectory(FIXTURES / "rlms_0_1_1.jsonl")
    replayed = t.replay(context=CONTEXT)
    assert replayed.response == "The secret number is 42"
    assert replayed.metadata["replay"]["matches"]
    divergence = t.compare(context="The secret number is 43. ")
    assert (divergence.iteration_index, divergence.block_index) == (0, 0)
    assert "not in the recording" in divergence.actual


def test_replay_public_0_1_3_log_with_a_child_run():
    t = load_trajectory(FIXTURES / "rlms_0_1_3.jsonl")
    replayed = t.replay(context=None)
    assert replayed.response == "Summary: one + two"
    divergence = t.compare(context=None)
    # The failed sub-call fails again with the recorded error, and the block that raised
    # NameError raises it again: nothing diverges.
    assert divergence is None


# ---------------------------------------------------------------------------
# rlm replay
# ---------------------------------------------------------------------------


def test_cli_replay(recorded, tmp_path, capsys):
    _, path = recorded
    context_file = tmp_path / "context.txt"
    context_file.write_text(CONTEXT)
    assert main(["replay", str(path), "--context", str(context_file)]) == 0
    out, err = capsys.readouterr()
    assert "iteration 2 block 0: ok" in out and "final answer: secret=42" in out
    assert "matches the recording (4 blocks)" in err

    def edit(records):
        records[3]["code_blocks"][0]["result"]["stdout"] = "['PART A', 'PART C']\n"

    assert main(["replay", str(_edit(path, edit)), "-c", str(context_file)]) == 1
    out, err = capsys.readouterr()
    assert "iteration 3 block 0: DIVERGES (stdout)" in out
    assert "replay diverged at iteration 3 (index 2), block 0" in err

    assert main(["replay", str(path)]) == 1
    assert "--context" in capsys.readouterr().err
