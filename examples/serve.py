"""Serve: an RLM behind the OpenAI chat-completions API, used by the official client.

    python examples/serve.py

From the shell the same server is ``rlm serve --backend openai --model-name gpt-4o-mini``
(127.0.0.1:8000 by default; ``--api-key`` is required to bind anything else). Here it runs
in a background thread on a free port with the scripted model, and the ``openai`` client
talks to it, once plainly and once streaming. See docs/serving.md.
"""

from __future__ import annotations

import openai

from rlm.serve.app import ServeConfig
from rlm.serve.runner import ServerThread

# The messages before the last user message become `context` (a list of messages); a
# single message is the context itself (a string). See docs/serving.md for the mapping.
ANSWER = (
    "```repl\ntext = context if isinstance(context, str) else "
    "' '.join(m['content'] for m in context)\nwords = len(text.split())\n"
    "answer.update(content=f'the document has {words} words', ready=True)\n```"
)
config = ServeConfig(
    rlm={"backend": "scripted", "backend_kwargs": {"responses": lambda messages: ANSWER}},
    api_key="example-key",
)
with ServerThread(config) as server:
    client = openai.OpenAI(base_url=server.url, api_key="example-key")
    document = "the quick brown fox jumps over the lazy dog " * 100
    reply = client.chat.completions.create(
        model="rlm",
        messages=[
            {"role": "user", "content": document},
            {"role": "user", "content": "How long is it?"},
        ],
    )
    print("answer:", reply.choices[0].message.content)
    print("tokens:", reply.usage.total_tokens)
    pieces = client.chat.completions.create(
        model="rlm", messages=[{"role": "user", "content": document}], stream=True
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in pieces if chunk.choices)
    print("streamed:", text)
