"""What the loop tells a small model about its own mistakes, and how it keeps it on track.

Pure functions over text, code and REPL results (no RLM, no client):

* :func:`is_small_model` -- the rule behind the ``None`` defaults of ``small_model``,
  ``stop_at_block_end`` and ``feedback``: the embedded llama.cpp backend, or a model
  whose name says it has at most 4 billion parameters (``qwen2.5-coder-1.5b-instruct``).
* :func:`cut_after_first_block`, :func:`close_open_fence` -- a response ends at the end
  of its first complete ```repl block (:data:`BLOCK_END_STOP` is the stop sequence).
* :func:`search_miss_note` -- a search that matched nothing, said plainly.
* :func:`tally_note` -- counts by the question's kinds were printed: answer now.
* :class:`TextIndex` -- does a piece of text come from the context (or an output seen
  since)? Bounded work on huge contexts: a few sampled segments, each one substring test.
* :func:`context_free_note` -- ``llm_query`` prompts that hold none of the context.
* :func:`grounded` -- is a final answer found in the context or any output?
* :func:`window_refusal` -- a sub-call prompt too large for the sub-model's window.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Iterator
from typing import Any

from rlm.utils.parsing import _normalise, _repl_spans
from rlm.utils.prompts import names_in
from rlm.utils.token_utils import CHARS_PER_TOKEN

# ---------------------------------------------------------------------------
# Which models get the small-model loop
# ---------------------------------------------------------------------------

#: A parameter count in a model name: "1.5b", "0.5B", "-3b-", "e2b" (billions).
_PARAMS = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)\s*b(?![a-z0-9])", re.IGNORECASE)
#: Models with at most this many billion parameters count as small.
SMALL_MODEL_MAX_BILLIONS = 4.0


def is_small_model(backend: Any, client: Any) -> bool:
    """Whether the root model is the embedded one (``backend="llama_cpp"``) or a model whose
    name gives at most :data:`SMALL_MODEL_MAX_BILLIONS` billion parameters."""
    if backend == "llama_cpp" or type(client).__module__ == "rlm.clients.llama_cpp":
        return True
    name = str(getattr(client, "model_name", "") or "")
    sizes = [float(m.group(1)) for m in _PARAMS.finditer(name.rsplit("/", 1)[-1])]
    return bool(sizes) and max(sizes) <= SMALL_MODEL_MAX_BILLIONS


# ---------------------------------------------------------------------------
# Stopping at the end of the first block
# ---------------------------------------------------------------------------

#: The stop sequence that ends generation at a closing fence (an opening fence is
#: followed by ``repl``, never by a newline, so it does not match).
BLOCK_END_STOP = "\n```\n"

_FENCE_LINE = re.compile(r"^[ \t]*```", re.MULTILINE)


def cut_after_first_block(text: str) -> str:
    """``text`` up to the end of its first complete ```repl block (what follows, an
    imagined "REPL output" and answers drawn from it, is dropped); unchanged when there
    is no complete block or nothing but blank space follows it."""
    if not text or "```" not in text:
        return text
    normalised = _normalise(text)
    spans = _repl_spans(normalised)
    if not spans or not normalised[spans[0][1] :].strip():
        return text
    return normalised[: spans[0][1]]


def close_open_fence(text: str) -> str:
    """``text`` with its closing fence put back when a stop sequence removed it (the text
    ends inside an open ``` fence); otherwise unchanged."""
    if len(_FENCE_LINE.findall(_normalise(text))) % 2 == 0:
        return text
    return text.rstrip("\n") + "\n```"


#: The opening fence of a block in another language (```python, ```py, bare ```).
_OTHER_FENCE = re.compile(r"^[ \t]*```[ \t]*(?:python|py|python3)?[ \t]*$", re.MULTILINE)


def wrong_fence_note(response: str) -> str | None:
    """A note for a response that ran nothing because its code is in a ```python (or
    bare ```) block, else None."""
    if not _OTHER_FENCE.search(_normalise(response or "")):
        return None
    return (
        "Note: no code ran. Only blocks that start with ```repl run; write ```repl, not ```python."
    )


