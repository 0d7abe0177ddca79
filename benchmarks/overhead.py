"""Overhead of the RLM machinery itself, measured on the scripted LM (no model time).

Run: python benchmarks/overhead.py [--quick] [--only llm_query,iteration,...]

Prints one line per figure, with the target from issue #2 and the public
``rlms`` 0.1.3 package's figure measured on the same kind of machine.
Memory figures run in a fresh subprocess each, so they do not see each other.
``llm_query`` is also given as a share of a bare kept-alive loopback TCP round trip
measured in the same run (issue #15: >= 60%).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from rich.console import Console

from rlm import RLM
from rlm.clients.scripted import ScriptedLM
from rlm.core.comms_utils import (
    LMRequest,
    decode_payload,
    encode_frame,
    recv_frame_bytes,
    socket_recv,
)
from rlm.core.lm_handler import LMHandler
from rlm.core.types import CodeBlock, REPLResult
from rlm.environments import get_environment
from rlm.environments.local_repl import LocalREPL
from rlm.logger import RLMLogger, VerbosePrinter
from rlm.utils.exceptions import ConfigurationError

ANSWER = '```repl\nanswer["content"] = "done"\nanswer["ready"] = True\n```'


def report(name: str, value: str, target: str, reference: str) -> None:
    print(f"{name:<52} {value:>14}   target {target:<10} rlms 0.1.3: {reference}")


class _Loopback:
    """A bare kept-alive loopback TCP round trip: a server thread and a client on one
    persistent connection (TCP_NODELAY on both ends, as the handler's), exchanging the
    frames of a real ``llm_query`` request and reply through the repo's frame codec
    (rlm.comms.frames, what the handler's socket path uses): the client encodes and
    sends a request, the server reads and decodes it and sends the reply, which the
    client reads and decodes. Nothing of the RLM runs: the physical limit on this machine."""

    def __init__(self, request: dict, reply: dict):
        self.request = request
        listener = socket.create_server(("127.0.0.1", 0))
        self._thread = threading.Thread(target=self._serve, args=(listener, reply), daemon=True)
        self._thread.start()
        self.sock = socket.create_connection(listener.getsockname())
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._listener = listener

    @staticmethod
    def _serve(listener: socket.socket, reply: dict) -> None:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn:
            while (payload := recv_frame_bytes(conn)) is not None:
                decode_payload(payload)
                conn.sendall(encode_frame(reply))

    def seconds(self, n: int) -> float:
        sock, request = self.sock, self.request
        start = time.perf_counter()
        for _ in range(n):
            sock.sendall(encode_frame(request))
            socket_recv(sock)
        return time.perf_counter() - start

    def close(self) -> None:
        self.sock.close()
        self._thread.join(5)
        self._listener.close()


_QUERY_LOOP = (
    "import time\nt0 = time.perf_counter()\nfor _ in range({n}):\n    llm_query('q')\n"
    "elapsed = time.perf_counter() - t0"
)


def _query_seconds(env, n: int) -> float:
    """Seconds for ``n`` sequential ``llm_query`` calls timed inside one cell of ``env``."""
    result = env.execute_code(_QUERY_LOOP.format(n=n) + "\nprint(repr(elapsed))")
    assert result.error is None, result.stderr
    return float(result.stdout.strip().splitlines()[-1])


def _paired_rounds(loopback: _Loopback, env, n: int, rounds: int) -> tuple[float, float, float]:
    """``(bare round trips/s, llm_query calls/s, share)``: ``rounds`` rounds alternating a
    bare loopback run and a cell of ``llm_query`` calls; rates from the medians, the share
    the median of each round's own pair (the load changes between rounds)."""
    loopback.seconds(n // 10)  # warm up both sides
    _query_seconds(env, n // 10)
    bare, query = [], []
    for _ in range(rounds):
        bare.append(loopback.seconds(n))
        query.append(_query_seconds(env, n))
    share = statistics.median(b / q for b, q in zip(bare, query, strict=True))
    return n / statistics.median(bare), n / statistics.median(query), share


def bench_llm_query_rate(n: int, rounds: int, isolated: bool = True) -> None:
    """``llm_query`` calls/s from a cell (scripted LM, answers at once) against a bare
    kept-alive loopback round trip measured in the same run, alternating round by round:
    the ``local`` environment, whose requests skip the socket (answered in process), then
    the ``subprocess`` worker, whose calls cross its pipes to the host (started only
    then: on this two-core machine its traffic slows what follows in the process for a
    while, which would blur the local figure). Target (issue 15): ``local`` >= 60% of the
    bare round trips/s."""
    handler = LMHandler(ScriptedLM(sub_responses=lambda m: "ok"))
    handler.start()
    request = LMRequest(prompt="q", depth=1).to_dict()
    reply = handler.handle_request(LMRequest(prompt="q", depth=1)).to_dict()
    loopback = _Loopback(request, reply)
    try:
        local = LocalREPL(lm_handler_address=handler.address)
        try:
            bare, rate, share = _paired_rounds(loopback, local, n, rounds)
        finally:
            local.cleanup()
        report(
            f"llm_query calls/s ({n:,} sequential, local)", f"{rate:,.0f}/s", ">= 10,000", "2,800/s"
        )
        report("bare kept-alive loopback round trips/s (same run)", f"{bare:,.0f}/s", "-", "-")
        report("  llm_query (local) / bare round trip", f"{share:.0%}", ">= 60%", "-")
        if not isolated:
            return
        try:
            worker = get_environment("subprocess", {"lm_handler_address": handler.address})
        except ConfigurationError as exc:
            print(f"  (subprocess not measured: {exc})")
            return
        try:
            bare, rate, share = _paired_rounds(loopback, worker, n, rounds)
        finally:
            worker.cleanup()
        report(f"llm_query calls/s ({n:,} sequential, subprocess)", f"{rate:,.0f}/s", "-", "-")
        report("  llm_query (subprocess) / bare round trip", f"{share:.0%}", "-", "-")
    finally:
        loopback.close()
        handler.stop()


def bench_batched(n: int, concurrency: int) -> None:
    handler = LMHandler(
        ScriptedLM(sub_responses=lambda m: "ok", delay=0.05), batch_max_concurrent=concurrency
    )
    handler.start()
    repl = LocalREPL(lm_handler_address=handler.address)
    try:
        code = (
            "import time\nt0 = time.perf_counter()\n"
            f"out = llm_query_batched(['q%d' % i for i in range({n})])\n"
            "elapsed = time.perf_counter() - t0\n"
            "bad = [o for o in out if o != 'ok']"
        )
        result = repl.execute_code(code)
        assert result.error is None and not repl.locals["bad"], result.stderr
        elapsed = repl.locals["elapsed"]
    finally:
        repl.cleanup()
        handler.stop()
    target = "<= 1.0 s" if concurrency == 64 else "-"
    report(
        f"llm_query_batched {n:,} x 50 ms, concurrency {concurrency}",
        f"{elapsed:.2f} s",
        target,
        "3.2 s (fixed at 16)",
    )


def bench_batched_adaptive(n: int) -> None:
    """llm_query_batched at defaults: the handler's adaptive (AIMD) limit, and a whole RLM run
    with its default settings. Target (issue 12): <= 0.35x rlms' 3.2 s."""
    handler = LMHandler(ScriptedLM(sub_responses=lambda m: "ok", delay=0.05))
    handler.start()
    repl = LocalREPL(lm_handler_address=handler.address)
    try:
        result = repl.execute_code(
            "import time\nt0 = time.perf_counter()\n"
            f"out = llm_query_batched(['q%d' % i for i in range({n})])\n"
            "elapsed = time.perf_counter() - t0\nbad = [o for o in out if o != 'ok']"
        )
        assert result.error is None and not repl.locals["bad"], result.stderr
        elapsed = repl.locals["elapsed"]
    finally:
        repl.cleanup()
        handler.stop()
    target = f"<= {0.35 * 3.2:.2f} s" if n == 1000 else "-"
    report(
        f"llm_query_batched {n:,} x 50 ms, adaptive (handler default)",
        f"{elapsed:.2f} s ({elapsed / 3.2:.2f}x)",
        target,
        "3.2 s",
    )
    code = (
        "```repl\nimport time\nt0 = time.perf_counter()\n"
        f"out = llm_query_batched(['q%d' % i for i in range({n})])\n"
        "elapsed = time.perf_counter() - t0\n"
        'answer["content"] = str(elapsed) if all(o == "ok" for o in out) else "bad"\n'
        'answer["ready"] = True\n```'
    )
    rlm = RLM(
        backend="scripted",
        backend_kwargs={"responses": [code], "sub_responses": lambda m: "ok", "delay": 0.05},
    )
    rlm_elapsed = float(rlm.completion("ctx").response)
    report(
        "  the same inside RLM() at its defaults",
        f"{rlm_elapsed:.2f} s ({rlm_elapsed / 3.2:.2f}x)",
        target,
        "3.2 s",
    )


def bench_fixed_cost(repeats: int) -> None:
    times = []
    for _ in range(repeats):
        rlm = RLM(backend="scripted", backend_kwargs={"responses": [ANSWER]})
        start = time.perf_counter()
        rlm.completion("a small context")
        times.append(time.perf_counter() - start)
    report(
        "completion() fixed cost (1 iteration, median)",
        f"{statistics.median(times) * 1000:.2f} ms",
        "<= 10 ms",
        "500 ms",
    )


def bench_per_iteration(iterations: int) -> None:
    responses = ["```repl\nx = 1\n```"] * (iterations - 1) + [ANSWER]
    rlm = RLM(
        backend="scripted", backend_kwargs={"responses": responses}, max_iterations=iterations
    )
    start = time.perf_counter()
    rlm.completion("a small context")
    elapsed = time.perf_counter() - start
    report(
        f"per-iteration overhead ({iterations} iterations)",
        f"{elapsed / iterations * 1000:.2f} ms",
        "-",
        "-",
    )


def bench_child_rlm(children: int) -> None:
    """Cost of a child RLM (its own REPL and handler) when the child answers at once."""

    def script(messages):
        if "CHILD" in messages[1]["content"]:
            return ANSWER
        if sum(1 for m in messages if m["role"] == "assistant") == 0:
            return (
                "```repl\nimport time\nt0 = time.perf_counter()\n"
                f"for i in range({children}):\n    rlm_query('CHILD %d' % i)\n"
                "per_child = (time.perf_counter() - t0) / " + str(children) + "\n```"
            )
        return '```repl\nanswer["content"] = str(per_child)\nanswer["ready"] = True\n```'

    rlm = RLM(
        backend="scripted", backend_kwargs={"responses": script}, max_depth=2, max_iterations=3
    )
    per_child = float(rlm.completion("ctx").response)
    report(
        f"rlm_query child RLM overhead ({children} sequential)",
        f"{per_child * 1000:.2f} ms",
        "-",
        "about 500 ms",
    )


_MEMORY_SCRIPT = """
import resource, sys, time
from rlm import RLM
size = int(sys.argv[1])
context = "x" * size  # one allocation: no temporary inflates the baseline peak
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
answer = '```repl\\nanswer["content"] = str(len(context))\\nanswer["ready"] = True\\n```'
rlm = RLM(backend="scripted", backend_kwargs={"responses": [answer]})
start = time.perf_counter()
result = rlm.completion(context)
elapsed = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
assert result.response == str(size), result.response
print(elapsed, (peak - base) * 1024)
"""


def bench_context_memory(size_mb: int) -> None:
    size = size_mb * 1_000_000
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, str(size)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    elapsed, extra = float(out[0]), int(float(out[1]))
    report(f"completion() over a {size_mb} MB str context", f"{elapsed * 1000:.1f} ms", "-", "-")
    target = "<= 0.2x" if size_mb == 500 else "-"
    report(
        f"  extra peak RSS for the {size_mb} MB context",
        f"{extra / 1e6:.1f} MB ({extra / size:.2f}x)",
        target,
        "about 1.9x",
    )


def bench_log_size(iterations: int, context_mb: int) -> None:
    context = "line of text\n" * (context_mb * 1_000_000 // 13)
    responses = ["```repl\nprint(len(context))\nchunk = context[:1000]\n```"] * (iterations - 1) + [
        ANSWER
    ]
    with tempfile.TemporaryDirectory() as tmp:
        logger = RLMLogger(log_dir=tmp)
        rlm = RLM(
            backend="scripted",
            backend_kwargs={"responses": responses},
            max_iterations=iterations,
            logger=logger,
        )
        rlm.completion(context)
        size = os.path.getsize(logger.log_file_path)
    report(
        f"log bytes, {iterations} iterations over a {context_mb} MB context",
        f"{size / 1e3:,.1f} KB",
        "<= 1 MB",
        "220 MB",
    )


def bench_frame(size_mb: int) -> None:
    payload = {"prompt": "p" * (size_mb * 1_000_000)}
    frame = encode_frame(payload)
    a, b = socket.socketpair()
    try:
        sender = threading.Thread(target=a.sendall, args=(frame,))
        start = time.perf_counter()
        sender.start()
        data = socket_recv(b)
        elapsed = time.perf_counter() - start
        sender.join()
    finally:
        a.close()
        b.close()
    assert len(data["prompt"]) == size_mb * 1_000_000
    report(f"receive and decode a {size_mb} MB frame", f"{elapsed:.3f} s", "<= 1 s", "21 s")


def bench_verbose(size_mb: int) -> None:
    stdout = ("some program output, line after line\n" * (size_mb * 1_000_000 // 37))[
        : size_mb * 1_000_000
    ]
    block = CodeBlock(
        code="print(stuff)",
        result=REPLResult(stdout=stdout, stderr="", locals={}, execution_time=0.1),
    )
    printer = VerbosePrinter(enabled=True, console=Console(file=io.StringIO(), width=120))
    start = time.perf_counter()
    printer.print_code_execution(block)
    elapsed = time.perf_counter() - start
    report(f"verbose rendering of {size_mb} MB of stdout", f"{elapsed:.3f} s", "<= 0.2 s", "8.4 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument(
        "--only", help="comma-separated figures: " + ",".join(_FIGURES) + " (default: all)"
    )
    args = parser.parse_args()
    wanted = args.only.split(",") if args.only else list(_FIGURES)
    unknown = [name for name in wanted if name not in _FIGURES]
    if unknown:
        parser.error(f"unknown figures {unknown}; choose from {list(_FIGURES)}")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    for name in wanted:
        _FIGURES[name](args.quick)
    print(json.dumps({"maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))


#: The figures, in order: name -> run(quick).
_FIGURES = {
    "llm_query": lambda quick: bench_llm_query_rate(500 if quick else 1000, 5 if quick else 15),
    "batched": lambda quick: [bench_batched(200 if quick else 1000, c) for c in (16, 64)],
    "adaptive": lambda quick: bench_batched_adaptive(200 if quick else 1000),
    "fixed": lambda quick: bench_fixed_cost(5 if quick else 30),
    "iteration": lambda quick: bench_per_iteration(20),
    "child": lambda quick: bench_child_rlm(20 if quick else 100),
    "memory": lambda quick: [bench_context_memory(s) for s in ((10,) if quick else (100, 500))],
    "log": lambda quick: bench_log_size(10, 10),
    "frame": lambda quick: bench_frame(10 if quick else 100),
    "verbose": lambda quick: bench_verbose(10),
}


if __name__ == "__main__":
    main()
