"""Every example in examples/ runs, offline, and prints what its docstring promises.

The scripted ones run in a second each; ``quickstart.py`` and ``local_model.py`` run the
embedded model (``real_model``: skipped without it, failed under
``RLM_REQUIRE_REAL_MODEL=1``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

try:
    from tests.llama_server import real_model_or_skip
except ImportError:  # tests/ is not a package: pytest put it on sys.path
    from llama_server import real_model_or_skip

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"

#: example -> lines its output must contain.
SCRIPTED = {
    "custom_tools.py": ["207.36 USD including VAT"],
    "recursion.py": ["warnings: 11", "child runs: 3"],
    "persistence.py": ["after the first batch: 10", "after the second batch: 40"],
    "sandbox.py": ["9 words, counted in pid"],
    "budgets.py": ["budget: stopped after spending", "tokens: stopped at"],
    "async_completion.py": ["Oslo: 12 orders", "Lima: 12 orders", "Pune: 12 orders"],
    "replay.py": ["supercalifragilistic: a very long word", "matches the recording: True"],
    "streaming.py": [
        "cell 1 printed: '40'",
        "answer: a shipping manifest",
        "root tokens streamed:",
    ],
    "batch.py": [
        "first run: 3 done, 3 model calls",
        "second run: 2 run now, 3 already in the output",
        "answers: log-0=0, log-1=1, log-2=2, log-3=3, log-4=4",
    ],
    "serve.py": ["answer: the document has 900 words", "streamed: the document has 900 words"],
}
REAL = {
    "local_model.py": ["client: ", "answer: "],
    "quickstart.py": ["gannet-4471"],
}


def run_example(name: str, tmp_path: Path, env: dict[str, str] | None = None, *args: str):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI")}
    clean["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        cwd=tmp_path,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_every_example_is_executed_by_a_test():
    # The ones listed here run below; an example owned elsewhere (streaming, structured
    # output, serve, batch) must be named by some other test file.
    others = [
        p.read_text() for p in (REPO / "tests").glob("test_*.py") if p.name != Path(__file__).name
    ]
    for example in EXAMPLES.glob("*.py"):
        if example.name not in SCRIPTED and example.name not in REAL:
            assert any(example.name in text for text in others), f"{example.name} is not tested"


@pytest.mark.parametrize("name", sorted(SCRIPTED))
def test_scripted_example(name, tmp_path):
    if name == "sandbox.py":
        from rlm.environments.subprocess_repl import SubprocessREPL

        try:
            SubprocessREPL(sandbox="auto").cleanup()
        except Exception as exc:  # the sandbox cannot start here at all
            pytest.skip(f"environment='subprocess' cannot start here: {exc}")
    proc = run_example(name, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for line in SCRIPTED[name]:
        assert line in proc.stdout, proc.stdout


def test_quickstart_writes_the_readme_ledger(tmp_path):
    proc = run_example("quickstart.py", tmp_path, None, "--write-ledger", "ledger.txt")
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "ledger.txt").read_text()
    assert len(text) > 200_000 and "pier nine is gannet-4471" in text


@pytest.mark.real_model
@pytest.mark.parametrize("name", sorted(REAL))
def test_embedded_model_example(name, tmp_path):
    model = real_model_or_skip()
    proc = run_example(name, tmp_path, {"RLM_LOCAL_MODEL": str(model)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    for line in REAL[name]:
        assert line in proc.stdout, proc.stdout[-3000:]
