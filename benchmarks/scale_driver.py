"""One measurement of benchmarks/scale.py, in a process of its own.

    python benchmarks/scale_driver.py --ours CASE_JSON     # this repository's rlm
    /path/to/rlms-venv/bin/python scale_driver.py CASE_JSON  # the installed rlms package

It imports whichever ``rlm`` the interpreter has (``--ours`` puts this repository
first on ``sys.path``; without it the repository is never on the path, so an
``rlms`` venv imports rlms), runs the case once and prints one line,
``SCALE_RESULT {json}``. Both packages are driven through the same ``RLM(...)``
calls; only the model differs in how it is plugged in: ours is the ``scripted``
backend, rlms gets a small client of the same behaviour through its
``rlm.core.rlm.get_client`` seam. Standard library only, so it runs in either venv.

Cases (``kind``): ``context``, ``iterations``, ``batch``, ``async``, ``tree``; see
``CASES`` below and benchmarks/scale.py, which builds them.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import os
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

OURS = "--ours" in sys.argv[1:]
if OURS:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

Root = Callable[[list], str]

# ---------------------------------------------------------------------------
# The model, plugged into either package
# ---------------------------------------------------------------------------


def _assistant_turns(messages: list) -> int:
    return sum(1 for m in messages if isinstance(m, dict) and m.get("role") == "assistant")


def make_rlm(root: Root, sub: Callable[[Any], str] | None, delay: float = 0.0, **kwargs: Any):
    """An ``RLM`` whose root model answers ``root(messages)`` and whose sub-model answers
    ``sub(prompt)`` (``None``: an instant constant ``"ok"``), each call after ``delay`` s."""
    from rlm import RLM

    if OURS:
        # A constant iterator, not a callable: the scripted client runs callables in a
        # worker thread on its async path, which would add a hop per batched prompt.
        subs: Any = itertools.repeat("ok") if sub is None else sub
        backend_kwargs = {"responses": root, "sub_responses": subs, "delay": delay}
        return RLM(backend="scripted", backend_kwargs=backend_kwargs, **kwargs)
    _install_rlms_client(root, sub or (lambda prompt: "ok"), delay)
    return RLM(backend="openai", backend_kwargs={"model_name": "scripted"}, **kwargs)


def _install_rlms_client(root: Root, sub: Callable[[Any], str], delay: float) -> None:
    import rlm.core.rlm as core
    from rlm.clients.base_lm import BaseLM
    from rlm.core.types import ModelUsageSummary, UsageSummary

    class ScriptedClient(BaseLM):
        """rlms' client interface, answering like ours: a list starting with a system
        message is a root call, anything else a sub-call."""

        def __init__(self) -> None:
            super().__init__(model_name="scripted")
            self._calls = 0
            self._lock = threading.Lock()

        def _answer(self, prompt: Any) -> str:
            with self._lock:
                self._calls += 1
            is_root = isinstance(prompt, list) and prompt and prompt[0].get("role") == "system"
            return root(prompt) if is_root else sub(prompt)

        def completion(self, prompt: Any, model: str | None = None) -> str:
            if delay:
                time.sleep(delay)
            return self._answer(prompt)

        async def acompletion(self, prompt: Any, model: str | None = None) -> str:
            if delay:
                await asyncio.sleep(delay)
            return self._answer(prompt)

        def get_usage_summary(self) -> Any:
            return UsageSummary({"scripted": ModelUsageSummary(self._calls, 0, 0)})

        def get_last_usage(self) -> Any:
            return ModelUsageSummary(1, 0, 0)

    core.get_client = lambda backend, backend_kwargs: ScriptedClient()


def package() -> dict[str, str]:
    import rlm

    try:
        from importlib.metadata import version

        rlms_version = version("rlms") if not OURS else None
    except Exception:
        rlms_version = None
    return {"file": rlm.__file__, "rlms_version": rlms_version or ""}


# ---------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------


def peak_rss() -> int:
    """This process's peak resident set so far, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def children_peak_rss() -> int:
    """The largest peak of any finished child process (a subprocess REPL's worker)."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024


def live_threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def live_sockets() -> int:
    count = 0
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return -1
    for name in names:
        try:
            if os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                count += 1
        except OSError:
            pass
    return count


_ATOMS = (int, float, bool, complex, type(None))


def deep_size(root: Any) -> int:
    """Bytes held by ``root`` and everything it reaches through containers and instance
    attributes, each object counted once (modules, classes and functions are not)."""
    seen: set[int] = set()
    stack = [root]
    total = 0
    skip = (type, type(sys), type(deep_size), type(len))
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, skip):
            continue
        seen.add(id(obj))
        try:
            total += sys.getsizeof(obj)
        except TypeError:
            continue
        if isinstance(obj, (str, bytes, bytearray) + _ATOMS):
            continue
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        attrs = getattr(obj, "__dict__", None)
        if isinstance(attrs, dict):
            stack.append(attrs)
        for slot in getattr(type(obj), "__slots__", ()) or ():
            if isinstance(slot, str) and hasattr(obj, slot):
                stack.append(getattr(obj, slot))
    return total


def log_bytes(folder: str) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*.jsonl"))


# ---------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------


def case_context(case: dict[str, Any]) -> dict[str, Any]:
    """One completion over a ``size``-byte str context that answers ``len(context)``."""
    size = int(case["size"])
    line = "abcdefghijkl\n"
    context = line * (size // len(line))  # one allocation: no temporary in the baseline
    answer = '```repl\nanswer["content"] = str(len(context))\nanswer["ready"] = True\n```'
    rlm = make_rlm(lambda m: answer, None, environment=case["environment"])
    gc.collect()
    base = peak_rss()
    start = time.perf_counter()
    result = rlm.completion(context)
    elapsed = time.perf_counter() - start
    assert result.response == str(len(context)), result.response
    return {
        "time": elapsed,
        "host_extra": max(0, peak_rss() - base),
        "worker_peak": children_peak_rss(),
        "context_bytes": len(context),
    }


def case_iterations(case: dict[str, Any]) -> dict[str, Any]:
    """``n`` iterations of a cell printing ``output`` bytes, then the answer. ``loop`` is
    the time from the first root-model call to the last (the ``n - 1`` iterations between
    them, their logging included), which leaves out what a completion costs once: rlms
    0.1.3 spends about 0.5 s stopping its handler (the socket server's poll interval)."""
    n, output = int(case["n"]), int(case["output"])
    cell = f'```repl\nprint("x" * {output - 1})\n```'
    final = case["answer"]

    calls: list[float] = []

    def root(messages: list) -> str:
        calls.append(time.perf_counter())
        return cell if _assistant_turns(messages) < n - 1 else final

    with tempfile.TemporaryDirectory() as folder:
        logger = None
        if case.get("logger"):
            from rlm.logger import RLMLogger

            options = {"format": "compact"} if case["logger"] == "compact" else {}
            logger = RLMLogger(log_dir=folder, **options)
        rlm = make_rlm(root, None, max_iterations=n, logger=logger)
        start = time.perf_counter()
        result = rlm.completion("a small context")
        elapsed = time.perf_counter() - start
        assert result.response == "done", result.response
        iterations = len(result.metadata["iterations"]) if logger else n
        assert iterations == n, iterations
        del result
        gc.collect()
        loop = calls[-1] - calls[0]  # n - 1 whole iterations, without set-up and tear-down
        return {
            "time": elapsed,
            "loop": loop,
            "per_iteration": loop / (n - 1),
            "log_bytes": log_bytes(folder),
            "held": deep_size(logger) if logger is not None else 0,
        }


def case_batch(case: dict[str, Any]) -> dict[str, Any]:
    """One cell timing ``llm_query_batched`` over ``n`` prompts to an instant sub-model, in
    batches of at most ``chunk`` prompts (ours refuses a batch of more than 10,000 prompts:
    ``LMHandler(max_batch_size=...)``; both packages get the same cell)."""
    n, chunk = int(case["n"]), int(case.get("chunk", case["n"]))
    cell = (
        "```repl\nimport time\nprompts = ['q%d' % i for i in range("
        f"{n})]\nt0 = time.perf_counter()\nout = []\nfor i in range(0, {n}, {chunk}):\n"
        f"    out += llm_query_batched(prompts[i:i + {chunk}])\n"
        "elapsed = time.perf_counter() - t0\n"
        "good = sum(1 for o in out if o == 'ok')\n"
        'answer["content"] = f"{elapsed} {good}"\nanswer["ready"] = True\n```'
    )
    result = make_rlm(lambda m: cell, None).completion("ctx")
    elapsed, good = result.response.split()
    return {"time": float(elapsed), "correct": int(good), "n": n}


def case_async(case: dict[str, Any]) -> dict[str, Any]:
    """``n`` completions at once against a model that takes ``delay`` s per call, through
    ``acompletion()`` on one event loop or ``completion()`` in one thread each."""
    n, delay, mode = int(case["n"]), float(case["delay"]), case["mode"]
    answer = '```repl\nanswer["content"] = str(context)\nanswer["ready"] = True\n```'
    rlms_ = [make_rlm(lambda m: answer, None, delay=delay) for _ in range(n)]
    contexts = [f"item-{i}" for i in range(n)]
    responses: list[str | None] = [None] * n
    start = time.perf_counter()
    if mode == "acompletion":

        async def all_of_them() -> list[Any]:
            return await asyncio.gather(
                *(r.acompletion(c) for r, c in zip(rlms_, contexts, strict=True))
            )

        responses = [r.response for r in asyncio.run(all_of_them())]
    else:

        def one(i: int) -> None:
            responses[i] = rlms_[i].completion(contexts[i]).response

        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    elapsed = time.perf_counter() - start
    correct = sum(1 for r, c in zip(responses, contexts, strict=True) if r == c)
    return {"time": elapsed, "correct": correct, "n": n}


def case_tree(case: dict[str, Any]) -> dict[str, Any]:
    """A tree of children: every RLM above ``depth`` asks ``fanout`` children, then
    answers; at ``depth`` a child is a plain model call. ``mode`` ``sequential`` asks them
    in turn with ``rlm_query``, ``batched`` all at once with ``rlm_query_batched``. Threads
    and sockets of the process are counted at every model call (the deepest calls see the
    whole live path) and by a sampler every millisecond (its own thread not counted)."""
    depth, fanout = int(case["depth"]), int(case["fanout"])
    if case.get("mode") == "batched":
        spawn = f"```repl\nr = rlm_query_batched(['child %d' % i for i in range({fanout})])\n```"
    else:
        spawn = f"```repl\nfor i in range({fanout}):\n    r = rlm_query('child %d' % i)\n```"
    final = case["answer"]
    peaks = {"threads": 0, "sockets": 0, "root_calls": 0, "leaf_calls": 0}
    lock = threading.Lock()

    def sample(kind: str | None, own: int = 0) -> None:
        threads, sockets = live_threads() - own, live_sockets()
        with lock:
            if kind is not None:
                peaks[kind] += 1
            peaks["threads"] = max(peaks["threads"], threads)
            peaks["sockets"] = max(peaks["sockets"], sockets)

    done = threading.Event()

    def sampler() -> None:
        while not done.wait(0.001):
            sample(None, own=1)

    def root(messages: list) -> str:
        sample("root_calls")
        return spawn if _assistant_turns(messages) == 0 else final

    def leaf(prompt: Any) -> str:
        sample("leaf_calls")
        return "leaf"

    rlm = make_rlm(root, leaf, max_depth=depth, max_iterations=3)
    base_threads, base_sockets = live_threads(), live_sockets()
    watcher = threading.Thread(target=sampler, daemon=True)
    watcher.start()
    start = time.perf_counter()
    try:
        result = rlm.completion("ctx")
    finally:
        elapsed = time.perf_counter() - start
        done.set()
        watcher.join()
    assert result.response == "done", result.response
    return {
        "time": elapsed,
        "peak_threads": peaks["threads"],
        "peak_sockets": peaks["sockets"],
        "base_threads": base_threads,
        "base_sockets": base_sockets,
        "root_calls": peaks["root_calls"],
        "leaf_calls": peaks["leaf_calls"],
    }


CASES = {
    "context": case_context,
    "iterations": case_iterations,
    "batch": case_batch,
    "async": case_async,
    "tree": case_tree,
}


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--ours"]
    if len(args) != 1:
        sys.exit("usage: scale_driver.py [--ours] CASE_JSON")
    case = json.loads(args[0])
    if case["kind"] == "package":
        out: dict[str, Any] = package()
    else:
        out = CASES[case["kind"]](case)
    # Straight to file descriptor 1: rlms 0.1.3 swaps sys.stdout while a cell runs, and
    # completions in threads can leave it pointing at a capture buffer.
    data = ("SCALE_RESULT " + json.dumps(out) + "\n").encode()
    while data:
        data = data[os.write(1, data) :]


if __name__ == "__main__":
    main()
