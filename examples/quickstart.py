"""Quickstart: one RLM completion over a context far larger than the model's window.

    python examples/quickstart.py
    python examples/quickstart.py --write-ledger ledger.txt   # only write the context file

Uses OpenAI when OPENAI_API_KEY is set (model from $RLM_MODEL, default
gpt-4o-mini); otherwise the embedded local model (Qwen2.5-Coder-1.5B through
llama.cpp, fetched and verified on first use, about 1.1 GB), so it runs
offline with no key at all.
"""

from __future__ import annotations

import os
import random
import time

from rlm import RLM
from rlm.logger import RLMLogger


def build_context(entries: int = 3000) -> str:
    """A long, boring shipping ledger with one line that matters."""
    rng = random.Random(2026)
    cities = ["Lisbon", "Osaka", "Quito", "Tallinn", "Accra", "Perth", "Bergen", "Lima", "Hanoi"]
    goods = ["bolts", "copper wire", "glass", "rice", "timber", "paper", "olive oil", "resin"]
    lines = [
        f"Shipment {i:05d}: {rng.randint(2, 90)} crates of {rng.choice(goods)} "
        f"from {rng.choice(cities)} to {rng.choice(cities)}, status {rng.choice(['sent', 'held', 'delivered'])}."
        for i in range(entries)
    ]
    lines.insert(2217, "Shipment 02217: the harbour master password for pier nine is gannet-4471.")
    return "\n".join(lines)


def choose_backend() -> tuple[str, dict]:
    if os.environ.get("OPENAI_API_KEY"):
        return "openai", {"model_name": os.environ.get("RLM_MODEL", "gpt-4o-mini")}
    from rlm.local_model import fetch_model

    path = fetch_model()  # downloads and verifies once, then returns at once
    return "llama_cpp", {
        "model_path": str(path),
        "sampling_args": {"temperature": 0, "max_tokens": 512},
    }


def main() -> None:
    import sys

    if len(sys.argv) == 3 and sys.argv[1] == "--write-ledger":
        # The file the README's `rlm run ... --context ledger.txt` example reads.
        with open(sys.argv[2], "w", encoding="utf-8") as out:
            out.write(build_context() + "\n")
        print(f"wrote {sys.argv[2]}")
        return
    backend, backend_kwargs = choose_backend()
    context = build_context()
    question = "What is the harbour master password for pier nine?"
    print(
        f"backend: {backend}; context: {len(context):,} characters (about {len(context) // 4:,} tokens)"
    )

    rlm = RLM(
        backend=backend,
        backend_kwargs=backend_kwargs,
        max_iterations=10,
        logger=RLMLogger(log_dir="logs"),
        verbose=True,
    )
    start = time.perf_counter()
    result = rlm.completion(context, root_prompt=question)
    usage = result.usage_summary
    print(f"\nQ: {question}\nA: {result.response}")
    print(
        f"{time.perf_counter() - start:.1f}s, {usage.total_calls} model calls, "
        f"{usage.total_input_tokens:,} input + {usage.total_output_tokens:,} output tokens; "
        f"trajectory in {rlm.logger.log_file_path}"
    )


if __name__ == "__main__":
    main()