# ---------------------------------------------------------------------------
# A search that matched nothing
# ---------------------------------------------------------------------------

_EMPTY = r"(?:\[\]|\(\)|\{\}|set\(\)|-1|0|None|False|''|\"\")"
#: A printed line that says "nothing": empty values, optionally after a short label.
_EMPTY_LINE = re.compile(rf"(?:[^\n:]{{1,60}}:\s*)?{_EMPTY}(?:[\s,]+{_EMPTY})*")
#: Calls that search text: str.find/index/count, re.search/findall... (and compiled patterns).
_SEARCH_CALLS = frozenset(
    {"find", "rfind", "index", "rindex", "count", "search", "findall", "finditer", "match"}
)


#: Code that already ignores case.
_IGNORING_CASE = re.compile(r"\.(?:lower|casefold)\(\)|re\.I\b|IGNORECASE|\(\?i\)")


def _searches(tree: ast.AST) -> tuple[list[str], list[str]]:
    """(keywords searched for, keywords with capitals compared with ``.lower()`` text) in
    ``tree``; a search is an ``in`` test inside a comprehension filter or on a string
    literal, or one of :data:`_SEARCH_CALLS`."""
    keywords: list[str] = []
    never: list[str] = []
    filters = [c for n in ast.walk(tree) if isinstance(n, ast.comprehension) for c in n.ifs]
    filtered = {id(n) for f in filters for n in ast.walk(f)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(isinstance(o, ast.In) for o in node.ops):
            literal = node.left.value if isinstance(node.left, ast.Constant) else None
            if not isinstance(literal, str) and id(node) not in filtered:
                continue
            keywords.append(literal if isinstance(literal, str) else "")
            lowered = any(
                isinstance(c, ast.Call)
                and isinstance(c.func, ast.Attribute)
                and c.func.attr in ("lower", "casefold")
                for c in node.comparators
            )
            if isinstance(literal, str) and lowered and literal != literal.lower():
                never.append(literal)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in _SEARCH_CALLS
        ):
            first = node.args[0] if node.args else None
            literal = first.value if isinstance(first, ast.Constant) else ""
            keywords.append(literal if isinstance(literal, str) else "")
    return keywords, never


def _prints_in_filter(tree: ast.AST) -> bool:
    """Whether ``tree`` prints from inside an ``if`` that tests ``in`` within a loop (a
    search whose hits are printed one by one: no output means no hit)."""
    for loop in ast.walk(tree):
        if not isinstance(loop, (ast.For, ast.While)):
            continue
        for node in ast.walk(loop):
            tests_in = isinstance(node, ast.If) and any(
                isinstance(c, ast.Compare) and any(isinstance(o, ast.In) for o in c.ops)
                for c in ast.walk(node.test)
            )
            if tests_in and any(
                isinstance(c, ast.Call) and isinstance(c.func, ast.Name) and c.func.id == "print"
                for statement in getattr(node, "body", ())
                for c in ast.walk(statement)
            ):
                return True
    return False


def _matched_nothing(tree: ast.AST, stdout: str) -> bool:
    """Whether the output says the search found nothing: every printed line empty (at
    most six), or no output at all from a search that prints its hits one by one."""
    lines = [line.strip() for line in (stdout or "").splitlines() if line.strip()]
    if not lines:
        return _prints_in_filter(tree)
    return len(lines) <= 6 and all(_EMPTY_LINE.fullmatch(line) for line in lines)


