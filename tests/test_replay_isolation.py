"""Replay executes the code in a log, so it runs isolated unless told otherwise (issue 10)."""

from __future__ import annotations

import builtins
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlm import RLM, load_trajectory
from rlm.logger import RLMLogger

HOST_SECRET = "host-only-secret-5150"
# The code a hand-edited log could hold: mark this process, read a host secret.
PROBE = (
    "import builtins, os\n"
    "builtins.RLM_REPLAY_PROBE = os.getpid()\n"
    "print('secret:', os.environ.get('RLM_TEST_HOST_SECRET'))\n"
    "answer['content'] = 'probed'; answer['ready'] = True"
)


@pytest.fixture
def recorded_log(tmp_path, monkeypatch):
    """A log recorded in ``local`` whose block is the probe; a function to change its env."""
    monkeypatch.delenv("RLM_TEST_HOST_SECRET", raising=False)
    logger = RLMLogger(log_dir=tmp_path)
    rlm = RLM(
        backend="scripted", backend_kwargs={"responses": [f"```repl\n{PROBE}\n```"]}, logger=logger
    )
    assert rlm.completion("ctx").response == "probed"
    assert hasattr(builtins, "RLM_REPLAY_PROBE")  # local recorded it in this process...
    del builtins.RLM_REPLAY_PROBE  # ...so forget that before replaying
    path = Path(logger.log_file_path)

    def with_environment(name: str) -> Path:
        lines = path.read_text().splitlines()
        meta = json.loads(lines[0])
        meta["environment_type"] = name
        edited = tmp_path / f"edited-{name}.jsonl"
        edited.write_text("\n".join([json.dumps(meta), *lines[1:]]) + "\n")
        return edited

    monkeypatch.setenv("RLM_TEST_HOST_SECRET", HOST_SECRET)
    yield path, with_environment
    if hasattr(builtins, "RLM_REPLAY_PROBE"):
        del builtins.RLM_REPLAY_PROBE


def test_replay_defaults_to_an_isolated_environment(recorded_log):
    path, _ = recorded_log
    replay = load_trajectory(path).replay_steps(context="ctx")
    outputs = [step.result.stdout for step in replay]
    assert replay.environment_used == "subprocess"
    assert not hasattr(builtins, "RLM_REPLAY_PROBE")  # nothing ran in this process
    assert HOST_SECRET not in "".join(outputs)  # the host's environment stayed out of reach
    assert replay.final_answer == "probed"


def test_in_process_replay_needs_local_by_name(recorded_log):
    path, _ = recorded_log
    replay = load_trajectory(path).replay_steps(context="ctx", environment="local")
    outputs = [step.result.stdout for step in replay]
    assert replay.environment_used == "local"
    assert os.getpid() == builtins.RLM_REPLAY_PROBE
    assert HOST_SECRET in "".join(outputs)  # what "not isolated" means


@pytest.mark.parametrize("recorded", ["ipython", "no-such-environment", "local"])
def test_a_recorded_environment_that_is_not_isolated_or_not_here_falls_back(recorded_log, recorded):
    _, with_environment = recorded_log
    trajectory = load_trajectory(with_environment(recorded))
    assert trajectory.environment_type == recorded
    result = trajectory.replay(context="ctx")
    assert result.metadata["replay"]["environment"] == "subprocess"
    assert not hasattr(builtins, "RLM_REPLAY_PROBE")


def test_a_recorded_isolated_environment_is_used(recorded_log):
    _, with_environment = recorded_log
    result = load_trajectory(with_environment("subprocess")).replay(context="ctx")
    assert result.metadata["replay"]["environment"] == "subprocess"
    assert result.response == "probed"


def test_rlm_replay_help_says_it_executes_the_logs_code():
    done = subprocess.run(
        [sys.executable, "-m", "rlm", "replay", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parent.parent,
    )
    text = " ".join(done.stdout.split())
    assert done.returncode == 0
    assert "EXECUTES THE CODE WRITTEN IN THE LOG FILE" in text
    assert "subprocess" in text and "local" in text
