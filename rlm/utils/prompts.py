"""The root model's prompts: the system prompt, the context description and the per-turn prompt.

Written to be followed by small local models (Qwen2.5-Coder-1.5B) as well as
frontier ones: short sentences, every REPL name described once, one worked
example, and the question repeated every turn. :data:`SMALL_MODEL_SYSTEM_PROMPT`
is the shorter one a small model gets (``RLM(small_model=...)``): about 500
tokens, so an 8k window keeps room for the history.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from rlm.datatypes import QueryMetadata

__all__ = [
    "RLM_SYSTEM_PROMPT",
    "SMALL_MODEL_SYSTEM_PROMPT",
    "ORCHESTRATOR_ADDENDUM",
    "USER_PROMPT",
    "QueryMetadata",
    "build_rlm_system_prompt",
    "build_user_prompt",
    "build_final_answer_prompt",
    "build_compaction_prompt",
    "build_after_compaction_prompt",
    "COMPACTION_NOTE",
    "build_response_format_note",
    "build_response_format_reminder",
    "build_rejected_answer_prompt",
]

RLM_SYSTEM_PROMPT = """You answer questions about a context that is too long to read at once.
The context is stored in a Python REPL in the variable `context`. You cannot see it directly: you only see what your code prints.

To run code, write it in a block that starts with ```repl and ends with ```. Example:
```repl
print(type(context), len(context))
print(context[:1000])
```
The REPL keeps your variables between blocks. Long output is cut, so print short slices, counts and search results, not the whole context.

Names you can use in the REPL:
- `context`: the input data (a string, a list or a dict).
- `llm_query(prompt, model=None) -> str`: asks a language model one question and returns its answer. That model cannot see `context` or your variables: put the text it needs inside the prompt, for example llm_query("Summarise this text:\n" + chunk). It can read a few thousand words at once.
- `llm_query_batched(prompts, model=None) -> list[str]`: asks many questions in parallel and returns the answers in the same order. Use it instead of calling llm_query in a loop.
- `rlm_query(prompt, model=None) -> str` and `rlm_query_batched(prompts, model=None) -> list[str]`: like llm_query, but each question goes to a helper that has its own REPL, for sub-tasks that need several steps.
- `SHOW_VARS() -> str`: lists the variables you have created.
- `answer`: a dict for your final answer. Set answer["content"] to the answer, then set answer["ready"] = True.
- `FINAL_VAR(x)`: submits the value of variable x as the final answer (same effect as `answer`).{custom_tools_section}

How to work:
1. Look at the context first: its type, its length, its beginning.
2. To find a fact, search the context with Python for words from the question, and print the matching lines:
```repl
matches = [line for line in context.splitlines() if "keyword" in line.lower()]
print(len(matches))
print(matches[:20])
```
3. To understand or summarise long parts, split the context into chunks, ask llm_query_batched about each chunk (with the chunk text inside each prompt), then combine the answers.
4. Read the printed output before you decide. Do not guess what the context says.
5. When the output shows the answer, submit it in a repl block:
```repl
answer["content"] = "your final answer"
answer["ready"] = True
```
You can also write FINAL(your final answer) on its own line, outside any code block."""

SMALL_MODEL_SYSTEM_PROMPT = """You answer a question about a long text. The text is in the Python variable `context`. You cannot see it: you only see what your code prints.

Write Python code in a block that starts with ```repl and ends with ```. Write one block, then stop: the REPL runs it and the next message shows you its real output. Never write the output yourself.

In the REPL:
- `context`: the text (a string; sometimes a list or a dict).
- `llm_query(prompt)`: asks a language model and returns its answer as a string. It cannot see `context` or your variables: put the text it must read inside the prompt.
- `llm_query_batched(prompts)`: asks many prompts at once; the answers come back in the same order.
- `answer`: to submit the final answer, set answer["content"] = "..." and then answer["ready"] = True.{custom_tools_section}

