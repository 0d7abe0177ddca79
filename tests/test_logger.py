"""RLMLogger: the JSON-lines trajectory format, snapshots, bounded size, crash safety, secrets."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from datetime import datetime
from pathlib import Path

import pytest

from rlm import RLM
from rlm.logger import RLMLogger

FILE_PATTERN = re.compile(r"^(?P<name>.+)_\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}_[0-9a-f]{8}\.jsonl$")
METADATA_KEYS = {
    "type",
    "timestamp",
    "root_model",
    "max_depth",
    "max_iterations",
    "backend",
    "backend_kwargs",
    "environment_type",
    "environment_kwargs",
    "other_backends",
}
ITERATION_KEYS = {
    "type",
    "iteration",
    "timestamp",
    "prompt",
    "response",
    "code_blocks",
    "final_answer",
    "iteration_time",
}
RESULT_KEYS = {"stdout", "stderr", "locals", "execution_time", "rlm_calls", "final_answer"}


def block(code: str) -> str:
    return f"```repl\n{code}\n```"


def read_lines(path: str | Path) -> list[dict]:
    text = Path(path).read_text(encoding="utf-8")
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def scripted(responses, logger, **kwargs) -> RLM:
    backend_kwargs = {"responses": responses, "sub_responses": lambda m: "sub-answer"}
    backend_kwargs.update(kwargs.pop("backend_kwargs", {}))
    return RLM(backend="scripted", backend_kwargs=backend_kwargs, logger=logger, **kwargs)


# ---------------------------------------------------------------------------
# File name and line shapes
# ---------------------------------------------------------------------------


def test_file_name_pattern(tmp_path):
    default = RLMLogger(log_dir=tmp_path)
    named = RLMLogger(log_dir=tmp_path / "nested", file_name="experiment")
    for logger, name, folder in (
        (default, "rlm", tmp_path),
        (named, "experiment", tmp_path / "nested"),
    ):
        path = Path(logger.log_file_path)
        assert path.parent == folder
        match = FILE_PATTERN.match(path.name)
        assert match and match.group("name") == name
    # Two loggers created in the same second still get different files.
    assert RLMLogger(log_dir=tmp_path).log_file_path != RLMLogger(log_dir=tmp_path).log_file_path


def test_no_log_dir_writes_no_file_but_keeps_the_trajectory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    logger = RLMLogger()
    assert logger.log_file_path is None
    result = scripted([block("x = 1"), "FINAL(done)"], logger).completion("c")
    assert list(tmp_path.iterdir()) == []
    assert len(result.metadata["iterations"]) == 2


def test_metadata_and_iteration_lines_have_the_contract_shape(tmp_path):
    logger = RLMLogger(log_dir=tmp_path)
    rlm = scripted(
        [
            block("x = len(context)\nprint(x)\ny = llm_query('sub question')"),
            "Done.\n" + block("answer.update(content=str(x), ready=True)"),
        ],
        logger,
        max_iterations=7,
        max_depth=1,
        environment_kwargs={"cell_timeout": 30},
    )
    result = rlm.completion("twelve chars")
    assert result.response == "12"
    lines = read_lines(logger.log_file_path)
    assert len(lines) == 3

    meta = lines[0]
    assert set(meta) == METADATA_KEYS
    assert meta["type"] == "metadata"
    datetime.fromisoformat(meta["timestamp"])
    assert meta["root_model"] == "scripted"
    assert meta["max_depth"] == 1
    assert meta["max_iterations"] == 7
    assert meta["backend"] == "scripted"
    assert meta["environment_type"] == "local"
    assert meta["environment_kwargs"] == {"cell_timeout": 30}
    assert meta["other_backends"] is None
    assert isinstance(meta["backend_kwargs"], dict)

    for number, line in enumerate(lines[1:], start=1):
        # The contract's keys, plus our additive "root_usage" (the root-model call's usage).
        assert set(line) == ITERATION_KEYS | {"root_usage"}
        assert line["root_usage"]["model_usage_summaries"]["scripted"]["total_calls"] == 1
        assert line["type"] == "iteration"
        assert line["iteration"] == number
        datetime.fromisoformat(line["timestamp"])
        assert isinstance(line["prompt"], list)
        assert all({"role", "content"} <= set(m) for m in line["prompt"])
        assert isinstance(line["response"], str)
        assert isinstance(line["iteration_time"], float)
        for code_block in line["code_blocks"]:
            assert set(code_block) == {"code", "result"}
            result_keys = set(code_block["result"])
            assert result_keys >= RESULT_KEYS
            assert result_keys - RESULT_KEYS <= {"error"}

    first, second = lines[1], lines[2]
    assert first["final_answer"] is None
    assert second["final_answer"] == "12"
    result1 = first["code_blocks"][0]["result"]
    assert first["code_blocks"][0]["code"].startswith("x = len(context)")
    assert result1["stdout"] == "12\n"
    assert result1["locals"]["x"] == 12
    assert result1["final_answer"] is None
    calls = result1["rlm_calls"]
    assert len(calls) == 1
    assert calls[0]["prompt"] == "sub question"
    assert calls[0]["response"] == "sub-answer"
    assert second["code_blocks"][0]["result"]["final_answer"] == "12"


def test_error_in_a_block_is_logged(tmp_path):
    logger = RLMLogger(log_dir=tmp_path)
    scripted([block("1 / 0"), "FINAL(ok)"], logger).completion("c")
    result = read_lines(logger.log_file_path)[1]["code_blocks"][0]["result"]
    assert "ZeroDivisionError" in result["stderr"]
    assert "ZeroDivisionError" in result.get("error", "")


def test_max_iterations_final_request_is_logged(tmp_path):
    logger = RLMLogger(log_dir=tmp_path)
    result = scripted([block("a = 1"), "my best answer"], logger, max_iterations=1).completion("c")
    lines = read_lines(logger.log_file_path)
    assert [line["type"] for line in lines] == ["metadata", "iteration", "iteration"]
    assert lines[2]["iteration"] == 2
    assert lines[2]["final_answer"] == result.response == "my best answer"
    assert lines[2]["code_blocks"] == []


# ---------------------------------------------------------------------------
# get_trajectory
# ---------------------------------------------------------------------------


def test_trajectory_is_attached_with_one_unmutated_prompt_per_iteration(tmp_path):
    logger = RLMLogger(log_dir=tmp_path)
    rlm = scripted([block("a = 1"), block("b = 2"), "FINAL(three)"], logger)
    result = rlm.completion("c")
    trajectory = result.metadata
    assert set(trajectory) == {"run_metadata", "iterations"}
    assert trajectory["run_metadata"]["root_model"] == "scripted"
    iterations = trajectory["iterations"]
    assert [it["iteration"] for it in iterations] == [1, 2, 3]
    sizes = [len(it["prompt"]) for it in iterations]
    assert sizes[0] < sizes[1] < sizes[2]
    # Each snapshot is exactly what the model was sent on that turn.
    sent = rlm.client.calls
    for it, messages in zip(iterations, sent, strict=True):
        assert it["prompt"] == messages
    # The in-memory trajectory matches the file.
    assert read_lines(logger.log_file_path)[1:] == iterations


def test_trajectory_without_a_logger_is_none():
    result = RLM(backend="scripted", backend_kwargs={"responses": ["FINAL(x)"]}).completion("c")
    assert result.metadata is None


def test_second_completion_restarts_iteration_numbers(tmp_path):
    logger = RLMLogger(log_dir=tmp_path)
    rlm = scripted([block("a = 1"), "FINAL(one)", "FINAL(two)"], logger)
    first = rlm.completion("c")
    second = rlm.completion("c")
    assert [it["iteration"] for it in first.metadata["iterations"]] == [1, 2]
    assert [it["iteration"] for it in second.metadata["iterations"]] == [1]
    # The first result's trajectory was not changed by the second run.
    assert first.metadata["iterations"][-1]["final_answer"] == "one"
    lines = read_lines(logger.log_file_path)
    assert [line["type"] for line in lines].count("metadata") == 1
    assert [line.get("iteration") for line in lines[1:]] == [1, 2, 1]


# ---------------------------------------------------------------------------
# Size
# ---------------------------------------------------------------------------


def test_ten_megabyte_context_gives_a_small_log(tmp_path):
    context = ("The quick brown fox jumps over the lazy dog. " * 240_000)[: 10 * 1024 * 1024]
    assert len(context) == 10 * 1024 * 1024
    logger = RLMLogger(log_dir=tmp_path)
    responses = [
        block("print(len(context))\nprint(context[:200])"),
        block("big = context[:5_000_000]\nparts = context.split('. ')"),
        block("print(context)"),
        block("r = llm_query(context[:2_000_000])"),
        block("copy = context"),
        "FINAL(done)",
    ]
    result = scripted(responses, logger).completion(context)
    assert result.response == "done"
    size = os.path.getsize(logger.log_file_path)
    assert size < 1_000_000, f"log is {size:,} bytes"
    lines = read_lines(logger.log_file_path)
    assert len(lines) == 7
    first_locals = lines[1]["code_blocks"][0]["result"]["locals"]
    summary = first_locals["context"]
    assert isinstance(summary, str) and len(summary) < 2_000
    assert "10,485,760" in summary  # the summary says how big it is
    second_locals = lines[2]["code_blocks"][0]["result"]["locals"]
    assert len(second_locals["big"]) < 2_000
    assert len(second_locals["parts"]) < 2_000
    printed = lines[3]["code_blocks"][0]["result"]["stdout"]
    assert len(printed) < 50_000 and "cut" in printed
    sub_prompt = lines[4]["code_blocks"][0]["result"]["rlm_calls"][0]["prompt"]
    assert len(sub_prompt) < 50_000
    # The in-memory trajectory is bounded the same way.
    assert len(json.dumps(result.metadata)) < 1_000_000


# ---------------------------------------------------------------------------
# Crash safety
# ---------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import sys
    import time

    from rlm import RLM
    from rlm.logger import RLMLogger

    turns = {"n": 0}

    def root(messages):
        turns["n"] += 1
        if turns["n"] <= 3:
            return "```repl\\nvalue_%d = 'x' * 5000\\nprint(len(value_%d))\\n```" % (
                turns["n"], turns["n"])
        print("READY", flush=True)
        time.sleep(120)
        return "FINAL(never)"

    logger = RLMLogger(log_dir=sys.argv[1], file_name="killed")
    rlm = RLM(backend="scripted", backend_kwargs={"responses": root}, logger=logger)
    rlm.completion("some context " * 10_000)
    """
)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_log_of_a_killed_process_loads_line_by_line(tmp_path):
    repo_root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo_root)}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline()
        assert line.strip() == "READY", proc.stderr.read() if proc.poll() is not None else line
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    files = list(tmp_path.glob("killed_*.jsonl"))
    assert len(files) == 1
    raw = files[0].read_text(encoding="utf-8")
    parsed = [json.loads(line) for line in raw.splitlines()]  # every line parses
    assert parsed[0]["type"] == "metadata"
    assert [p["type"] for p in parsed[1:]] == ["iteration"] * 3
    assert [p["iteration"] for p in parsed[1:]] == [1, 2, 3]
    assert parsed[3]["code_blocks"][0]["result"]["stdout"] == "5000\n"


