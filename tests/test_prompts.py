"""System prompts: rlms' template rules for a user's custom_system_prompt."""

from __future__ import annotations

import pytest

from rlm.core.types import QueryMetadata
from rlm.utils.prompts import RLM_SYSTEM_PROMPT, build_rlm_system_prompt

TOOLS = {"lookup": {"tool": lambda key: key, "description": "Look a key up."}}


def system_text(prompt: str, tools=None) -> str:
    return build_rlm_system_prompt(prompt, QueryMetadata("ctx"), tools, orchestrator=False)[0][
        "content"
    ]


def test_custom_prompt_braces_are_unescaped_as_rlms_formats_them():
    prompt = 'Use f-strings like f"{{chunk}}".\nTools:{custom_tools_section}\nEnd.'
    text = system_text(prompt)
    assert text == 'Use f-strings like f"{chunk}".\nTools:\nEnd.'


def test_custom_prompt_gets_the_tools_where_it_marks_them():
    text = system_text("Before.{custom_tools_section}\nAfter {{x}}.", TOOLS)
    before, after = text.split("lookup", 1)
    assert before.startswith("Before.")
    assert "After {x}." in after


def test_custom_prompt_that_is_not_a_template_is_used_as_written():
    # rlms raised KeyError here; a JSON example in a prompt is kept as it is.
    prompt = 'Answer as JSON: {"answer": "..."} and use {custom_tools_section}'
    assert system_text(prompt) == 'Answer as JSON: {"answer": "..."} and use '


def test_custom_prompt_without_braces_or_marker_gets_the_tools_appended():
    text = system_text("Plain prompt.", TOOLS)
    assert text.startswith("Plain prompt.")
    assert "lookup" in text


def test_default_prompt_is_unchanged_by_formatting():
    text = system_text(RLM_SYSTEM_PROMPT)
    assert "{custom_tools_section}" not in text
    assert text == RLM_SYSTEM_PROMPT.replace("{custom_tools_section}", "")


def test_the_small_model_prompt_is_filled_like_the_default():
    from rlm.utils.prompts import SMALL_MODEL_SYSTEM_PROMPT

    text = system_text(SMALL_MODEL_SYSTEM_PROMPT, TOOLS)
    assert "{custom_tools_section}" not in text and "lookup" in text
    assert 'llm_query_batched(["Question: ...\\nText:\\n" + chunk' in text  # kept as written
    assert len(SMALL_MODEL_SYSTEM_PROMPT) < len(RLM_SYSTEM_PROMPT)


def test_after_compaction_mentions_history_only_when_the_repl_has_it():
    from rlm.utils.prompts import build_after_compaction_prompt

    assert "`history`" in build_after_compaction_prompt(1)["content"]
    assert "`history`" not in build_after_compaction_prompt(2, history=False)["content"]


def test_the_search_example_uses_what_the_question_names():
    """The small model copies the example search verbatim, so it searches for the
    question's name (a person, a place), not for a word every distractor shares."""
    from rlm.utils.prompts import example_keyword

    multihop = "In which city is the company that Amara Weiss works for headquartered?"
    assert example_keyword(multihop) == "amara weiss"  # not "headquartered"
    niah = "What is the access code for warehouse Jasper? Answer with the code only."
    assert example_keyword(niah) == "jasper"  # "Answer" starts a sentence: not a name
    assert example_keyword("How many entries are about cats?") == "entries"
    assert example_keyword("Is it here? What, in Rome, Oslo or Bern?") == "rome"
    assert example_keyword(None) == example_keyword("What is it?") == "keyword"
    # A quoted word is searched for without its quotes: "message'" matched no line, and
    # the model that copied the search repeated it for eight turns (OOLONG seed 1).
    oolong = "Every line that starts with 'Message' is a message about one topic."
    assert example_keyword(oolong) == "message"
    assert example_keyword("Who wrote the e-mail that isn't signed?") == "e-mail"


def test_names_are_capitalised_runs_inside_sentences():
    from rlm.utils.prompts import names_in

    line = "2024-03-05T10:57:00Z NOTE [ops] Pavel Ferreira works for Haltrax Foods."
    assert names_in(line) == ["Pavel Ferreira", "Haltrax Foods"]  # NOTE is a tag
    assert names_in("The project Raven-24 is run by Halmont Works.") == [
        "Raven-24",
        "Halmont Works",
    ]
    assert names_in("Rome, Oslo. Bern") == ["Oslo"]  # "Rome" and "Bern" start sentences
    assert names_in("Ask O'Brien about 'Zephyr' tonight.") == ["O'Brien", "Zephyr"]


# The small-model prompt's steps follow the question (issue 13).

TALLY_QUESTION = (
    "Every line is a message about one topic, not named in it. The topics are: billing "
    "(payments, charges, invoices), delivery (parcels, couriers) or praise. "
    "Which topic do the most messages have? Answer with the topic only."
)


def test_a_counting_question_with_a_list_gets_the_tally_first():
    from rlm.utils.prompts import small_model_steps, tally_options

    assert tally_options(TALLY_QUESTION) == [
        ("billing", "payments, charges, invoices"),
        ("delivery", "parcels, couriers"),
        ("praise", ""),
    ]
    step_2, step_3 = small_model_steps(TALLY_QUESTION)
    assert "labels = llm_query_batched(" in step_2.split("```repl\n")[1]  # first: copied alone
    # It asks in the question's own word for the kinds ("topics"): 97% of lines labelled
    # right against 81% with "which one of these" (benchmarks/longcontext/subcalls.py).
    assert "Which one of these topics is the line about?" in step_2
    assert "the topic's name." in step_2
    # The kinds as the question writes them: given "billing: payments, ...", the root
    # model ended the last kind as the question does and lost the line after it.
    assert "- billing (payments, charges, invoices)\\n- delivery (parcels, couriers)" in step_2
    assert "\\n- praise\\n" in step_2
    assert step_3.startswith("To find a fact")


