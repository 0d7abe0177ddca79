"""How fast the trajectory viewer opens a large log; prints figures.

Writes a synthetic log (``--iterations`` iterations of two blocks with a few
KB of output and three sub-calls each), then measures: reading it
(``load_trajectories``), the viewer's first ``/api/runs`` (a cold read), the
run document (size and time), one iteration document, a search, and -- when
playwright and /usr/bin/chromium are there -- the time until the page shows
the run in headless Chromium.

    python benchmarks/viewer_load.py --iterations 2000
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
import urllib.request


def write_log(path: str, iterations: int) -> None:
    system = {"role": "system", "content": "system prompt " * 200}
    with open(path, "w") as handle:
        handle.write(
            json.dumps(
                {
                    "type": "metadata",
                    "root_model": "bench",
                    "backend": "scripted",
                    "environment_type": "local",
                    "max_depth": 1,
                    "max_iterations": iterations,
                }
            )
            + "\n"
        )
        for n in range(1, iterations + 1):
            calls = [
                {
                    "root_model": "sub",
                    "prompt": f"question {n}.{k} " * 20,
                    "response": f"answer {n}.{k} " * 30,
                    "execution_time": 0.1,
                    "usage_summary": {
                        "model_usage_summaries": {
                            "sub": {
                                "total_calls": 1,
                                "total_input_tokens": 100,
                                "total_output_tokens": 50,
                                "total_cost": 0.0001,
                            }
                        }
                    },
                }
                for k in range(3)
            ]
            blocks = [
                {
                    "code": f"for i in range(10):\n    print(i, context[{n}:{n} + 80])\n" * 3,
                    "result": {
                        "stdout": f"line {n} of output " * 150,
                        "stderr": "",
                        "locals": {"i": 9},
                        "execution_time": 0.01,
                        "rlm_calls": calls if b == 0 else [],
                    },
                }
                for b in range(2)
            ]
            record = {
                "type": "iteration",
                "iteration": n,
                "timestamp": "2026-01-01T00:00:00",
                "prompt": [system, {"role": "user", "content": f"turn {n}"}],
                "response": f"Thinking about step {n}.\n```repl\n...\n```",
                "code_blocks": blocks,
                "final_answer": "done" if n == iterations else None,
                "iteration_time": 1.0,
            }
            handle.write(json.dumps(record) + "\n")


def timed_get(url: str) -> tuple[float, int]:
    start = time.perf_counter()
    with urllib.request.urlopen(url) as response:
        size = len(response.read())
    return time.perf_counter() - start, size


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iterations", type=int, default=2000)
    args = parser.parse_args()

    from rlm.trajectory import load_trajectories
    from rlm.viewer import ViewerServer

    folder = tempfile.mkdtemp(prefix="rlm-viewer-bench-")
    path = os.path.join(folder, "big.jsonl")
    write_log(path, args.iterations)
    print(f"log: {args.iterations} iterations, {os.path.getsize(path) / 1e6:.1f} MB")

    start = time.perf_counter()
    load_trajectories(path)
    print(f"load_trajectories: {time.perf_counter() - start:.2f}s")

    server = ViewerServer(folder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = server.url
    took, size = timed_get(base + "api/runs")
    print(f"/api/runs (cold, reads the file): {took:.2f}s, {size / 1e3:.1f} kB")
    took, size = timed_get(base + "api/runs")
    print(f"/api/runs (cached): {took * 1000:.1f} ms")
    took, size = timed_get(base + "api/run?id=0.0")
    print(f"/api/run: {took * 1000:.1f} ms, {size / 1e3:.1f} kB")
    took, size = timed_get(base + f"api/iteration?id=0.0&i={args.iterations // 2}")
    print(f"/api/iteration: {took * 1000:.1f} ms, {size / 1e3:.1f} kB")
    took, size = timed_get(base + "api/search?id=0.0&q=answer+1999.2")
    print(f"/api/search: {took * 1000:.1f} ms")

    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("browser: playwright not installed; skipped")
        return
    if not os.path.exists("/usr/bin/chromium"):
        print("browser: /usr/bin/chromium missing; skipped")
        return
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        page = browser.new_page()
        start = time.perf_counter()
        page.goto(base)
        page.wait_for_selector("#final-answer:text('done')")
        page.wait_for_selector(".iteration-header")
        shown = time.perf_counter() - start
        start = time.perf_counter()
        page.locator(".iteration-header").first.click()
        page.wait_for_selector(".iteration-body pre.code")
        expand = time.perf_counter() - start
        browser.close()
    print(
        f"browser: page shows the run in {shown:.2f}s; expanding an iteration {expand * 1000:.0f} ms"
    )
    server.shutdown()


if __name__ == "__main__":
    main()