def search_miss_note(code: str, stdout: str, error: str | None = None) -> str | None:
    """A note for a block that searched and found nothing (it printed only empty results,
    ``[]``, ``0``, ``-1``, ``None``..., or nothing from a loop that prints its hits), or
    that compares a keyword with capitals against lowercased text; else None.
    Conservative: the code must search (see :func:`_searches`) and must not have failed."""
    if error:
        return None
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return None
    keywords, never = _searches(tree)
    if not keywords:
        return None
    notes = []
    if _matched_nothing(tree, stdout):
        word = next((k for k in keywords if k.strip()), "keyword").strip().lower()[:40]
        if _IGNORING_CASE.search(code) and not never:
            notes.append(
                "Note: the search matched nothing. Try a shorter keyword or another word from "
                "the question, or print a sample of the context (print(context[:1000])) to "
                "see how it is written."
            )
        else:
            notes.append(
                "Note: the search matched nothing. Matching is exact, so spelling and case "
                "must agree. Try a case-insensitive search, e.g. [line for line in "
                f"context.splitlines() if {word!r} in line.lower()], or a shorter keyword."
            )
    if never:
        notes.append(
            f"{'' if notes else 'Note: '}{never[0][:40]!r} has capital letters but is compared "
            f"with lowercased text (.lower()), so it can never match: write "
            f"{never[0].lower()[:40]!r}."
        )
    return " ".join(notes) or None


_NAME_ERROR = re.compile(r"NameError: name '(\w+)' is not defined")


def undefined_name_note(stderr: str) -> str | None:
    """A note for a block that failed on a name no block has set (small models copy the
    last lines of an example and leave out the ones that set its variables); else None."""
    match = _NAME_ERROR.search(stderr or "")
    if match is None:
        return None
    name = match.group(1)
    return (
        f"Note: `{name}` is not defined. A block sees `context`, the REPL's functions and "
        f"the variables that earlier blocks set, nothing else: write the block again with "
        f"the line that sets `{name}` in it."
    )


_COUNT = re.compile(r"['\"]([^'\"]{1,40})['\"]:\s*(\d+)")


def tally_note(
    kinds: list[str],
    question: str | None,
    stdout: str,
    asked: int = 0,
    lines: int = 0,
    ask_end: str = "",
) -> str | None:
    """For a block that asked a sub-model about (nearly) every one of the context's
    ``lines`` (``asked`` sub-calls) and printed counts (``{'billing': 3, ...}``) of at
    least two of the ``kinds`` a counting question lists; else None (counts of keywords,
    or of a sample, get none).

    When the listed kinds hold most answers, those counts are what the question needs:
    the note restates it and asks for the answer now (small models otherwise search on).
    When they do not (the copied prompt lost its last line, ``ask_end``, and the answers
    are sentences), the note says how few were counted and asks for the tally again with
    that line."""
    if len(kinds) < 2 or lines <= 0 or asked < 0.9 * lines:
        return None
    listed = {kind.lower() for kind in kinds}
    counts: dict[str, int] = {}
    for name, count in _COUNT.findall(stdout or ""):
        name = name.strip().lower()
        if name in listed:
            counts[name] = int(count)
    counted = sum(counts.values())
    if len(counts) < 2:
        return None
    if counted < 0.8 * asked:
        end = f" Each prompt must end with the line {ask_end!r}." if ask_end else ""
        return (
            f"Note: only {counted} of the {asked} answers name one of the "
            f"listed kinds, so these counts are not the answer.{end} Ask about every "
            "line again, with the whole prompt of the example."
        )
    return TALLY_ANSWER_NOTE + _answer_from_counts(question)


#: How :func:`tally_note` starts when the counts answer the question.
TALLY_ANSWER_NOTE = (
    "Note: these are the counts of every line's kind, which is what the question needs."
)


def _answer_from_counts(question: str | None) -> str:
    restated = f" The question: {_preview(question, 600)}" if question else ""
    return (
        f'{restated} Answer it from the counts now: set answer["content"] and then '
        'answer["ready"] = True.'
    )


def tally_reminder(counts: str, turn: int) -> str:
    """For each turn after the one whose counts got :func:`tally_note`'s answer-now note,
    while no answer comes: those counts again (what turn ``turn`` printed), without the
    question, which each turn's prompt restates. Small models searched on for eight turns
    after the note, the counts ever further back in their history."""
    return (
        f"Note: turn {turn} printed the counts of every line's kind:\n{_preview(counts, 300)}\n"
        f"They are what the question needs.{_answer_from_counts(None)}"
    )


# ---------------------------------------------------------------------------
# Is this text from the context?
# ---------------------------------------------------------------------------

