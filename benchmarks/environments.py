"""Speed of each REPL environment, measured on the scripted LM (no model time).

Run: python benchmarks/environments.py [--quick] [--only local,subprocess,docker,...]
     python benchmarks/environments.py --memory [--size-mb 100] [--only subprocess,docker]

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

``--memory``: what sending a context to an isolated worker costs in memory, each
measurement in a fresh process: the host's extra peak while the REPL is built with the
context and runs one cell (its high-water mark, reset after the context was made, less
the resident size then), and the worker's peak (its own VmHWM, read by a cell), both per
MB of context, for a text context and a list of 1 KB strings. Target (issue #15): the
host's extra peak <= 1.1x the context; the worker's extra peak (beyond the context it
keeps) <= 1.1x for a text context.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
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


def _status_kb(field: str) -> int:
    """A ``/proc/self/status`` field (VmRSS, VmHWM) of this process, in KiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def make_context(kind: str, size: int):
    """A context of about ``size`` bytes: ASCII text, or a list of 1 KB strings."""
    line = "The quick brown fox jumps over the lazy dog; 0123456789.\n"
    if kind == "text":
        return line * (size // len(line))
    item = (line * (1024 // len(line) + 1))[:1024]
    return [item[:-8] + f"{i:08d}" for i in range(size // 1024)]


_WORKER_PEAK = (
    "with open('/proc/self/status') as _f:\n"
    "    peak_kb = [int(l.split()[1]) for l in _f if l.startswith('VmHWM:')][0]\n"
    "n = len(context)"
)


def memory_child(name: str, kind: str, size_mb: int) -> None:
    """One memory measurement (run in a fresh process); prints one JSON line."""
    context = make_context(kind, size_mb * 1024 * 1024)
    size = len(context) if kind == "text" else sum(len(s) for s in context)
    try:  # reset the high-water mark to the resident size now (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        pass
    base = _status_kb("VmHWM")
    start = time.perf_counter()
    env = get_environment(env_name(name), kwargs_for(name, context_payload=context))
    result = env.execute_code(_WORKER_PEAK)
    elapsed = time.perf_counter() - start
    try:
        assert result.error is None, result.error
        worker_kb = int(env.execute_code("print(peak_kb)").stdout)
    finally:
        env.cleanup()
    empty = get_environment(env_name(name), kwargs_for(name))
    try:
        empty.execute_code(_WORKER_PEAK.replace("n = len(context)", "n = 0"))
        empty_kb = int(empty.execute_code("print(peak_kb)").stdout)
    finally:
        empty.cleanup()
    host_extra = (_status_kb("VmHWM") - base) * 1024
    print(
        json.dumps(
            {
                "context_bytes": size,
                "host_extra": host_extra,
                "worker_peak": worker_kb * 1024,
                "worker_empty": empty_kb * 1024,
                "time": elapsed,
            }
        )
    )


def memory(names: list[str], size_mb: int) -> None:
    print(f"\n== context memory, {size_mb} MB, each in a fresh process (MB per MB of context)")
    print(
        f"   {'environment':<14}{'context':<8}{'host extra':>11}{'worker peak':>13}"
        f"{'worker extra':>14}{'load + cell':>13}"
    )
    for name in names:
        for kind in ("text", "list"):
            proc = subprocess.run(
                [sys.executable, __file__, "--memory-child", name, kind, str(size_mb)],
                capture_output=True,
                text=True,
            )
            if proc.returncode != 0:
                why = (proc.stderr.strip().splitlines() or ["failed"])[-1]
                print(f"   {name:<14}{kind:<8} {why}")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            mb = r["context_bytes"]
            extra = (r["worker_peak"] - r["worker_empty"] - mb) / mb
            print(
                f"   {name:<14}{kind:<8}{r['host_extra'] / mb:>10.2f}x"
                f"{r['worker_peak'] / mb:>12.2f}x{extra:>13.2f}x{ms(r['time']):>13}"
            )
    print("   worker extra: its peak less an empty worker's and the context it keeps")


def main() -> None:
    if sys.argv[1:2] == ["--memory-child"]:
        name, kind, size_mb = sys.argv[2:5]
        memory_child(name, kind, int(size_mb))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument(
        "--memory", action="store_true", help="context memory of isolated environments"
    )
    parser.add_argument("--size-mb", type=int, default=100, help="context size for --memory")
    parser.add_argument(
        "--only",
        default="local,subprocess,docker,ipython,ipython-kernel,"
        "modal-standin,e2b-standin,daytona-standin,prime-standin",
    )
    args = parser.parse_args()
    if args.memory:
        only = args.only if "--only" in sys.argv else "subprocess,docker"
        memory(only.split(","), args.size_mb)
        return
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
