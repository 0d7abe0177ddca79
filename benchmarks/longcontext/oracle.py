"""The oracle: a scripted model that solves every task through the RLM loop.

It reads requests the way a model reads them (messages in, text out) and knows only
the generators' grammar, not the answers:

* ``root_reply(messages)``, a root turn of an RLM loop (the first message is a system
  prompt): on the first turn it writes one ```repl block, the source of ``solve.py``
  followed by ``result = solve(context, PLAN, llm_query_batched)``, where ``PLAN`` is
  read from the question; on any later turn it submits ``result`` through the REPL's
  ``answer`` dict (the protocol rlms 0.1.3 and ours share). The search runs in the
  REPL on the real context and the reading goes through sub-calls.
* ``plain_reply(messages)``, any other call: a labelling prompt from the REPL gets one
  ``N: topic`` line per message it holds (a perfect reader of the message templates);
  a prompt that holds a benchmark question (the DIRECT arm) is answered from the text
  in the prompt alone, so a context cut to the window loses what was cut.

Both take only the messages, so the same functions serve ``ScriptedLM`` in-process and
an OpenAI-compatible scripted server (the rlms arm, in tests).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from benchmarks.longcontext import solve as solver
from benchmarks.longcontext.tasks import (
    HEADQUARTERED,
    LEADS,
    MESSAGE_RE,
    NEEDLE,
    QUESTIONS,
    RUN_BY,
    TOPIC_NAMES,
    WORKS_FOR,
    template_regex,
    topic_of,
)

SOLVER_SOURCE = Path(solver.__file__).read_text(encoding="utf-8")

_PERSON = r"[A-Z][a-z]+ [A-Z][a-z]+"
_COMPANY = r"[A-Z][a-z]+ [A-Z][a-z]+"
_PROJECT = r"[A-Z][a-z]+-\d+"
_CITY = r"[A-Z][a-z]+"
_QUESTION_RES = {
    key: re.compile(
        template_regex(template, person=_PERSON, name=r"[A-Z][a-z]+", x=r"[a-z]+", y=r"[a-z]+")
    )
    for key, template in QUESTIONS.items()
}


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) if isinstance(p, dict) else str(p) for p in content)
    return "" if content is None else str(content)


def plan_of(text: str) -> dict[str, Any] | None:
    """What the benchmark question in ``text`` asks, as a ``solve.solve`` plan (None if
    ``text`` holds no benchmark question)."""
    for key, rx in _QUESTION_RES.items():
        match = rx.search(text)
        if match is None:
            continue
        groups = match.groups()
        if key == "niah":
            pattern = template_regex(NEEDLE, fixed={"name": groups[0]}, code=r"\d{4}-[A-Z]{2}")
            return {"solver": "fact", "pattern": pattern}
        if key in ("multihop2", "multihop3"):
            hq = template_regex(HEADQUARTERED, raw={"company": "{x}"}, city=_CITY)
            if key == "multihop2":
                steps = [template_regex(WORKS_FOR, raw={"person": "{x}"}, company=_COMPANY)]
            else:
                steps = [
                    template_regex(LEADS, raw={"person": "{x}"}, project=_PROJECT),
                    template_regex(RUN_BY, raw={"project": "{x}"}, company=_COMPANY),
                ]
            return {"solver": "chain", "start": groups[0], "patterns": [*steps, hq]}
        plan: dict[str, Any] = {"topics": list(TOPIC_NAMES)}
        plan.update(zip(("x", "y"), groups, strict=False))
        if key.startswith("pairs_"):
            return {"solver": "pairs", "condition": key.removeprefix("pairs_"), **plan}
        return {"solver": "topics", "question": key, **plan}
    return None


#: The second turn: submit what the first turn's code computed.
SUBMIT = '```repl\nanswer["content"] = result\nanswer["ready"] = True\n```'


def root_code(plan: dict[str, Any]) -> str:
    """The REPL code that solves ``plan``: ``solve.py`` and one call of it."""
    return f"{SOLVER_SOURCE}\n\nresult = solve(context, {plan!r}, llm_query_batched)\nprint(result)"


def root_reply(messages: list[dict[str, Any]]) -> str:
    """A root turn (see the module docstring)."""
    if any(m.get("role") == "assistant" for m in messages):
        return SUBMIT
    plan = plan_of("\n".join(_text(m.get("content")) for m in messages if m.get("role") == "user"))
    if plan is None:
        return "I cannot find a question I know in this conversation."
    return f"```repl\n{root_code(plan)}\n```"


def label_reply(prompt: str) -> str:
    """``N: topic`` for every message line in ``prompt`` (what a perfect reader says)."""
    lines = []
    for match in MESSAGE_RE.finditer(prompt):
        topic = topic_of(match.group(4))
        if topic is not None:
            lines.append(f"{match.group(1)}: {topic}")
    return "\n".join(lines) or "I see no customer messages here."


def plain_reply(messages: list[dict[str, Any]]) -> str:
    """A call outside a root loop (see the module docstring)."""
    prompt = "\n".join(_text(m.get("content")) for m in messages)
    plan = plan_of(prompt)
    if plan is None:
        return label_reply(prompt)
    return solver.solve(prompt, plan, lambda prompts: [label_reply(p) for p in prompts])


def scripted_reply(messages: list[dict[str, Any]]) -> str:
    """Either kind of call, told apart as ``ScriptedLM`` does (root calls open with a
    system message)."""
    if messages and messages[0].get("role") == "system":
        return root_reply(messages)
    return plain_reply(messages)
