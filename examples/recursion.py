"""Recursion: the root model splits a long context and hands each piece to a child RLM.

    python examples/recursion.py

``max_depth=2`` lets the root's code call ``rlm_query`` / ``rlm_query_batched``: each
call starts a child RLM with its own REPL over the piece it is given (at depth 1 they
fall back to plain ``llm_query``). Offline on the scripted model: the root splits
the report into chapters and asks a child per chapter to count its warnings; each
child answers from its own REPL.
"""

from __future__ import annotations

from rlm import RLM

ROOT = [
    "```repl\n"
    "chapters = context.split('## ')[1:]\n"
    "counts = rlm_query_batched([f'How many WARN lines? ## {c}' for c in chapters])\n"
    "print(counts)\n"
    "```",
    "```repl\nanswer['content'] = str(sum(int(c) for c in counts))\nanswer['ready'] = True\n```",
]


QUESTION = "Count the warnings across all chapters."
CHILD = (
    "```repl\n"
    "answer['content'] = str(sum(1 for l in context.splitlines() if l.startswith('WARN')))\n"
    "answer['ready'] = True\n"
    "```"
)


def main() -> None:
    root_script = iter(ROOT)
    children = []

    def respond(messages: list[dict[str, str]]) -> str:
        # The root's messages carry its question; a child's only the piece it was given.
        if QUESTION in str(messages):
            return next(root_script)
        children.append(messages)
        return CHILD

    report = "\n".join(
        f"## Chapter {n}\n" + "\n".join("WARN disk" if i % n == 0 else "ok" for i in range(6))
        for n in (1, 2, 3)
    )
    rlm = RLM(backend="scripted", backend_kwargs={"responses": respond}, max_depth=2)
    result = rlm.completion(report, root_prompt=QUESTION)
    print("warnings:", result.response)
    print("child runs:", len(children))
    print("model calls:", result.usage_summary.to_dict()["model_usage_summaries"])


if __name__ == "__main__":
    main()