How to work:
1. Look at the context first:
```repl
print(len(context))
print(context[:500])
```
2. {step_2}
3. {step_3}
4. When the output shows the answer, submit it:
```repl
answer["content"] = "the answer"
answer["ready"] = True
```
Answer only from what the output shows."""

#: The small-model prompt's steps 2 and 3 (:func:`small_model_steps` picks their order).
SEARCH_STEP = """To find a fact, search for a lowercase keyword from the question, ignoring case, and print the matching lines:
```repl
hits = [line for line in context.splitlines() if "{example_keyword}" in line.lower()]
print(len(hits))
print(hits[:10])
```
If nothing matches, try another or a shorter keyword. If the line you find names another person, company or thing that the question asks about through it, search for that name next, the same way, before you answer."""

CHUNK_STEP = """To read long parts, split them into chunks and ask about each chunk, with the chunk inside the prompt:
```repl
chunks = [context[i:i + 6000] for i in range(0, len(context), 6000)]
replies = llm_query_batched(["Question: ...\\nText:\\n" + chunk for chunk in chunks])
print(replies)
```"""

TALLY_STEP = """To count or compare lines by something they do not say in words (what each one is about), ask about every line, then count the answers:
```repl
labels = llm_query_batched(["Line: " + line + "\\n\\n{ask}" for line in context.splitlines() if line.strip()])
names = [next((k for k in {names} if k in label.lower()), "other") for label in labels]
print({name: names.count(name) for name in set(names)})
```"""

#: What the tally asks about each line, after ``"Line: " + line + "\n\n"``.
TALLY_ASK = "Which one of these {kinds} is the line about?\n{options}\nAnswer with one word: the {kind}'s name."

ORCHESTRATOR_ADDENDUM = (
    "You are the orchestrator: keep your own messages short, let code and sub-calls do the "
    "reading, and build the answer from their results."
)

USER_PROMPT = "Turn {iter_1} of {max_iter}."

_DEFAULT_MAX_ITERATIONS = 30


def _describe_context(metadata: QueryMetadata) -> str:
    pieces = len(metadata.context_lengths)
    if metadata.context_type == "str":
        shape = f"a string of {metadata.context_total_length:,} characters"
    elif metadata.context_type == "bytes":
        shape = f"bytes, {metadata.context_total_length:,} in all"
    elif metadata.context_type in ("list", "dict"):
        unit = "items" if metadata.context_type == "list" else "keys"
        shape = (
            f"a {metadata.context_type} of {pieces:,} {unit}, "
            f"{metadata.context_total_length:,} characters in all"
        )
    else:
        shape = f"a {metadata.context_type} of about {metadata.context_total_length:,} characters"
    return f"The variable `context` holds {shape}."


#: Words never picked as the small-model prompt's example keyword.
_STOPWORDS = frozenset(
    [
        "what",
        "which",
        "who",
        "whom",
        "whose",
        "when",
        "where",
        "why",
        "how",
        "is",
        "are",
        "was",
        "were",
        "the",
        "a",
        "an",
        "of",
        "for",
        "to",
        "in",
        "on",
        "at",
        "by",
        "with",
        "from",
        "and",
        "or",
        "not",
        "does",
        "do",
        "did",
        "this",
        "that",
        "these",
        "those",
        "there",
        "their",
        "about",
        "into",
        "than",
        "answer",
        "only",
        "give",
        "tell",
        "name",
        "list",
        "find",
        "number",
        "many",
        "much",
    ]
)


#: A word: an apostrophe or a hyphen only inside it ("don't", "e-mail"). A quoted word
#: ('Message') once kept its closing quote, and the search for it matched nothing.
_WORD = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9]|['-](?=[A-Za-z0-9]))*")


def names_in(text: str) -> list[str]:
    """The names in ``text``, in order: runs of capitalised words (single spaces between
    them) that do not start a sentence and are not stopwords, such as ``Amara Weiss``.
    Words in capitals only (``NOTE``, ``INFO``: log levels, tags) are not names."""
    names: list[str] = []
    run: list[str] = []
    end = 0  # where the previous word ended
    for match in _WORD.finditer(text):
        word = match.group()
        i = match.start() - 1  # the last character before the word, spaces skipped
        while i >= 0 and text[i].isspace():
            i -= 1
        sentence_start = i < 0 or text[i] in ".?!:;"
        gap, end = text[end : match.start()], match.end()
        if run and gap != " ":
            names.append(" ".join(run))
            run = []
        capitalised = word[0].isupper() and not word.isupper()
        if capitalised and not sentence_start and word.lower() not in _STOPWORDS:
            run.append(word)
        elif run:
            names.append(" ".join(run))
            run = []
    if run:
        names.append(" ".join(run))
    return names


def example_keyword(question: str | None) -> str:
    """A lowercase search term from ``question`` for the small-model prompt's search
    example, so that a model which copies the example searches for what the question
    names: its longest name (:func:`names_in`: a person's, a place's), else its longest
    word that is not a stopword, else ``keyword``."""
    names = names_in(question or "")
    if names:
        return max(names, key=len).lower()
    words = _WORD.findall((question or "").lower())
    candidates = [w for w in words if w not in _STOPWORDS and len(w) > 2]
    return max(candidates, key=len) if candidates else "keyword"


#: A question that counts or compares entries ...
_COUNT_RE = re.compile(
    r"\b(?:how many|number of|count|(?:more|less|most) (?:common|frequent|often)|"
    r"the most|same frequency)\b",
    re.IGNORECASE,
)
#: ... or lists pairs of them (the tally labels each entry for these too).
_PAIRS_RE = re.compile(r"\b(?:every|each|all) pairs?\b", re.IGNORECASE)
#: A list the question gives after a colon: "The topics are: billing (payments), ...".
_LIST_START_RE = re.compile(r"\b(?:are|is|one of|among|from)\s*:\s*", re.IGNORECASE)
_OPTION_RE = re.compile(r"^(?:and |or )?([A-Za-z][\w-]*(?: [\w-]+){0,3})\s*(?:\((.*)\))?$", re.S)


def _outside_parentheses(text: str) -> Iterator[tuple[int, str]]:
    """The characters of ``text`` outside parentheses (the parentheses left out), with
    their positions."""
    depth = 0
    for i, char in enumerate(text):
        if char == "(":
            depth += 1
        elif char == ")":
            depth = max(0, depth - 1)
        elif depth == 0:
            yield i, char


def _top_level_split(text: str) -> list[str]:
    """``text`` split at commas outside parentheses, up to the first sentence end
    outside them."""
    parts, start = [], 0
    for i, char in _outside_parentheses(text):
        if char == ",":
            parts.append(text[start:i])
            start = i + 1
        elif char in ".?!\n":
            parts.append(text[start:i])
            return parts
    parts.append(text[start:])
    return parts


def _last_joint(text: str) -> int:
    """Where the last " or " / " and " outside parentheses starts in ``text``; -1 when
    there is none (``praise (compliments and thanks)`` has none)."""
    found = -1
    for i, char in _outside_parentheses(text):
        if char == " " and text.startswith((" or ", " and "), i):
            found = i
    return found


#: The plural word a list of kinds follows: "The topics are:" gives "topics".
_KIND_WORD_RE = re.compile(r"\b([A-Za-z]{3,}s)\s+are\s*:\s*$", re.IGNORECASE)
#: Plurals whose singular the rules of :func:`_singular` would get wrong.
_SAME_SINGULAR = frozenset(["news", "series", "species", "means"])
_IRREGULAR = {"movies": "movie", "cookies": "cookie", "ties": "tie", "pies": "pie"}


def _singular(word: str) -> str:
    """The singular of a plural noun, for the common English rules (``categories``,
    ``boxes``, ``statuses``, ``topics``); ``kind`` where the word is no plural it knows."""
    if word in _SAME_SINGULAR:
        return word
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("sses", "shes", "ches", "xes", "uses")):
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return "kind"


def tally_kinds(question: str | None) -> tuple[str, list[tuple[str, str]]]:
    """What a question that counts, compares or pairs entries sorts them into: the
    plural word it calls them by (``"topics"`` for ``The topics are: ...``; ``"kinds"``
    when it names none), and the kinds it lists after a colon, as ``(name, what it
    covers)``, such as ``billing (payments, charges), delivery (parcels) or praise.``.
    The list is ``[]`` for any other question, or one that gives no such list."""
    if not question or not (_COUNT_RE.search(question) or _PAIRS_RE.search(question)):
        return "kinds", []
    for start in _LIST_START_RE.finditer(question):
        parts = _top_level_split(question[start.end() :])
        if parts:  # "..., delivery (parcels) or praise": the last "or"/"and" joins two
            joint = _last_joint(parts[-1])
            if joint > 0:
                parts[-1:] = [parts[-1][:joint], parts[-1][joint:]]
        options = []
        for part in parts:
            match = _OPTION_RE.match(part.strip())
            if match is None:
                break
            options.append((match.group(1), (match.group(2) or "").strip()))
        else:
            if len(options) >= 2:
                word = _KIND_WORD_RE.search(question[: start.end()])
                return (word.group(1).lower() if word else "kinds"), options
    return "kinds", []


def counts_answer(question: str | None) -> bool:
    """Whether counts of the entries by kind answer ``question`` (a count, the most
    common kind, a comparison), and not a list of pairs."""
    return bool(question and _COUNT_RE.search(question) and not _PAIRS_RE.search(question))


def tally_options(question: str | None) -> list[tuple[str, str]]:
    """The kinds of :func:`tally_kinds` alone."""
    return tally_kinds(question)[1]


def tally_ask(question: str | None) -> str | None:
    """:data:`TALLY_ASK` for ``question``'s kinds, or None when it lists none."""
    return _ask_of(*tally_kinds(question))


