"""Throughput and latency of `rlm serve` with the scripted LM (no model time).

Run: python benchmarks/serve.py [--quick]

Starts the app on 127.0.0.1 (uvicorn in a thread), then N concurrent clients (asyncio,
httpx, keep-alive) each send chat completions for a fixed time; prints requests/s and
p50/p99 latency at 1, 16 and 64 clients. Every request is a whole RLM run: handler,
REPL, one root call, one cell. The server runs at most --max-concurrent runs at once.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time

import httpx

from rlm.serve.app import ServeConfig
from rlm.serve.runner import ServerThread

ANSWER = '```repl\nanswer["content"] = "ok"\nanswer["ready"] = True\n```'


async def clients(url: str, n: int, seconds: float) -> tuple[list[float], int]:
    latencies: list[float] = []
    errors = 0
    body = {"model": "rlm", "messages": [{"role": "user", "content": "a small context"}]}
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        deadline = time.perf_counter() + seconds

        async def one() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                response = await client.post("/chat/completions", json=body)
                if response.status_code != 200:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - start)

        await asyncio.gather(*(one() for _ in range(n)))
    return latencies, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--max-concurrent", type=int, default=16)
    args = parser.parse_args()
    seconds = 2.0 if args.quick else 5.0
    config = ServeConfig(
        rlm={"backend": "scripted", "backend_kwargs": {"responses": lambda m: ANSWER}},
        api_key=None,
        max_concurrent=args.max_concurrent,
        max_queue=1024,
    )
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; max_concurrent runs "
        f"{args.max_concurrent}; {seconds:.0f} s per level"
    )
    with ServerThread(config) as server:
        asyncio.run(clients(server.url, 4, 0.5))  # warm up
        for n in (1, 16, 64):
            latencies, errors = asyncio.run(clients(server.url, n, seconds))
            latencies.sort()
            p50 = statistics.median(latencies) * 1000
            p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
            print(
                f"rlm serve, {n:>2} concurrent clients: {len(latencies) / seconds:8.1f} req/s   "
                f"p50 {p50:7.1f} ms   p99 {p99:7.1f} ms   errors {errors}"
            )


if __name__ == "__main__":
    main()
