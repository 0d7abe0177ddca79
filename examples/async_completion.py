"""Async: run several completions at once with ``acompletion``.

    python examples/async_completion.py

``await rlm.acompletion(prompt, root_prompt=None)`` returns the same
``RLMChatCompletion`` as ``completion``; use one ``RLM`` per concurrent run (or one
each from a factory, as here). Cancelling the task stops its run. Offline on the
scripted model, with a 0.2 s delay per model call: three runs of two calls each take
about 0.4 s together instead of 1.2 s one after another.
"""

from __future__ import annotations

import asyncio
import time

from rlm import RLM


def make_rlm(city: str) -> RLM:
    script = [
        f"```repl\nrows = [l for l in context.splitlines() if l.startswith('{city}')]\n```",
        "```repl\nanswer.update(content=str(len(rows)), ready=True)\n```",
    ]
    return RLM(backend="scripted", backend_kwargs={"responses": script, "delay": 0.2})


async def main() -> None:
    data = "\n".join(f"{city} order {i}" for i in range(12) for city in ("Oslo", "Lima", "Pune"))
    cities = ["Oslo", "Lima", "Pune"]
    started = time.perf_counter()
    results = await asyncio.gather(
        *(
            make_rlm(city).acompletion(data, root_prompt=f"How many {city} orders?")
            for city in cities
        )
    )
    elapsed = time.perf_counter() - started
    for city, result in zip(cities, results, strict=True):
        print(f"{city}: {result.response} orders")
    print(f"three runs in {elapsed:.1f}s")


if __name__ == "__main__":
    asyncio.run(main())
