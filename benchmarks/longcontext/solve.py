"""Reference solutions of the task families, as code a model could write in the REPL.

The oracle (``oracle.py``) sends this file's source into the REPL, followed by
``result = solve(context, PLAN, llm_query_batched)``: the search runs on the real
``context`` and the reading of customer messages goes through real sub-calls. It uses
only the standard library and defines no name starting with an underscore (rlms' REPL
does not keep those between cells).

``PLAN`` is what the question asks, in data:

* ``{"solver": "fact", "pattern": REGEX}``: the first group of the first match;
* ``{"solver": "chain", "start": NAME, "patterns": [REGEX, ...]}``: each pattern's
  ``{x}`` is the previous answer (the start first);
* ``{"solver": "topics", "question": "count" | "most" | "compare", "topics": [...],
  "x": TOPIC, "y": TOPIC}``: messages labelled by sub-calls, then counted;
* ``{"solver": "pairs", "condition": "both" | "either", "topics": [...], "x": ..., "y": ...}``.
"""

import re
from collections import Counter

MESSAGE_LINE = re.compile(r"^Message (\d+) \| user (u\d+) \| \d{4}-\d{2}-\d{2}: .*$", re.M)
REPLY_LINE = re.compile(r"^\s*(\d+)\s*:\s*([A-Za-z]+)", re.M)
LABEL_PROMPT = (
    "Give the topic of each customer message below. The topics are: {topics}.\n"
    "Reply with one line per message: its number, a colon and the topic, "
    "for example '12: {example}'.\n\n{messages}"
)
CHUNK_CHARS = 12000


def find_fact(text, pattern):
    """The first group of the first match of ``pattern`` in ``text``, or None."""
    match = re.search(pattern, text)
    return match.group(1) if match else None


def follow_chain(text, start, patterns):
    """Each pattern's ``{x}`` filled with the answer so far, starting from ``start``."""
    value = start
    for pattern in patterns:
        value = find_fact(text, pattern.replace("{x}", re.escape(value)))
        if value is None:
            return None
    return value


def label_messages(text, topics, ask, chunk_chars=CHUNK_CHARS):
    """``[(number, user, topic or None)]`` for every message line of ``text``, each chunk
    of lines labelled by one sub-call of ``ask`` (a batch: list of prompts -> replies)."""
    found = [(m.group(1), m.group(2), m.group(0)) for m in MESSAGE_LINE.finditer(text)]
    chunks, current, size = [], [], 0
    for *_, line in found:
        if current and size + len(line) > chunk_chars:
            chunks.append(current)
            current, size = [], 0
        current.append(line)
        size += len(line) + 1
    if current:
        chunks.append(current)
    prompts = [
        LABEL_PROMPT.format(topics=", ".join(topics), example=topics[0], messages="\n".join(c))
        for c in chunks
    ]
    labels = {}
    for reply in ask(prompts) if prompts else []:
        for number, topic in REPLY_LINE.findall(reply or ""):
            if topic.lower() in topics:
                labels[number] = topic.lower()
    return [(number, user, labels.get(number)) for number, user, _ in found]


def solve(text, plan, ask):
    """The answer to ``plan`` over ``text``, as the text to submit."""
    if plan["solver"] == "fact":
        return find_fact(text, plan["pattern"]) or "not found"
    if plan["solver"] == "chain":
        return follow_chain(text, plan["start"], plan["patterns"]) or "not found"
    labelled = label_messages(text, plan["topics"], ask)
    if plan["solver"] == "topics":
        counts = Counter(topic for _, _, topic in labelled if topic)
        if plan["question"] == "count":
            return str(counts[plan["x"]])
        if plan["question"] == "most":
            return counts.most_common(1)[0][0] if counts else "not found"
        x, y = counts[plan["x"]], counts[plan["y"]]
        return "more common" if x > y else "less common" if x < y else "same frequency"
    wrote = {}
    for _, user, topic in labelled:
        wrote.setdefault(user, set()).add(topic)
    users = sorted(wrote)
    pairs = []
    for i, a in enumerate(users):
        for b in users[i + 1 :]:
            if plan["condition"] == "both":
                keep = plan["x"] in wrote[a] and plan["x"] in wrote[b]
            else:
                keep = (plan["x"] in wrote[a] and plan["y"] in wrote[b]) or (
                    plan["y"] in wrote[a] and plan["x"] in wrote[b]
                )
            if keep:
                pairs.append(f"({a}, {b})")
    return "\n".join(pairs) if pairs else "no pairs"
