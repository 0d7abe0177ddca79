#!/usr/bin/env python3
"""What the llama.cpp KV cache saved in a run, read from its server's log.

    python3 benchmarks/longcontext/kvcache.py OUT/llama-server.log [OFF/llama-server.log]

``llama_cpp.server`` keeps the last prompt's evaluated tokens in its slot and evaluates
only what follows the longest prefix a new prompt shares with it. For each request its
log says how many tokens matched (``N prefix-match hit, remaining M prompt tokens to
eval``) and what evaluating the rest took (``prompt eval time = T ms / M tokens``). This
script adds them up: the prompt tokens reused and evaluated, the time evaluating took,
and the time the reused tokens would have taken at the run's own measured cost per token
(an estimate of the run with reuse off, and only that: on S-NIAH 4x it said 362 s where
the run with reuse off measured 324 s, since evaluating a whole prompt costs less per
token than its short tails did). A request whose whole prompt was cached already logs
no token count (``full prompt already cached``), so its tokens are not counted as reused.

Given two or more logs, it tables them side by side: a run and its twin with
``--kv-reuse off`` (whose server evaluates every prompt whole) show what reuse saved,
measured rather than estimated.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

_HIT = re.compile(r"Llama\.generate: (\d+) prefix-match hit, remaining (\d+) prompt tokens")
_EVAL = re.compile(r"prompt eval time =\s*([\d.]+) ms /\s*(\d+) tokens")


def read(text: str) -> dict[str, float]:
    """Totals over the log: requests, tokens reused and evaluated, evaluation seconds."""
    hits = [(int(a), int(b)) for a, b in _HIT.findall(text)]
    evals = [(float(ms), int(n)) for ms, n in _EVAL.findall(text)]
    reused = sum(a for a, _ in hits)
    evaluated = sum(n for _, n in evals)
    seconds = sum(ms for ms, _ in evals) / 1000
    return {
        "requests": len(evals),
        "reused": reused,
        "evaluated": evaluated,
        "eval_s": seconds,
        "s_per_token": seconds / evaluated if evaluated else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "logs",
        metavar="log",
        type=Path,
        nargs="+",
        help="a llama_cpp.server log (the runner's OUT/llama-server.log); two or more are "
        "tabled side by side, e.g. a run and its --kv-reuse off twin",
    )
    args = p.parse_args(argv)
    columns: list[tuple[str, dict[str, float]]] = []
    for log in args.logs:
        try:
            text = log.read_text(errors="replace")
        except OSError as exc:
            p.error(f"cannot read {log}: {exc.strerror}")
        t = read(text)
        if not t["requests"] or not t["reused"] + t["evaluated"]:
            print(f"{log}: no request timings in this log", file=sys.stderr)
            return 1
        columns.append((log.parent.name or log.name, t))
    print("| measure | " + " | ".join(name for name, _ in columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for label, cell in _ROWS:
        print(f"| {label} | " + " | ".join(cell(t) for _, t in columns) + " |")
    return 0


def _total(t: dict[str, float]) -> float:
    return t["reused"] + t["evaluated"]


def _saved(t: dict[str, float]) -> float:
    return t["reused"] * t["s_per_token"]


_ROWS = (
    ("requests", lambda t: f"{t['requests']:,}"),
    ("prompt tokens", lambda t: f"{_total(t):,}"),
    (
        "reused from the slot's prefix",
        lambda t: f"{t['reused']:,} ({t['reused'] / _total(t):.0%})",
    ),
    ("evaluated", lambda t: f"{t['evaluated']:,}"),
    (
        "evaluation time",
        lambda t: f"{t['eval_s']:,.0f} s ({t['s_per_token'] * 1000:.1f} ms/token)",
    ),
    (
        "with reuse off, estimated",
        lambda t: f"{t['eval_s'] + _saved(t):,.0f} s (+{_saved(t):,.0f} s)",
    ),
)


if __name__ == "__main__":
    raise SystemExit(main())
