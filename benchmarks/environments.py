"""Speed of each REPL environment, measured on the scripted LM (no model time).

Run: python benchmarks/environments.py [--quick] [--only local,subprocess,docker,...]

Names: local, subprocess, docker, ipython (in-process), ipython-kernel (mode="kernel"),
and modal-standin, e2b-standin, daytona-standin, prime-standin: the real cloud
adapters driving a LOCAL stand-in of their SDK (tests/sandbox_fakes.py: a local
worker process), which measures the adapter and framing overhead, not the service.

Per environment: start-up (construction to a usable REPL, no context), a warm
cell, a cell with a 100 MB context loaded (and the one-time load), one
``llm_query`` round trip from a cell, and teardown. Docker uses
``$RLM_DOCKER_IMAGE`` (default ``rlm-python:local``, built by
scripts/docker_image.sh) and is skipped with the reason when no engine runs.
Targets (issue #5): subprocess start-up <= 150 ms, warm cell < 1 ms, a 100 MB
context adds <= 10 ms per cell after loading (reference Docker backend:
4.6-5.3 s per cell).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rlm.clients.scripted import ScriptedLM  # noqa: E402
from rlm.core.lm_handler import LMHandler  # noqa: E402
from rlm.environments import get_environment  # noqa: E402

IMAGE = os.environ.get("RLM_DOCKER_IMAGE", "rlm-python:local")


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f} ms" if seconds < 0.01 else f"{seconds * 1000:.1f} ms"


def median_time(fn, n: int) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def kwargs_for(name: str, **kwargs):
    if name == "docker":
        kwargs["image"] = IMAGE
    if name == "ipython-kernel":
        kwargs["mode"] = "kernel"
    if name.endswith("-standin"):
        from tests.sandbox_fakes import FAKES

        kwargs["sdk"] = FAKES[name.removesuffix("-standin")]()
    return kwargs


def env_name(name: str) -> str:
    """The registered environment behind a benchmark name."""
    if name == "ipython-kernel":
        return "ipython"
    return name.removesuffix("-standin")


def bench(name: str, handler: LMHandler, quick: bool) -> None:
    reps = 3 if quick else 7
    cells = 50 if quick else 300
    big = "x" * (100 * 1024 * 1024)

    starts, teardowns = [], []
    for _ in range(reps):
        start = time.perf_counter()
        env = get_environment(env_name(name), kwargs_for(name))
        env.execute_code("pass")
        starts.append(time.perf_counter() - start)
        start = time.perf_counter()
        env.cleanup()
        teardowns.append(time.perf_counter() - start)

    env = get_environment(env_name(name), kwargs_for(name, lm_handler_address=handler.address))
    layers = getattr(env, "isolation", None)
    try:
        env.execute_code("x = 0")
        warm = median_time(lambda: env.execute_code("x = x + 1"), cells)
        query = median_time(lambda: env.execute_code("r = llm_query('ping')"), cells // 5)
        start = time.perf_counter()
        env.add_context(big, 0)
        env.execute_code("n = len(context)")
        load = time.perf_counter() - start
        with_context = median_time(lambda: env.execute_code("x = x + 1"), cells)
        slice_cell = median_time(lambda: env.execute_code("s = context[1000:2000]"), cells)
    finally:
        env.cleanup()

    label = " (LOCAL STAND-IN of the SDK, not the service)" if name.endswith("-standin") else ""
    print(f"\n== {name}{label}")
    if layers:
        active = ", ".join(
            k if v is True else f"{k}={v}"
            for k, v in layers.items()
            if v and k not in ("workdir", "rlimits", "limits", "image")
        )
        print(f"   isolation: {active}")
    print(f"   start-up (to first cell)            {ms(statistics.median(starts)):>12}")
    print(f"   warm cell                           {ms(warm):>12}")
    print(f"   load 100 MB context (once)          {ms(load):>12}")
    print(f"   cell with 100 MB context loaded     {ms(with_context):>12}")
    print(f"   cell slicing the 100 MB context     {ms(slice_cell):>12}")
    print(f"   llm_query round trip from a cell    {ms(query):>12}")
    print(f"   teardown                            {ms(statistics.median(teardowns)):>12}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument(
        "--only",
        default="local,subprocess,docker,ipython,ipython-kernel,"
        "modal-standin,e2b-standin,daytona-standin,prime-standin",
    )
    args = parser.parse_args()
    handler = LMHandler(ScriptedLM(sub_responses=lambda m: "pong"))
    handler.start()
    try:
        for name in args.only.split(","):
            if name == "docker":
                from rlm.environments.docker_repl import docker_available

                why = docker_available()
                if why is not None:
                    print(f"\n== docker: skipped ({why})")
                    continue
            bench(name, handler, args.quick)
    finally:
        handler.stop()


if __name__ == "__main__":
    main()