# ---------------------------------------------------------------------------
# Secrets
# ---------------------------------------------------------------------------


def test_secrets_are_removed_from_the_metadata(tmp_path):
    secret = "sk-live-0123456789abcdef-SECRET"
    logger = RLMLogger(log_dir=tmp_path)
    # The metadata line is written when the RLM is built; the OpenAI client connects lazily.
    RLM(
        backend="openai",
        backend_kwargs={
            "model_name": "visible-model",
            "api_key": secret,
            "base_url": "http://127.0.0.1:9/v1",
            "default_headers": {"Authorization": "Bearer " + secret, "X-Team": "research"},
        },
        environment_kwargs={"cell_timeout": 10},
        other_backends=["openai"],
        other_backend_kwargs=[{"model_name": "sub", "api_key": secret + "-sub", "base_url": "x"}],
        logger=logger,
    )
    text = Path(logger.log_file_path).read_text(encoding="utf-8")
    meta = json.loads(text.splitlines()[0])
    kwargs = meta["backend_kwargs"]
    assert kwargs.get("api_key") in (None, "[REDACTED]")
    assert kwargs["model_name"] == "visible-model"
    assert kwargs["base_url"] == "http://127.0.0.1:9/v1"
    # Every header value is treated as a secret (X-Custom-Auth, Cookie...): redacted by value.
    assert set(kwargs["default_headers"].values()) == {"[REDACTED]"}
    assert meta["environment_kwargs"] == {"cell_timeout": 10}
    assert meta["other_backends"] == ["openai"]
    assert secret not in text
    assert secret not in json.dumps(logger.get_trajectory(), default=repr)


