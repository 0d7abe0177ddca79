"""Reading model responses: ```repl blocks and final answers; formatting REPL output for the model."""

from __future__ import annotations

import ast
import re
import textwrap
from typing import TYPE_CHECKING, Any

from rlm.datatypes import REPLResult, RLMIteration
from rlm.utils.text import truncate_middle

if TYPE_CHECKING:
    from rlm.environments.base_env import BaseEnv

_OPEN_FENCE = re.compile(r"^[ \t]*```[ \t]*repl[ \t]*$", re.IGNORECASE | re.MULTILINE)
_ANY_FENCE_OPEN = re.compile(r"^[ \t]*```[^\n`]*$", re.MULTILINE)
_CLOSE_FENCE = re.compile(r"^[ \t]*```[ \t]*$", re.MULTILINE)
_FINAL_START = re.compile(r"^[ \t]*(FINAL_VAR|FINAL)\(", re.MULTILINE)


def _normalise(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _clean(code: str) -> str:
    return textwrap.dedent(code).strip("\n").rstrip()


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    return True


def _repl_spans(text: str) -> list[tuple[int, int, str]]:
    """(start, end, code) of every ```repl block in normalised ``text``.

    A block ends at the first bare closing fence after which the code parses;
    that way a fence inside a string literal does not cut a well-formed block
    short. If no candidate parses (the code has a real syntax error) the first
    closing fence ends the block, so the error is reported when it runs.
    """
    spans: list[tuple[int, int, str]] = []
    pos = 0
    while True:
        opening = _OPEN_FENCE.search(text, pos)
        if opening is None:
            return spans
        body_start = opening.end() + 1
        body_start = min(body_start, len(text))
        closings = list(_CLOSE_FENCE.finditer(text, body_start))
        if not closings:
            return spans  # an unterminated block is not run
        chosen = closings[0]
        for candidate in closings if len(closings) > 1 else ():  # one: it ends the block
            if _parses(_clean(text[body_start : candidate.start()])):
                chosen = candidate
                break
        spans.append((opening.start(), chosen.end(), _clean(text[body_start : chosen.start()])))
        pos = chosen.end()


def find_code_blocks(text: str) -> list[str]:
    """The code of every ```repl block in ``text``, in order.

    Tolerates ``REPL``/``Repl``, spaces around the language tag, CRLF line
    endings and indented fences; see :func:`_repl_spans` for fences inside strings.
    """
    if not text or "```" not in text:
        return []
    return [code for _, _, code in _repl_spans(_normalise(text))]


def _strip_fenced(text: str) -> str:
    """``text`` with every fenced region (```repl or any other) blanked out."""
    text = _normalise(text)
    out = []
    pos = 0
    for start, end, _ in _repl_spans(text):
        out.append(text[pos:start])
        pos = end
    rest = text[pos:]
    # Other fences (```python examples and the like) are not final-answer lines either.
    cleaned = []
    inside = False
    for line in rest.split("\n"):
        if _ANY_FENCE_OPEN.match(line) and not inside:
            inside = True
            continue
        if inside and _CLOSE_FENCE.match(line):
            inside = False
            continue
        if not inside:
            cleaned.append(line)
    out.append("\n".join(cleaned))
    return "\n".join(out)


def _final_argument(text: str, start: int) -> str | None:
    """The argument of FINAL(...)/FINAL_VAR(...) that opens at ``start``.

    It ends at a ``)`` that ends a line: the first one that balances the
    parentheses (so nested parentheses and multi-line answers survive, and prose
    after the answer is not swallowed), else the last one (unbalanced answers).
    """
    rest = text[start:]
    last = None
    balance, counted = 0, 0  # parentheses balance of rest[:counted]
    for match in re.finditer(r"\)[ \t]*(?:\n|$)", rest):
        piece = rest[counted : match.start()]
        balance += piece.count("(") - piece.count(")")
        counted = match.start()
        if balance == 0:
            return rest[:counted].strip()
        last = counted
    return None if last is None else rest[:last].strip()


def _final_match(prose: str, kind: str) -> str | None:
    """The argument of the first ``kind(...)`` line (``FINAL`` or ``FINAL_VAR``) in ``prose``."""
    for match in _FINAL_START.finditer(prose):
        if match.group(1) == kind:
            argument = _final_argument(prose, match.end())
            if argument is None and kind == "FINAL_VAR":
                # A name needs no balancing: ``FINAL_VAR(x) and some prose`` names x.
                closing = prose.find(")", match.end())
                argument = prose[match.end() : closing] if closing >= 0 else None
            return argument
    return None


def _resolve_final_var(environment: Any, name: str) -> str | None:
    """The text of REPL variable ``name`` in ``environment``, or None.

    Environments built on our ``BaseEnv`` (or any class defining
    ``resolve_final_var``) answer directly. Anything else -- a duck-typed
    0.1.x environment, a test double -- is asked the way rlms 0.1.1 asked:
    it runs ``print(FINAL_VAR('name'))`` and the printed text is the answer,
    unless it is empty or an error such as "Variable 'x' not found".
    """
    resolver = getattr(type(environment), "resolve_final_var", None)
    if callable(resolver):
        return environment.resolve_final_var(name)
    result = environment.execute_code(f"print(FINAL_VAR({name!r}))")
    text = str(getattr(result, "stdout", "") or "").strip()
    if not text or text.startswith("Error:"):
        return None
    if "Variable '" in text and "' not found" in text and "FINAL_VAR" in text:
        return None
    return text


def find_final_answer(text: str, environment: BaseEnv | None = None) -> str | None:
    """A final answer written in the response text (outside code), or None.

    As in rlms 0.1.1, a ``FINAL_VAR(name)`` line wins over any ``FINAL(text)``
    line, wherever each stands: it is resolved in ``environment`` (None if there
    is none or the variable does not exist, with no fall-back to ``FINAL``).
    Otherwise ``FINAL(text)`` returns the text. Both must start a line; lines
    inside code fences never count.
    """
    if not text or "FINAL" not in text:
        return None
    prose = _strip_fenced(text)
    if _FINAL_START.search(prose) is None:
        return None
    name = _final_match(prose, "FINAL_VAR")
    if name is not None:
        if environment is None:
            return None
        return _resolve_final_var(environment, name.strip().strip("\"'"))
    return _final_match(prose, "FINAL")


# ---------------------------------------------------------------------------
# Feeding results back to the model
# ---------------------------------------------------------------------------

#: Variable types that ``format_execution_result`` names (as rlms does).
_SHOWN_TYPES = (str, int, float, bool, list, dict, tuple)


def format_execution_result(result: REPLResult) -> str:
    """One block's output as the model will read it, in rlms' words: the stdout,
    the stderr and the names of the simple-typed variables, or ``No output``."""
    parts = []
    if result.stdout:
        parts.append(f"\n{result.stdout}")
    if result.stderr:
        parts.append(f"\n{result.stderr}")
    names = [
        name
        for name, value in result.locals.items()
        if not name.startswith("_") and isinstance(value, _SHOWN_TYPES)
    ]
    if names:
        parts.append(f"REPL variables: {names}\n")
    return "\n\n".join(parts) if parts else "No output"


def format_iteration(
    iteration: RLMIteration, max_character_length: int = 20000
) -> list[dict[str, str]]:
    """The messages one iteration adds to the history: the model's response, then
    one user message with the output of every block (each cut to about
    ``max_character_length``, keeping its head and tail).

    A block whose code does not appear in the response (an iteration built by
    hand, as 0.1.x code does) is shown with its code, as rlms 0.1.1 did; code the
    model wrote in its response is not echoed back, as in rlms 0.1.3.
    """
    messages = [{"role": "assistant", "content": iteration.response}]
    blocks = iteration.code_blocks
    response = iteration.response or ""
    parts = []
    for i, block in enumerate(blocks, start=1):
        output = truncate_middle(format_execution_result(block.result), max_character_length)
        header = f"REPL output (block {i}):" if len(blocks) > 1 else "REPL output:"
        if block.code and block.code.strip() not in response:
            header = f"Code executed:\n```python\n{block.code}\n```\n\n{header}"
        parts.append(f"{header}\n{output}")
    if parts:
        messages.append({"role": "user", "content": "\n\n".join(parts)})
    return messages


def convert_context_for_repl(context: Any) -> tuple[Any, str | None]:
    """Kept for code written against 0.1.x: ``(data, text)`` views of a context."""
    if isinstance(context, str):
        return None, context
    if (
        isinstance(context, list)
        and context
        and isinstance(context[0], dict)
        and "content" in context[0]
    ):
        return [m.get("content", "") for m in context], None
    return context, None