def tally_plan(question: str | None) -> tuple[str | None, list[str]]:
    """The tally's prompt (:func:`tally_ask`) and the kinds' names, from one parse of
    ``question``; ``(None, [])`` when it lists no kinds."""
    kinds, options = tally_kinds(question)
    return _ask_of(kinds, options), [name for name, _ in options]


def _ask_of(kinds: str, options: list[tuple[str, str]]) -> str | None:
    if not options:
        return None
    # Each kind as the question wrote it, "name (about)": the root model copies the
    # example's text and, given "name: about", it ended the last kind as the question did,
    # with ")." or ".", and lost the line after it (OOLONG seeds 0 and 1).
    listed = "\n".join(f"- {name} ({about})" if about else f"- {name}" for name, about in options)
    ask = TALLY_ASK.replace("{kinds}", kinds).replace("{kind}", _singular(kinds))
    return ask.replace("{options}", listed)


def small_model_steps(question: str | None) -> tuple[str, str]:
    """Steps 2 and 3 of :data:`SMALL_MODEL_SYSTEM_PROMPT`, filled for ``question``: a
    small model copies the examples, so they carry the question's own words. A question
    that counts entries by kinds it lists gets the per-line tally first; any other gets
    the search first, then chunked reading."""
    search = SEARCH_STEP.replace("{example_keyword}", example_keyword(question))
    ask, names = tally_plan(question)
    if ask is None:
        return search, CHUNK_STEP
    # The example is code: the text goes in as the body of a "..." string literal, and
    # the names (each answer counts as the first one it holds) as a list literal.
    listed = json.dumps([name.lower() for name in names], ensure_ascii=False)
    step = TALLY_STEP.replace("{names}", listed)
    return step.replace("{ask}", json.dumps(ask, ensure_ascii=False)[1:-1]), search