# ---------------------------------------------------------------------------
# Each message serialised once (issue 15)
# ---------------------------------------------------------------------------


def _iteration(prompt, response="ok"):
    from rlm.datatypes import RLMIteration

    return RLMIteration(prompt=prompt, response=response, code_blocks=[], iteration_time=0.5)


@pytest.mark.parametrize("format", ["rlms", "compact"])
def test_a_secret_registered_mid_run_is_redacted_from_earlier_messages_too(tmp_path, format):
    """Messages are redacted once and reused; a secret registered later redacts them again
    in every later line (the lines already written stay as they were)."""
    from rlm.utils.rlm_utils import register_secrets

    secret = f"late-secret-{format}-7f3a9c1e55"  # the registry is process-wide
    logger = RLMLogger(log_dir=tmp_path, format=format)
    history = [{"role": "system", "content": "sys"}, {"role": "user", "content": f"k={secret}"}]
    logger.log(_iteration(list(history)))
    register_secrets(secret)
    history.append({"role": "assistant", "content": "next"})
    logger.log(_iteration(list(history)))
    first, second = read_lines(logger.log_file_path)
    assert secret in json.dumps(first)
    assert secret not in json.dumps(second) and "[REDACTED]" in json.dumps(second)
    if format == "compact":
        assert second["prompt_kept"] == 0  # nothing reused across the change
    assert logger.get_trajectory() is None  # no metadata: log() alone keeps lines only
    assert logger._main.iterations[1]["prompt"][1]["content"] == "k=[REDACTED]"


