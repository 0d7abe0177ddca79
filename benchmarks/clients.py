"""Per-call overhead of the provider clients, against loopback stubs (no model time).

Prints, per backend, the mean wall time of one sync call and of 64 concurrent
async calls through the real SDK to a stub server, and the cost of pricing a
call from the bundled table. Run: python benchmarks/clients.py
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlm.clients import get_client  # noqa: E402
from rlm.clients.base_lm import Generation  # noqa: E402
from rlm.clients.pricing import PriceBook  # noqa: E402
from tests.stubs import StubServer, anthropic_messages, gemini_generate, openai_chat  # noqa: E402

CASES = {
    "openai": (
        openai_chat(),
        lambda u: {"model_name": "gpt-4o-mini", "base_url": f"{u}/v1", "api_key": "k"},
    ),
    "azure_openai": (
        openai_chat(),
        lambda u: {
            "model_name": "d",
            "azure_endpoint": u,
            "api_version": "2024-10-21",
            "api_key": "k",
        },
    ),
    "anthropic": (
        anthropic_messages(),
        lambda u: {"model_name": "claude-sonnet-4-5", "base_url": u, "api_key": "k"},
    ),
    "gemini": (
        gemini_generate(),
        lambda u: {"model_name": "gemini-2.5-flash", "base_url": u, "api_key": "k"},
    ),
    "litellm": (
        openai_chat(),
        lambda u: {"model_name": "openai/gpt-4o-mini", "api_base": f"{u}/v1", "api_key": "k"},
    ),
    "portkey": (
        openai_chat(),
        lambda u: {"model_name": "gpt-4o-mini", "base_url": f"{u}/v1", "api_key": "k"},
    ),
}


def main() -> None:
    print(f"{'backend':<14}{'sync call (ms)':>16}{'64 async (ms/call)':>20}")
    for backend, (responder, kwargs) in CASES.items():
        with StubServer(responder) as stub:
            client = get_client(backend, kwargs(stub.url))
            client.generate("warm up")
            n = 50
            start = time.perf_counter()
            for _ in range(n):
                client.generate("hi")
            sync_ms = (time.perf_counter() - start) / n * 1000

            async def batch(c=client) -> float:
                start = time.perf_counter()
                await asyncio.gather(*(c.agenerate("hi") for _ in range(64)))
                return (time.perf_counter() - start) / 64 * 1000

            async_ms = asyncio.run(batch())
        print(f"{backend:<14}{sync_ms:>16.2f}{async_ms:>20.2f}")
    book = PriceBook(None, "anthropic")
    generation = Generation("x", "claude-sonnet-4-5", 120_000, 800, 100_000, None, 2_000)
    n = 2000
    start = time.perf_counter()
    for _ in range(n):
        book.cost(generation)
    print(
        f"pricing one call from the genai-prices table: {(time.perf_counter() - start) / n * 1e6:.1f} us"
    )


if __name__ == "__main__":
    main()