def fill_small_model_prompt(text: str, question: str | None) -> str:
    """``text`` (built from :data:`SMALL_MODEL_SYSTEM_PROMPT`) with its steps for
    ``question``."""
    step_2, step_3 = small_model_steps(question)
    return text.replace("{step_2}", step_2, 1).replace("{step_3}", step_3, 1)


def _fill_system_prompt(system_prompt: str, section: str) -> str:
    """The system prompt with the custom-tools section in place.

    A prompt of the user's is a ``str.format`` template, as in rlms: ``{{`` and
    ``}}`` stand for literal braces and ``{custom_tools_section}`` marks where the
    tools go. A prompt that is not a valid template (a bare ``{x}``, JSON
    examples), on which rlms raised, is used as written. Ours (the default)
    (and the small-model one) have no escaped braces. Without the marker, the section is
    appended.
    """
    marker = "{custom_tools_section}"
    ours = system_prompt in (RLM_SYSTEM_PROMPT, SMALL_MODEL_SYSTEM_PROMPT)
    if not ours and ("{" in system_prompt or "}" in system_prompt):
        try:
            text = system_prompt.format(custom_tools_section=section)
        except (KeyError, IndexError, ValueError, AttributeError):
            pass
        else:
            return text if marker in system_prompt or not section else text + section
    if marker in system_prompt:
        return system_prompt.replace(marker, section)
    return system_prompt + section


def build_rlm_system_prompt(
    system_prompt: str,
    query_metadata: QueryMetadata,
    custom_tools: dict[str, Any] | None = None,
    root_prompt: str | None = None,
    orchestrator: bool = True,
) -> list[dict[str, str]]:
    """The opening messages: the system prompt (with tools) and the context description."""
    from rlm.environments.base_env import format_tools_for_prompt

    tools = format_tools_for_prompt(custom_tools)
    section = f"\n\nCustom tools and data in the REPL:\n{tools}" if tools else ""
    text = _fill_system_prompt(system_prompt, section)
    if system_prompt is SMALL_MODEL_SYSTEM_PROMPT:
        text = fill_small_model_prompt(text, root_prompt)
    if orchestrator:
        text = f"{text}\n\n{ORCHESTRATOR_ADDENDUM}"
    description = _describe_context(query_metadata)
    if root_prompt:
        description = f"Question: {root_prompt}\n\n{description}"
    return [
        {"role": "system", "content": text},
        {"role": "user", "content": description},
    ]


