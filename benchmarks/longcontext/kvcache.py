#!/usr/bin/env python3
"""What the llama.cpp KV cache saved in a run, read from its server's log.

    python3 benchmarks/longcontext/kvcache.py OUT/llama-server.log

``llama_cpp.server`` keeps the last prompt's evaluated tokens in its slot and evaluates
only what follows the longest prefix a new prompt shares with it. For each request its
log says how many tokens matched (``N prefix-match hit, remaining M prompt tokens to
eval``) and what evaluating the rest took (``prompt eval time = T ms / M tokens``). This
script adds them up: the prompt tokens reused and evaluated, the time evaluating took,
and the time the reused tokens would have taken at the run's own measured cost per token
(an estimate of the run with reuse off: it leaves out that a longer evaluation costs more
per token, so it is a lower bound). A request whose whole prompt was cached already logs
no token count (``full prompt already cached``), so its tokens are not counted as reused.
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
        "log", type=Path, help="a llama_cpp.server log (the runner's OUT/llama-server.log)"
    )
    args = p.parse_args(argv)
    try:
        text = args.log.read_text(errors="replace")
    except OSError as exc:
        p.error(f"cannot read {args.log}: {exc.strerror}")
    t = read(text)
    if not t["requests"] or not t["reused"] + t["evaluated"]:
        print(f"{args.log}: no request timings in this log", file=sys.stderr)
        return 1
    total = t["reused"] + t["evaluated"]
    saved = t["reused"] * t["s_per_token"]
    print(f"| measure | {args.log.parent.name or args.log.name} |")
    print("|---|---:|")
    print(f"| requests | {t['requests']:,} |")
    print(f"| prompt tokens | {total:,} |")
    print(f"| reused from the slot's prefix | {t['reused']:,} ({t['reused'] / total:.0%}) |")
    print(f"| evaluated | {t['evaluated']:,} |")
    print(f"| evaluation time | {t['eval_s']:,.0f} s ({t['s_per_token'] * 1000:.1f} ms/token) |")
    print(f"| with reuse off, at least | {t['eval_s'] + saved:,.0f} s (+{saved:,.0f} s) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