def test_the_tally_names_the_kinds_as_the_question_does_and_stays_valid_code():
    import ast

    from rlm.utils.prompts import small_model_steps, tally_ask, tally_kinds

    assert tally_kinds("How many? The categories are: a (x), b or c.")[0] == "categories"
    assert "one of these categories" in tally_ask("How many? The categories are: a, b or c.")
    assert "the category's name" in tally_ask("How many? The categories are: a, b or c.")
    assert "the kind's name" in tally_ask("How many are there? Pick one of: a, b or c.")
    assert tally_ask("What is the access code?") is None
    pairs = "List every pair of users who both wrote about billing. The topics are: a, b or c."
    assert "one of these topics" in tally_ask(pairs)  # pairs need each line's kind too
    # Quotes, backslashes and newlines in the kinds still make one valid string literal.
    question = 'How many? The labels are: a (say "hi"), b (C:\\temp) or c.'
    code = small_model_steps(question)[0].split("```repl\n")[1].split("```")[0]
    ask = ast.parse(code).body[0].value.args[0].elt.right.value  # "Line: " + line + ask
    assert ask == "\n\n" + tally_ask(question)


@pytest.mark.parametrize(
    "listed, kinds",
    [
        (
            "billing (payments), delivery (parcels) or praise (thanks)",
            ["billing", "delivery", "praise"],
        ),
        ("billing (payments, charges) or delivery (parcels)", ["billing", "delivery"]),
        ("billing, delivery or praise (thanks)", ["billing", "delivery", "praise"]),
        ("rock and roll, jazz or blues", ["rock and roll", "jazz", "blues"]),
        ("praise (compliments and thanks), billing (fees or charges)", ["praise", "billing"]),
    ],
)
def test_the_last_or_outside_parentheses_joins_the_last_two_kinds(listed, kinds):
    from rlm.utils.prompts import tally_options

    question = f"How many messages are about billing? The topics are: {listed}."
    assert [name for name, _ in tally_options(question)] == kinds


def test_the_kinds_word_is_made_singular_by_the_common_rules_or_left_as_kind():
    from rlm.utils.prompts import _singular, tally_kinds

    plurals = ["topics", "categories", "boxes", "statuses", "movies", "series", "news"]
    singulars = ["topic", "category", "box", "status", "movie", "series", "news"]
    assert [_singular(w) for w in plurals] == singulars
    assert _singular("this") == "kind"
    # Only a plural before "are:" names the kinds ("The status is:" is no plural).
    assert tally_kinds("How many? The status is: open, closed or stale.")[0] == "kinds"


def test_other_questions_get_the_search_then_chunked_reading():
    from rlm.utils.prompts import CHUNK_STEP, small_model_steps, tally_options

    for question in (
        "What is the access code for warehouse Jasper?",  # no count
        "How many messages are about billing?",  # a count, but no list of kinds
        "Which is the most common: see the list at the end.",  # a colon, then no list
        None,
    ):
        assert tally_options(question) == []
        step_2, step_3 = small_model_steps(question)
        assert step_2.startswith("To find a fact") and step_3 == CHUNK_STEP


def test_a_model_that_copies_the_tally_example_counts_every_line():
    """The tally example is code that runs: a root model that copies it verbatim gets a
    count of every line's label from the sub-model, through the real loop."""
    import re

    from rlm import RLM

    lines = [
        *[f"Message {n}: I was charged twice for order {n}, please refund." for n in range(3)],
        *[f"Message {n}: The courier left my parcel {n} at the wrong door." for n in range(5)],
        "Message 9: Thank you so much, the new dashboard is wonderful!",
    ]
    # Answers as a small sub-model gives them: each counts as the first listed name in it.
    labels = {"charged": "Billing.", "courier": " delivery", "Thank": "It is about praise."}

    seen = []

    def root(messages):
        seen.append(messages)
        if len(messages) <= 3:  # first turn: copy step 2's example
            system = messages[0]["content"]
            return re.search(r"2\. .*?(```repl\n.*?```)", system, re.S).group(1)
        output = messages[-2]["content"]
        return (
            "FINAL("
            + max(re.findall(r"'(\w+)': (\d+)", output), key=lambda kv: int(kv[1]))[0]
            + ")"
        )

    def sub(messages):
        line, ask = messages[-1]["content"].split("\n", 1)
        assert (
            line.startswith("Line: Message ")
            and "Which one of these topics is the line about?" in ask
        )
        return next(label for word, label in labels.items() if word in line)

    rlm = RLM(
        backend="scripted",
        backend_kwargs={"responses": root, "sub_responses": sub, "model_name": "scripted"},
        small_model=True,
        verify_answer=False,
    )
    result = rlm.completion("\n".join(lines), root_prompt=TALLY_QUESTION)
    assert result.response == "delivery"
    shown = "\n".join(str(m["content"]) for m in seen[-1])
    for counted in ("'delivery': 5", "'billing': 3", "'praise': 1"):
        assert counted in shown
    assert "hold none of the text" not in shown  # each prompt carries its line
    assert "Note: these are the counts of every line's kind" in shown  # answer now
