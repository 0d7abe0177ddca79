"""Persistence: one REPL across several completions (a conversation over growing data).

    python examples/persistence.py

With ``persistent=True`` the REPL survives between ``completion()`` calls: each new
prompt is added as ``context_1``, ``context_2``... (``context`` stays the first), earlier
answers are kept as ``history_0``..., and variables the model defined stay defined.
Offline on the scripted model. ``close()`` (or a ``with`` block) releases the REPL.
"""

from __future__ import annotations

from rlm import RLM

SCRIPT = [
    # First completion: remember a running total.
    "```repl\n"
    "total = sum(int(x) for x in context.split())\n"
    "answer.update(content=str(total), ready=True)\n"
    "```",
    # Second completion: the new batch is context_1; `total` is still defined.
    "```repl\n"
    "total += sum(int(x) for x in context_1.split())\n"
    "answer.update(content=f'{total} (over {len(history_0)} earlier messages)', ready=True)\n"
    "```",
]


def main() -> None:
    with RLM(backend="scripted", backend_kwargs={"responses": SCRIPT}, persistent=True) as rlm:
        first = rlm.completion("1 2 3 4", root_prompt="Sum the numbers.")
        print("after the first batch:", first.response)
        second = rlm.completion("10 20", root_prompt="Add this batch to the total.")
        print("after the second batch:", second.response)


if __name__ == "__main__":
    main()
