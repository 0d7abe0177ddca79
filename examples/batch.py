"""Batch: one RLM over a dataset, resumable, with ``RLM.batch``.

    python examples/batch.py

Each item is ``{"id", "context" or "context_file", "question", ...}``; results are
appended to a JSON-lines file one item at a time, so running the same batch again skips
what is already there (a crash or Ctrl-C loses nothing finished). The same runs from the
shell as ``rlm batch items.jsonl -o results.jsonl``, and on a Ray cluster with
``--engine ray``. Offline on the scripted model.
"""

from __future__ import annotations

import json
from pathlib import Path

from rlm import RLM

COUNT = (
    "```repl\nn = sum(1 for l in context.splitlines() if 'ERROR' in l)\n"
    "answer.update(content=str(n), ready=True)\n```"
)

items = [
    {"id": f"log-{k}", "context": "\n".join(["ok"] * 5 + ["ERROR disk"] * k), "question": "errors?"}
    for k in range(5)
]
output = Path("results.jsonl")
output.unlink(missing_ok=True)
rlm = RLM(backend="scripted", backend_kwargs={"responses": lambda messages: COUNT})

first = rlm.batch(items[:3], output)  # as if the run had stopped after three items
print(f"first run: {first.done} done, {first.calls} model calls")
second = rlm.batch(items, output)  # the same batch again: only the missing items run
print(f"second run: {second.ran} run now, {second.skipped} already in the output")
answers = {r["id"]: r["response"] for r in map(json.loads, output.read_text().splitlines())}
print("answers:", ", ".join(f"{k}={answers[k]}" for k in sorted(answers)))