#: Length of the sampled segments and how many one text is tested with.
SEGMENT_CHARS = 32
SEGMENTS = 12
#: Outputs remembered as evidence (sub-call answers, REPL output), newest kept.
MAX_EVIDENCE_CHARS = 2_000_000
#: A context longer than this is not indexed: nothing can be told about it, so
#: :meth:`TextIndex.holds` and :func:`grounded` say yes (no note, no check).
MAX_INDEX_CHARS = 64_000_000


_SPACES = re.compile(r"\s+")


def normalise_text(text: str) -> str:
    """Lowercase, whitespace runs as one space: what :class:`TextIndex` compares (one
    regular-expression pass, so a large context costs two copies of itself, not a word list)."""
    return _SPACES.sub(" ", text.lower()).strip()


def _leaves(value: Any, depth: int = 0) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, (bytes, bytearray)):
        yield bytes(value).decode("utf-8", errors="replace")
    elif depth > 8:
        return
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from _leaves(item, depth + 1)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            yield from _leaves(item, depth + 1)
    elif value is not None:
        yield str(value)


def text_of(prompt: Any) -> str:
    """The text of a prompt or context: a string as it is, else its strings joined."""
    return prompt if isinstance(prompt, str) else "\n".join(_leaves(prompt))


class TextIndex:
    """The context (normalised once, lazily) plus outputs seen since, for cheap questions:
    does this text come from them (:meth:`holds`), which words do they contain (:meth:`words`).

    ``question`` (the run's ``root_prompt``) does not count as context: a sub-call prompt
    that repeats the question alone holds none of the context, however much the question's
    words resemble the line that answers it."""

    def __init__(self, context: Any, question: str | None = None):
        self._context = context
        self._question = normalise_text(question) if question else ""
        self._haystack: str | None = None
        self._evidence: list[str] = []
        self._evidence_chars = 0
        self.too_large = False

    @property
    def haystack(self) -> str:
        if self._haystack is None:
            text = text_of(self._context)
            self.too_large = len(text) > MAX_INDEX_CHARS
            self._haystack = "" if self.too_large else normalise_text(text)
            self._context = None
        return self._haystack

    def add(self, texts: Iterable[str]) -> None:
        """Remember outputs (REPL output, sub-call answers) as evidence."""
        for text in texts:
            norm = normalise_text(text) if text else ""
            if not norm:
                continue
            self._evidence.append(norm)
            self._evidence_chars += len(norm)
        while self._evidence_chars > MAX_EVIDENCE_CHARS and len(self._evidence) > 1:
            self._evidence_chars -= len(self._evidence.pop(0))

    def _found(self, piece: str, extra: Iterable[str] = ()) -> bool:
        return piece in self.haystack or any(piece in e for e in (*self._evidence, *extra))

    def holds(self, text: str, extra: Iterable[str] = ()) -> bool:
        """Whether some segment of ``text`` occurs in the context, in the evidence or in
        ``extra`` (normalised texts). At most :data:`SEGMENTS` substring tests."""
        norm = normalise_text(text)
        if self.haystack == "" and self.too_large:
            return True
        if len(norm) <= SEGMENT_CHARS:
            return bool(norm) and norm not in self._question and self._found(norm, extra)
        last = len(norm) - SEGMENT_CHARS
        count = min(SEGMENTS, last + 1)
        starts = sorted({round(i * last / max(count - 1, 1)) for i in range(count)})
        extra = list(extra)
        pieces = (norm[s : s + SEGMENT_CHARS] for s in starts)
        return any(p not in self._question and self._found(p, extra) for p in pieces)

    def in_context(self, text: str) -> bool:
        """Whether ``text`` (normalised) occurs in the context itself (True for a context
        too large to index)."""
        return normalise_text(text) in self.haystack or self.too_large

    def has_word(self, word: str, extra: Iterable[str] = ()) -> bool:
        """Whether ``word`` (lowercase) stands as a whole word in the context, the evidence
        or ``extra``: one regular-expression search of each."""
        pattern = re.compile(rf"(?<!\w){re.escape(word)}(?!\w)")
        return any(pattern.search(t) for t in (self.haystack, *self._evidence, *extra))


