"""Items per second of a batch run, in-process (asyncio) and on a local Ray cluster.

Run: python benchmarks/batch.py [--quick] [--no-ray]

1,000 items with the scripted LM (one root call, one cell each), written to a JSON-lines
output in a temporary folder. The Ray figure includes starting and stopping a local
cluster (2 CPUs, no dashboard); "warm" is a second run on the cluster already up.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from rlm.batch import batch

ANSWER = '```repl\nanswer["content"] = "A:" + context\nanswer["ready"] = True\n```'
CONFIG = {"backend": "scripted", "backend_kwargs": {"responses": [ANSWER]}}


def report(name: str, n: int, elapsed: float) -> None:
    print(f"{name:<46} {n / elapsed:9.1f} items/s   ({n:,} items in {elapsed:.2f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-ray", action="store_true")
    args = parser.parse_args()
    n = 200 if args.quick else 1000
    items = [{"id": k, "context": f"item-{k}", "question": "q"} for k in range(n)]
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        for concurrency in (1, 8, 32):
            start = time.perf_counter()
            summary = batch(
                items,
                Path(tmp, f"local{concurrency}.jsonl"),
                config=CONFIG,
                concurrency=concurrency,
                progress=False,
            )
            assert summary.done == n, summary.line()
            report(f"local engine, concurrency {concurrency}", n, time.perf_counter() - start)
        start = time.perf_counter()
        summary = batch(items, Path(tmp, "local8.jsonl"), config=CONFIG, progress=False)
        report("resume of a finished batch (all skipped)", n, time.perf_counter() - start)
        if args.no_ray:
            return
        import ray

        start = time.perf_counter()
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            _temp_dir=str(Path(tmp, "ray")),
        )
        try:
            summary = batch(
                items,
                Path(tmp, "ray.jsonl"),
                config=CONFIG,
                engine="ray",
                concurrency=16,
                progress=False,
            )
            assert summary.done == n, summary.line()
            report("ray engine, local cluster (incl. start)", n, time.perf_counter() - start)
            start = time.perf_counter()
            summary = batch(
                items,
                Path(tmp, "ray2.jsonl"),
                config=CONFIG,
                engine="ray",
                concurrency=16,
                progress=False,
            )
            report("ray engine, warm cluster, 16 tasks in flight", n, time.perf_counter() - start)
        finally:
            ray.shutdown()


if __name__ == "__main__":
    main()
