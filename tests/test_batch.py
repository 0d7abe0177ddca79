"""Batch runs: rlm batch / rlm.batch with the scripted LM; resume after a killed run."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from rlm import RLM
from rlm.batch import abatch, batch, read_items

#: The root model's one answer: the item's context, prefixed. A marker file path, when
#: given, makes the item "item-100" kill the whole process the first time it runs.
KILLER = (
    "```repl\nimport os, signal\n"
    "if context == 'item-100' and not os.path.exists({marker!r}):\n"
    "    open({marker!r}, 'w').close()\n"
    "    os.kill(os.getpid(), signal.SIGKILL)\n"
    'answer["content"] = "A:" + context\nanswer["ready"] = True\n```'
)
ANSWER = '```repl\nanswer["content"] = "A:" + context\nanswer["ready"] = True\n```'


def _write_items(path: Path, n: int) -> None:
    path.write_text(
        "".join(
            json.dumps({"id": f"i{k}", "context": f"item-{k}", "question": "q"}) + "\n"
            for k in range(n)
        ),
        encoding="utf-8",
    )


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rlm", "batch", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_rlm_batch_killed_halfway_then_resumed_runs_every_item_once(tmp_path):
    items, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write_items(items, 200)
    kwargs = json.dumps({"responses": [KILLER.format(marker=str(tmp_path / "killed"))]})
    common = [
        str(items),
        "-o",
        str(out),
        "--backend",
        "scripted",
        "--backend-kwargs",
        kwargs,
        "--no-progress",
        "-j",
        "4",
    ]

    first = _cli(*common)
    assert first.returncode == -signal.SIGKILL, first.stderr  # killed at item 100
    before = _records(out)
    assert 0 < len(before) < 200
    assert "i100" not in {r["id"] for r in before}

    second = _cli(*common)
    assert second.returncode == 0, second.stderr
    summary = json.loads(second.stdout)
    assert summary["skipped"] == len(before)
    assert summary["ran"] == 200 - len(before)
    # One model call per item run: none for the items the first run finished.
    assert summary["calls"] == summary["ran"]
    assert (summary["done"], summary["failed"]) == (200, 0)

    after = _records(out)
    ids = [r["id"] for r in after]
    assert len(ids) == len(set(ids)) == 200  # every item exactly once
    assert {r["id"]: r["response"] for r in after} == {f"i{k}": f"A:item-{k}" for k in range(200)}
    assert "p50" in second.stderr and "p95" in second.stderr

    third = _cli(*common)  # nothing left: no model calls at all
    assert json.loads(third.stdout)["calls"] == 0


def test_rlm_batch_api_overrides_errors_and_metadata(tmp_path):
    calls: list[str] = []

    def root(messages):
        calls.append(messages[-1]["content"])
        return ANSWER

    (tmp_path / "doc.txt").write_text("from a file", encoding="utf-8")
    items = [
        {"id": 1, "context": "plain", "metadata": {"gold": "x"}},
        {"id": 2, "context_file": "doc.txt"},
        {"id": 3, "context": "limited", "max_iterations": 0},  # an override that fails
        {"id": 4, "context": "x", "unknown": True},
        {"id": 5, "context": "ctx", "model": "other-name"},
    ]
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(i) + "\n" for i in items), encoding="utf-8")
    rlm = RLM(backend="scripted", backend_kwargs={"responses": root}, max_iterations=3)
    summary = rlm.batch(inp, tmp_path / "out.jsonl", concurrency=2)
    records = {r["id"]: r for r in _records(tmp_path / "out.jsonl")}
    assert records["1"]["response"] == "A:plain" and records["1"]["metadata"] == {"gold": "x"}
    assert records["2"]["response"] == "A:from a file"
    assert not records["3"]["ok"] and "max_iterations" in records["3"]["error"]
    assert not records["4"]["ok"] and "unknown" in records["4"]["error"]
    assert records["5"]["ok"] and records["5"]["root_model"] == "other-name"
    assert (summary.done, summary.failed, summary.total) == (3, 2, 5)
    assert summary.calls == 3

    # A rerun skips all five; retry_failed reruns only the failed ones.
    assert rlm.batch(inp, tmp_path / "out.jsonl").ran == 0
    again = rlm.batch(inp, tmp_path / "out.jsonl", retry_failed=True)
    assert again.ran == 2 and len(_records(tmp_path / "out.jsonl")) == 5


def test_abatch_without_output_and_a_half_written_line(tmp_path):
    items = [{"id": k, "context": f"c{k}"} for k in range(10)]
    config = {"backend": "scripted", "backend_kwargs": {"responses": [ANSWER]}}
    summary = asyncio.run(abatch(items, config=config, concurrency=3))
    assert summary.done == 10 and summary.records["7"]["response"] == "A:c7"

    out = tmp_path / "out.jsonl"
    out.write_text(json.dumps({"id": "0", "ok": True, "usage": {}}) + '\n{"id": "1", "ok', "utf-8")
    summary = batch(items, out, config=config)
    assert summary.skipped == 1 and summary.ran == 9
    assert sorted(r["id"] for r in _records(out)) == sorted(str(k) for k in range(10))


def test_repeated_ids_and_bad_lines_are_refused(tmp_path):
    with pytest.raises(ValueError, match="appears twice"):
        read_items([{"id": 1, "context": "a"}, {"id": 1, "context": "b"}])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "context": "a"}\nnot json\n', encoding="utf-8")
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        read_items(bad)
    out = _cli(
        str(bad),
        "-o",
        str(tmp_path / "o.jsonl"),
        "--backend",
        "scripted",
        "--backend-kwargs",
        json.dumps({"responses": [ANSWER]}),
    )
    assert out.returncode != 0 and "not a JSON line" in out.stderr


def test_a_cancelled_abatch_keeps_what_finished(tmp_path):
    spin = (
        "```repl\nif context == 'item-5':\n    notify()\n    while True:\n        pass\n"
        'answer["content"] = "A:" + context\nanswer["ready"] = True\n```'
    )

    async def go():
        loop = asyncio.get_running_loop()
        started = asyncio.Event()
        items = [{"id": k, "context": f"item-{k}"} for k in range(6)]
        config = {
            "backend": "scripted",
            "backend_kwargs": {"responses": [spin]},
            # The cell of item 5 never ends by itself: the cancellation must stop it.
            "custom_tools": {"notify": lambda: loop.call_soon_threadsafe(started.set)},
        }
        task = asyncio.ensure_future(
            abatch(items, tmp_path / "out.jsonl", config=config, concurrency=1)
        )
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())  # returns only once the spinning cell's thread has ended
    assert sorted(r["id"] for r in _records(tmp_path / "out.jsonl")) == [str(k) for k in range(5)]


def test_log_dir_gives_every_item_its_own_trajectory(tmp_path):
    from rlm import load_trajectory

    items = [
        {"id": "a/1", "context": "first"},
        {"id": "b 2", "context": "second"},
        {"id": "c", "context": "third", "max_iterations": 0},  # fails before running
    ]
    config = {"backend": "scripted", "backend_kwargs": {"responses": [ANSWER]}}
    summary = batch(items, tmp_path / "out.jsonl", config=config, log_dir=tmp_path / "logs")
    records = {r["id"]: r for r in _records(tmp_path / "out.jsonl")}
    assert summary.done == 2 and summary.failed == 1
    for item_id, context in (("a/1", "first"), ("b 2", "second")):
        path = Path(records[item_id]["log_file"])
        # One file per item, in log_dir, named after the item (unsafe characters replaced).
        assert path.parent == tmp_path / "logs" and path.name.startswith(item_id[0] + "_")
        run = load_trajectory(path)
        assert run.final_answer == "A:" + context and len(run.iterations) == 1
    assert len(list((tmp_path / "logs").glob("*.jsonl"))) == 2
    assert "log_file" not in records["c"] or not Path(records["c"]["log_file"]).exists()

    # The CLI's --log-dir does the same; a logger and log_dir together are refused.
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"id": "x", "context": "cli"}) + "\n", encoding="utf-8")
    done = _cli(
        str(inp),
        "-o",
        str(tmp_path / "cli.jsonl"),
        "--backend",
        "scripted",
        "--backend-kwargs",
        json.dumps({"responses": [ANSWER]}),
        "--log-dir",
        str(tmp_path / "cli-logs"),
        "--no-progress",
    )
    assert done.returncode == 0, done.stderr
    (record,) = _records(tmp_path / "cli.jsonl")
    assert load_trajectory(record["log_file"]).final_answer == "A:cli"
    from rlm.logger import RLMLogger

    with pytest.raises(ValueError, match="log_dir or a logger"):
        batch(items, config={**config, "logger": RLMLogger()}, log_dir=tmp_path / "x")