def _preview(text: str, limit: int = 80) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def context_free_note(prompts: list[str], index: TextIndex) -> str | None:
    """A warning naming the sub-call prompts (at most 16 checked) that hold none of the
    context and none of the outputs seen so far, else None."""
    checked = [p for p in prompts if isinstance(p, str)][:16]
    missing = [p for p in checked if not index.holds(p)]
    if not missing:
        return None
    which = (
        "an llm_query prompt holds"
        if len(checked) == 1
        else f"{len(missing)} of {len(checked)} llm_query prompts hold"
    )
    return (
        f"Warning: {which} none of the text of `context` (e.g. {_preview(missing[0])!r}). "
        "The sub-model cannot see `context` or your variables, so its answer is a guess. "
        'Put the text it needs in the prompt, e.g. llm_query("Question... Text:\\n" + chunk).'
    )


# ---------------------------------------------------------------------------
# Is the final answer supported by anything the run saw?
# ---------------------------------------------------------------------------


def grounded(answer: str, index: TextIndex, extra: Iterable[str] = ()) -> bool:
    """Whether ``answer`` is found in the context or the outputs: as a whole, or every
    number in it and at least half of its words of four letters or more. An answer with
    neither (``yes``, ``B``) cannot be judged and counts as found."""
    norm = normalise_text(answer)
    extra = [normalise_text(e) for e in extra if e]
    if not norm or index._found(norm, extra) or index.too_large:
        return True
    tokens = list(dict.fromkeys(re.findall(r"\w+", norm)))[:24]
    numbers = [t for t in tokens if any(ch.isdigit() for ch in t)]
    words = [t for t in tokens if not any(ch.isdigit() for ch in t) and len(t) >= 4]
    if not numbers and not words:
        return True
    if not all(index.has_word(n, extra) for n in numbers):
        return False
    return not words or 2 * sum(index.has_word(w, extra) for w in words) >= len(words)


def unverified_answer_prompt(answer: str) -> dict[str, str]:
    """Sends an answer found nowhere back to the model, once."""
    return {
        "role": "user",
        "content": (
            f"Your final answer {_preview(answer, 200)!r} was not accepted yet: it is not in "
            "the context, in any llm_query answer or in any REPL output so far. Check it with "
            "code (search the context and print what supports it), then submit the answer "
            "the output supports. The next answer you submit is final."
        ),
    }


#: Where an output is cut into sentences (also between the items of a printed list).
_SENTENCE_END = re.compile(r"(?<=[.!?])['\"]?,?\s+|\n")


def next_names(
    question: str | None,
    outputs: list[str],
    known: Iterable[str] = (),
    anchors: Iterable[str] = (),
) -> list[str]:
    """Names (lowercase, at most three, the last found first) that the ``outputs`` gave
    in a sentence about something the question, ``anchors`` or an earlier such name
    names, and that neither they nor ``known`` (terms searched already) mention: the
    next hops of a chain (``Dramont Labs`` in ``Amara Weiss works for Dramont Labs.``,
    when the question asks about Amara Weiss). Sentences about nothing asked (a peek at
    the context's first lines) give none."""
    asked = (question or "").lower()
    known = [k for k in known if k]
    anchors = [n.lower() for n in names_in(question or "")] + [a for a in anchors if a]
    sentences = [s for output in outputs for s in _SENTENCE_END.split(output) if s.strip()]
    found: list[str] = []
    for _ in range(3):  # a chain's sentences may come in any order
        before, links = len(found), len(anchors)
        for sentence in sentences:
            low = sentence.lower()
            if not any(anchor in low for anchor in anchors):
                continue
            for name in names_in(sentence):
                term = name.lower()
                if len(term) < 3 or term in asked or term in anchors:
                    continue
                anchors.append(term)  # a link of the chain, searched already or not
                if not any(term in k for k in known):
                    found.append(term)
        if len(found) == before and len(anchors) == links:
            break
    return found[::-1][:3]