def build_user_prompt(
    root_prompt: str | None = None,
    iteration: int = 0,
    context_count: int = 1,
    history_count: int = 0,
    max_iterations: int = _DEFAULT_MAX_ITERATIONS,
) -> dict[str, str]:
    """The user message that opens turn ``iteration`` (0-based)."""
    lines = [USER_PROMPT.format(iter_1=iteration + 1, max_iter=max_iterations)]
    if iteration == 0:
        lines.append(
            "You have not looked at the context yet. Start with a ```repl block that inspects it; "
            "do not give a final answer yet."
        )
    else:
        lines.append(
            "Continue: write the next ```repl block, or submit the final answer if the output "
            "above contains it."
        )
    if root_prompt:
        lines.append(f"Question: {root_prompt}")
    if context_count > 1:
        lines.append(
            f"There are {context_count} contexts: context_0 to context_{context_count - 1} "
            "(`context` is context_0)."
        )
    if history_count == 1:
        lines.append("The previous conversation is in the variable `history` (a list of messages).")
    elif history_count > 1:
        lines.append(
            f"There are {history_count} previous conversations: history_0 to "
            f"history_{history_count - 1} (`history` is history_0)."
        )
    return {"role": "user", "content": "\n".join(lines)}


def build_final_answer_prompt(
    root_prompt: str | None = None, answer_format: str | None = None
) -> dict[str, str]:
    """Asked once when the iterations run out. ``answer_format`` (with
    ``response_format``) says what the answer must be, e.g. "a JSON object matching the
    JSON Schema in the instructions"."""
    question = f" to the question: {root_prompt}" if root_prompt else ""
    how = (
        f"Write only the answer, as {answer_format}, with no code and no other words."
        if answer_format
        else "Write only the answer, as plain text, with no code."
    )
    return {
        "role": "user",
        "content": f"You have no turns left. Reply now with your best final answer{question}. {how}",
    }


def build_response_format_note(
    schema_json: str, shape_json: str, shape_python: str, what: str
) -> str:
    """The paragraph ``response_format`` adds to the system prompt: the schema, the shape
    of an answer, and how to submit it (``what``: "a JSON object" or "a JSON value")."""
    return (
        f"Answer format: your final answer must be {what} that matches this JSON Schema:\n"
        f"{schema_json}\n"
        f"Its shape (put the real values in place of the placeholders): {shape_json}\n"
        "Submit it the usual way, as JSON text. For example:\n"
        "```repl\n"
        "import json\n"
        f"answer['content'] = json.dumps({shape_python})\n"
        "answer['ready'] = True\n"
        "```\n"
        "Put only the JSON in the answer, no other words."
    )


def build_response_format_reminder(what: str) -> str:
    """The line ``response_format`` adds to each turn's prompt."""
    return f"The final answer must be {what} matching the JSON Schema in the instructions."


def build_rejected_answer_prompt(attempt: str, problems: str, tries_left: int) -> dict[str, str]:
    """Sends an answer that did not match ``response_format`` back to the model."""
    tries = "1 try" if tries_left == 1 else f"{tries_left} tries"
    return {
        "role": "user",
        "content": (
            "Your final answer was not accepted: it does not match the required JSON Schema.\n"
            f"Problems:\n{problems}\n"
            f"Your answer was:\n{attempt}\n"
            f"Fix it and submit the corrected JSON the same way ({tries} left)."
        ),
    }


COMPACTION_NOTE = (
    "When your conversation grows long it is replaced by your own summary of it. Nothing is "
    "lost: the REPL variable `history` is a list holding every earlier turn and every summary."
)


def build_compaction_prompt() -> dict[str, str]:
    """Asked when the history fills most of the model's window."""
    return {
        "role": "user",
        "content": (
            "Your conversation is about to be shortened. Write a summary of your progress that "
            "lets you continue without it: what the task is, what you have done and found "
            "(copy exact numbers, names and REPL variable names), what is left, and your next "
            "step. Plain text, no code blocks."
        ),
    }


def build_after_compaction_prompt(count: int, history: bool = True) -> dict[str, str]:
    """Opens the restarted history, after the summary (``history``: the REPL has the
    ``history`` variable, as with ``compaction=True``)."""
    times = "once" if count == 1 else f"{count} times"
    record = " and `history` holds the full record" if history else ""
    return {
        "role": "user",
        "content": (
            f"The conversation was shortened {times}; the summary above is where you are. "
            f"Your REPL variables are all still defined (SHOW_VARS() lists them){record}. "
            "Continue with the next step; do not redo finished work."
        ),
    }