def test_a_prompt_of_more_than_max_log_items_is_cut_as_before(tmp_path):
    """Past MAX_LOG_ITEMS messages a prompt keeps its first ones and a count of the rest,
    in both formats, whatever was reused from the line before."""
    from rlm.logger.rlm_logger import MAX_LOG_ITEMS, compact

    default = RLMLogger(log_dir=tmp_path / "d")
    compact_logger = RLMLogger(log_dir=tmp_path / "c", format="compact")
    history = [{"role": "user", "content": f"m{i}"} for i in range(MAX_LOG_ITEMS - 1)]
    prompts = []
    for extra in range(3):  # 999, 1000 and 1001 messages, then 1002
        history = history + [{"role": "assistant", "content": f"a{extra}"}]
        prompts.append(list(history))
        for logger in (default, compact_logger):
            logger.log(_iteration(list(history)))
    lines = read_lines(default.log_file_path)
    for line, prompt in zip(lines, prompts, strict=True):
        assert line["prompt"] == compact({"prompt": prompt})["prompt"]
    assert lines[-1]["prompt"][-1] == "[2 more items]"
    from rlm.trajectory import load_trajectory

    rebuilt = load_trajectory(compact_logger.log_file_path)
    assert [it.prompt for it in rebuilt.iterations] == [line["prompt"] for line in lines]