def answer_searches(
    answer: str,
    question: str | None,
    outputs: list[str],
    known: Iterable[str] = (),
    chain: Iterable[str] = (),
) -> list[str]:
    """What a small model's answer check searches the context for (lowercase): the answer
    itself when it is short (four words at most) and not a number, then the
    :func:`next_names` of the latest ``outputs`` that ``known`` does not hold, following
    the answer and ``chain`` (names suggested before)."""
    terms: list[str] = []
    flat = " ".join(answer.split()).lower()
    if flat and len(flat) <= 40 and len(flat.split()) <= 4 and re.search(r"[a-z]", flat):
        terms.append(flat)
    names = next_names(question, outputs, [*terms, *known], anchors=[*terms, *chain])
    return terms + [n for n in names if n not in terms]


def search_code(terms: list[str]) -> str:
    """A ```repl block printing the lines of ``context`` (a string) holding each term."""
    return (
        f"```repl\nfor name in {terms!r}:\n"
        "    lines = [line for line in context.splitlines() if name in line.lower()]\n"
        "    print(name, len(lines), lines[:5])\n```"
    )


def repeated_block_note(names: list[str], counted: bool = False) -> str:
    """For a block that repeats the previous one: the same code prints the same output.
    ``names``: a search to offer for them; ``counted``: a tally printed counts that
    answer the question (:func:`tally_note`), so no search is offered: small models
    followed the offered searches away from the counts."""
    note = (
        "Note: this is the same code as your previous block, so it printed the same "
        "output. Do not run it again: "
    )
    if counted:
        return note + "the counts the tally printed answer the question."
    note += "submit the answer the output shows"
    if not names:
        return note + ", or search for something else."
    return (
        note
        + ", or search for the names it gave that you have not searched for yet:\n"
        + search_code(names)
    )


def check_answer_prompt(
    answer: str,
    question: str | None,
    found: bool,
    searches: list[str] | None = None,
    again: bool = False,
) -> dict[str, str]:
    """Sends a small model's final answer back, with the question restated: small models
    often submit a step of the answer (the company, when the question asks for the
    company's city). ``found``: whether anything the run saw holds the answer;
    ``searches``: terms for a ready-made search of the context (a string) to suggest;
    ``again``: the model gave this answer before."""
    asked = f"The question: {_preview(question, 600)}\n" if question else ""
    if found:
        unseen = ""
    elif again:
        unseen = (
            "You gave this answer before, and still no line of the context holds it: it is "
            "not the answer. Answer from the lines the output printed.\n"
        )
    else:
        unseen = "It is not in the context or in any REPL output so far.\n"
    if searches:
        step = (
            "Print what the context says about your answer and about the names the output "
            f"gave you:\n{search_code(searches)}\nThen submit the answer to the question "
            "that this output shows."
        )
    else:
        step = (
            "If the output showed exactly what the question asks for, submit the same "
            "answer again. If your answer is only a step towards it, search the context "
            "for what is missing now."
        )
    return {
        "role": "user",
        "content": (
            f"Check your answer before it is final.\n{asked}Your answer: "
            f"{_preview(answer, 200)!r}\n{unseen}{step}"
        ),
    }


# ---------------------------------------------------------------------------
# Sub-calls larger than the sub-model's window
# ---------------------------------------------------------------------------


def answer_room(window: int) -> int:
    """Tokens of the window kept for the answer: an eighth, at most 1,024."""
    return min(1024, window // 8)


def window_refusal(prompt_tokens: int, window: int) -> str | None:
    """Why a sub-call of ``prompt_tokens`` (estimated) cannot go to a model whose window is
    ``window`` tokens (with :func:`answer_room` left for the answer), or None."""
    limit = window - answer_room(window)
    if prompt_tokens <= limit:
        return None
    chars = max(limit * CHARS_PER_TOKEN * 3 // 4, 1)
    return (
        f"the prompt is about {prompt_tokens:,} tokens, more than the sub-model's window of "
        f"{window:,} tokens allows (about {limit:,}, leaving room for the answer); it was "
        f"not sent. Split the text into pieces of at most about {chars:,} characters, ask "
        "about each piece with llm_query_batched, then combine the answers"
    )
