"""Streaming: watch a run as it happens with ``RLM.stream``.

    python examples/streaming.py

``rlm.stream(prompt, root_prompt=None)`` yields typed events (``rlm.core.events``) for the
whole run tree: iterations, root-model tokens, code cells, sub-calls, and last the root's
``run_finished`` carrying the ``RLMChatCompletion``. Offline on the scripted model.
"""

from __future__ import annotations

from rlm import RLM
from rlm.core import events as ev

SCRIPT = [
    "Counting the lines first.\n```repl\nlines = context.splitlines()\nprint(len(lines))\n```",
    "```repl\nanswer.update(content=llm_query('Summarise: ' + lines[0]), ready=True)\n```",
]

rlm = RLM(
    backend="scripted",
    backend_kwargs={"responses": SCRIPT, "sub_responses": lambda m: "a shipping manifest"},
)
context = "\n".join(f"crate {i}: 12 kg of tea" for i in range(40))
tokens = 0
for event in rlm.stream(context, root_prompt="What is this document?"):
    if isinstance(event, ev.RootToken):
        tokens += 1
    elif isinstance(event, ev.IterationStarted):
        print(f"iteration {event.iteration} started")
    elif isinstance(event, ev.CellFinished):
        print(f"cell {event.cell} printed: {event.result.stdout.strip()!r}")
    elif isinstance(event, ev.SubcallFinished):
        print(f"sub-call to {event.model} ({event.kind}) took {event.duration * 1000:.2f} ms")
    elif isinstance(event, ev.RunFinished) and event.parent_run_id is None:
        print(f"answer: {event.result.response}")
print(f"root tokens streamed: {tokens}")
