"""engine="ray": the same batch on a small local Ray cluster gives the same output and resumes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rlm.batch import batch

ray = pytest.importorskip("ray")

ANSWER = '```repl\nanswer["content"] = "A:" + context\nanswer["ready"] = True\n```'
CONFIG = {"backend": "scripted", "backend_kwargs": {"responses": [ANSWER]}}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _temp_dir=str(tmp_path_factory.mktemp("ray")),
        log_to_driver=False,
    )
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def _records(path):
    return {r["id"]: r for r in map(json.loads, path.read_text().splitlines())}


def test_ray_engine_matches_local_and_resumes(cluster, tmp_path):
    items = [{"id": f"i{k}", "context": f"item-{k}", "question": "q"} for k in range(200)]
    local = batch(items, tmp_path / "local.jsonl", config=CONFIG)
    assert local.done == 200

    # Half the items done already (as after a crash): the Ray run does only the rest.
    first = batch(items[:100], tmp_path / "ray.jsonl", config=CONFIG, engine="ray")
    assert first.ran == 100
    second = batch(items, tmp_path / "ray.jsonl", config=CONFIG, engine="ray", concurrency=4)
    assert (second.skipped, second.ran, second.calls, second.done) == (100, 100, 100, 200)

    ray_records = _records(tmp_path / "ray.jsonl")
    assert len((tmp_path / "ray.jsonl").read_text().splitlines()) == 200  # each once
    local_records = _records(tmp_path / "local.jsonl")
    assert {k: r["response"] for k, r in ray_records.items()} == {
        k: r["response"] for k, r in local_records.items()
    }


def test_rlm_batch_engine_ray_cli_connects_to_the_cluster(cluster, tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text(
        "".join(json.dumps({"id": k, "context": f"c{k}"}) + "\n" for k in range(20)), "utf-8"
    )
    out = tmp_path / "out.jsonl"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlm",
            "batch",
            str(inp),
            "-o",
            str(out),
            "--engine",
            "ray",
            "--ray-address",
            cluster,
            "--backend",
            "scripted",
            "--backend-kwargs",
            json.dumps({"responses": [ANSWER]}),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["done"] == 20
    assert _records(out)["3"]["response"] == "A:c3"
