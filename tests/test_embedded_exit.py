"""The embedded model stops cleanly: no crash at exit while a llama.cpp call is running.

A root call that a run abandons (``max_timeout``, Ctrl-C) keeps running in a daemon
thread. Before the fix the process then died in ``libggml-cpu.so`` at exit (-11).
Each case runs 5 times in a fresh process; the exit code must be the documented one
every time. Offline tests check the abort machinery itself without the weights.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

try:
    from tests.llama_server import real_model_or_skip
except ImportError:  # tests/ is not a package: pytest put it on sys.path
    from llama_server import real_model_or_skip

TRIES = 5
QUESTION = "What is the sum of all the numbers? Compute it exactly."


def _env(model: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI", "RLM_"))}
    env["RLM_LOCAL_MODEL"] = str(model)
    env["PYTHONFAULTHANDLER"] = "1"  # a native crash prints its stack
    return env


@pytest.fixture(scope="module")
def model() -> Path:
    return real_model_or_skip()


@pytest.fixture
def numbers(tmp_path: Path) -> Path:
    path = tmp_path / "numbers.txt"
    path.write_text("\n".join(str(i * 7919 % 1000) for i in range(400)))
    return path


@pytest.mark.real_model
def test_max_timeout_exits_1_not_a_crash(model, numbers, tmp_path):
    codes = []
    for _ in range(TRIES):
        proc = subprocess.run(
            [sys.executable, "-m", "rlm", "run", QUESTION, "-c", str(numbers)]
            + ["--backend", "llama_cpp", "--max-timeout", "5", "-q"],
            env=_env(model),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
        codes.append(proc.returncode)
        assert "Fatal Python error" not in proc.stderr, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert codes == [1] * TRIES, codes


@pytest.mark.real_model
def test_ctrl_c_exits_130_not_a_crash(model, numbers, tmp_path):
    codes = []
    for _ in range(TRIES):
        proc = subprocess.Popen(
            [sys.executable, "-m", "rlm", "run", QUESTION, "-c", str(numbers)]
            + ["--backend", "llama_cpp", "-v"],
            env={**_env(model), "COLUMNS": "100"},
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            # The verbose printer announces the iteration just before the root call:
            # from here on the model is loading or decoding in another thread.
            seen = []
            for line in proc.stderr:
                seen.append(line)
                if "Iteration" in line:
                    break
            assert any("Iteration" in line for line in seen), "".join(seen)
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        codes.append(proc.returncode)
        assert "Fatal Python error" not in err, err[-2000:]
    assert codes == [130] * TRIES, codes


SCRIPT = textwrap.dedent(
    """
    import sys
    from rlm import RLM, TimeoutExceededError

    rlm = RLM(backend="llama_cpp", max_timeout=3)
    try:
        rlm.completion(open(sys.argv[1]).read(), root_prompt=sys.argv[2])
    except TimeoutExceededError:
        print("caught")
    """
)


@pytest.mark.real_model
def test_a_script_that_catches_the_timeout_exits_0(model, numbers, tmp_path):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), str(numbers), QUESTION],
        env=_env(model),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (proc.returncode, proc.stdout.strip()) == (0, "caught"), proc.stderr[-2000:]


@pytest.mark.real_model
def test_a_call_past_its_timeout_is_stopped_and_the_model_still_works(model):
    from rlm.clients.llama_cpp import GenerationAbortedError, LlamaCppClient

    client = LlamaCppClient(
        model_path=model, n_ctx=2048, timeout=0.5, sampling_args={"max_tokens": 400}
    )
    with pytest.raises(GenerationAbortedError, match="timeout"):
        client.generate("Write a long story about a lighthouse keeper.")
    client.timeout = None
    client.sampling_args["max_tokens"] = 4
    assert client.generate("Say OK.").output_tokens > 0  # the KV cache was reset, not broken
