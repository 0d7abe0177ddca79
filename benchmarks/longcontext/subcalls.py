#!/usr/bin/env python3
"""What reading by sub-calls costs: accuracy and seconds per item of one-item prompts.

    python3 benchmarks/longcontext/subcalls.py                 # the embedded model
    python3 benchmarks/longcontext/subcalls.py --items 96 --size 4

The OOLONG-style family asks for counts of messages by topic, and no message names its
topic: an RLM reads them with sub-calls, one message (or a few) per ``llm_query``. This
script asks the model the topic of each of the first ``--items`` messages of the task at
``--size`` times the window, in each prompt shape below, through the same client a
sub-call uses (backend "openai" on one loopback ``llama_cpp.server``), and prints the
share it labels right, the seconds per message, and what labelling every message of that
task would take. A shape whose fixed part comes first shares its prompt prefix with the
previous call, which the server does not evaluate again.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.longcontext import tasks  # noqa: E402
from benchmarks.longcontext.run import CALIBRATION_CHARS, DEFAULT_WINDOW, embedded_model  # noqa: E402
from benchmarks.longcontext.server import Tokens  # noqa: E402
from rlm.clients import get_client  # noqa: E402
from rlm.local_server import llama_server  # noqa: E402
from rlm.utils.prompts import tally_ask  # noqa: E402

_BULLETS = "\n".join(f"- {name}: {about}" for name, (about, _) in tasks.TOPICS.items())
_NAMES = ", ".join(tasks.TOPIC_NAMES[:-1]) + " or " + tasks.TOPIC_NAMES[-1]
#: The small-model prompt's tally example asks this about each line.
_TALLY_ASK = tally_ask(tasks.QUESTIONS["most"])
#: The same, with the kinds listed as "- name: about", as it was before 1c56d22.
_TALLY_ASK_COLON = "\n".join([_TALLY_ASK.splitlines()[0], _BULLETS, _TALLY_ASK.splitlines()[-1]])
_EXAMPLES = "\n".join(
    f"Message: {text} Topic: {topic}"
    for topic, text in (
        ("billing", "I was billed again after I paid."),
        ("delivery", "The courier never brought my box."),
        ("technical", "The app shows an error when I save."),
        ("account", "I forgot my password and cannot sign in."),
        ("praise", "Great service, thanks a lot!"),
        ("cancellation", "Please close my subscription."),
    )
)

#: Prompt shapes: name -> prompt for one message text.
SHAPES: dict[str, Callable[[str], str]] = {
    "topics inline, then message": lambda m: (
        f"Topics: {tasks.TOPIC_LIST}. Which topic is this message about? "
        f"Answer with the topic only.\n{m}"
    ),
    "topic list, then message": lambda m: (
        f"Which one of these topics is the message below about?\n{_BULLETS}\n"
        f"Answer with one word: the topic's name.\n\nMessage: {m}"
    ),
    "topic list and examples, then message": lambda m: (
        f"Which one of these topics is the message about?\n{_BULLETS}\n\nExamples:\n"
        f"{_EXAMPLES}\n\nAnswer with the topic only.\nMessage: {m}"
    ),
    "message, then topic names": lambda m: f"Message: {m}\n\nTopic ({_NAMES})? One word.",
    "message, then topic list": lambda m: (
        f"Message: {m}\n\nWhich one of these topics is the message about?\n{_BULLETS}\n"
        "Answer with one word: the topic's name."
    ),
    "the tally example's prompt (rlm.utils.prompts.tally_ask)": lambda m: (
        f"Line: {m}\n\n{_TALLY_ASK}"
    ),
    "the same, kinds as 'name: about' (the tally until 1c56d22)": lambda m: (
        f"Line: {m}\n\n{_TALLY_ASK_COLON}"
    ),
}


def label_of(reply: str) -> str | None:
    """The one topic name ``reply`` gives, else None (none, or several)."""
    found = set(re.findall("|".join(tasks.TOPIC_NAMES), reply.lower()))
    return found.pop() if len(found) == 1 else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=48, help="messages asked per shape")
    p.add_argument("--size", type=float, default=4, help="task size, in windows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", default="", help="run only the shapes whose name has this")
    p.add_argument("--threads", type=int, default=2, help="llama_cpp.server threads")
    args = p.parse_args(argv)
    if args.items < 1:
        p.error(f"--items must be at least 1, got {args.items}")
    path = embedded_model()
    # Sized as the runner sizes it: the tokenizer's characters per token on this family.
    ratio = Tokens(gguf=path).ratio(tasks.generate("oolong", CALIBRATION_CHARS, args.seed).context)
    task = tasks.generate("oolong", round(args.size * DEFAULT_WINDOW * ratio), args.seed)
    messages = [m.group(4) for m in tasks.MESSAGE_RE.finditer(task.context)]
    items = [(text, tasks.topic_of(text)) for text in messages[: args.items]]
    print(f"model {path.name}; {len(items)} messages of oolong {args.size:g}x seed {args.seed}")
    print(f"(that task has {len(messages)} messages)\n")
    rows = []
    with llama_server(path, DEFAULT_WINDOW, args.threads) as url:
        client = get_client(
            "openai",
            {
                "model_name": path.stem,
                "base_url": url,
                "api_key": "local",
                "sampling_args": {"temperature": 0, "max_tokens": 8},
            },
        )
        client.completion("Say hi.")  # load the weights before timing
        for name, shape in SHAPES.items():
            if args.only and args.only not in name:
                continue
            start, right = time.perf_counter(), 0
            for text, gold in items:
                right += label_of(client.completion(shape(text))) == gold
            per_item = (time.perf_counter() - start) / len(items)
            rows.append((name, right / len(items), per_item, per_item * len(messages)))
    print(f"| prompt shape | labelled right | s / message | all {len(messages)} messages |")
    print("|---|---:|---:|---:|")
    for name, share, per_item, whole in rows:
        print(f"| {name} | {share:.0%} | {per_item:.2f} | {whole / 60:.1f} min |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
