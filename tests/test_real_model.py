"""End to end on the real local model: Qwen2.5-Coder-1.5B behind llama_cpp.server.

The context is several times larger than the server's window (n_ctx), so the
model can only answer by writing REPL code that searches it. Skipped when the
model is not fetched, unless RLM_REQUIRE_REAL_MODEL=1 (as in CI).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from rlm import RLM
from rlm.clients.llama_cpp import model_name_from_path
from rlm.logger import RLMLogger

try:
    from tests.llama_server import llama_server, real_model_or_skip
except ImportError:  # pragma: no cover - running with tests/ on sys.path
    from llama_server import llama_server, real_model_or_skip

N_CTX = 8192
REPO = Path(__file__).resolve().parents[1]
SERVER_MODULES = ("fastapi", "uvicorn", "sse_starlette", "pydantic_settings")


def haystack(entries: int, fact_line: str, position: int, seed: int = 7) -> str:
    rng = random.Random(seed)
    words = [
        "alpha",
        "beta",
        "gamma",
        "delta",
        "report",
        "shipment",
        "warehouse",
        "invoice",
        "customer",
        "order",
        "status",
        "pending",
        "delivered",
        "region",
        "north",
        "south",
        "east",
        "west",
        "quarterly",
        "revenue",
    ]
    lines = [
        f"Entry {i}: " + " ".join(rng.choice(words) for _ in range(8)) + "." for i in range(entries)
    ]
    lines.insert(position, fact_line)
    return "\n".join(lines)


@pytest.fixture(scope="module")
def server_url():
    path = real_model_or_skip(*SERVER_MODULES)
    with llama_server(path, n_ctx=N_CTX) as base_url:
        yield base_url, model_name_from_path(path)


@pytest.mark.real_model
def test_finds_a_fact_in_a_context_far_larger_than_the_window(server_url, tmp_path):
    base_url, model_name = server_url
    context = haystack(2400, "Entry 1777: The access code for the blue vault is 58213.", 1777)
    # About 4 characters per token: the context is several times the server's window.
    assert len(context) > 4 * N_CTX * 4
    logger = RLMLogger(log_dir=tmp_path)
    rlm = RLM(
        backend="openai",
        backend_kwargs={
            "model_name": model_name,
            "base_url": base_url,
            "api_key": "local",
            "timeout": 300,
        },
        sampling_args={"temperature": 0, "max_tokens": 400},
        max_iterations=8,
        logger=logger,
    )
    result = rlm.completion(context, root_prompt="What is the access code for the blue vault?")

    assert "58213" in result.response
    iterations = result.metadata["iterations"]
    executed = [block for it in iterations for block in it["code_blocks"]]
    assert executed, "the model answered without running any code"
    # The fact reached the model only through REPL output, never through the prompt.
    first_prompt = " ".join(m["content"] for m in iterations[0]["prompt"])
    assert "58213" not in first_prompt
    assert result.usage_summary.total_input_tokens > 0
    assert logger.log_file_path is not None


@pytest.mark.real_model
def test_rlm_run_on_a_file_then_rlm_view_serves_its_log(server_url, tmp_path):
    """The command line end to end: `rlm run` answers from a file several times the
    model's window and writes a log; `rlm view` serves that log over HTTP."""
    import json
    import subprocess
    import sys
    import urllib.request

    base_url, model_name = server_url
    document = tmp_path / "ledger.txt"
    document.write_text(
        haystack(2400, "Entry 1403: The password for pier nine is gannet-4471.", 1403, seed=11)
    )
    assert document.stat().st_size > 4 * N_CTX * 4
    logs = tmp_path / "logs"
    run = subprocess.run(
        [
            sys.executable, "-m", "rlm", "run", "What is the password for pier nine?",
            "-c", str(document), "--base-url", base_url, "--model", model_name,
            "--temperature", "0", "--max-iterations", "8", "--log-dir", str(logs), "-q",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert "gannet-4471" in run.stdout
    (log,) = logs.glob("*.jsonl")

    viewer = subprocess.Popen(
        [sys.executable, "-m", "rlm", "view", str(logs), "--no-browser"],
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        line = viewer.stderr.readline()  # "Serving LOGS at http://127.0.0.1:PORT/ ..."
        url = line.split(" at ", 1)[1].split()[0].rstrip("/")
        with urllib.request.urlopen(f"{url}/api/runs", timeout=30) as response:
            runs = json.load(response)["runs"]
        assert len(runs) == 1 and "gannet-4471" in (runs[0]["final_answer"] or "")
        assert runs[0]["iterations"] >= 2  # it searched before answering
        with urllib.request.urlopen(f"{url}/", timeout=30) as response:
            assert b"<html" in response.read().lower()
    finally:
        viewer.terminate()
        viewer.wait(timeout=30)
