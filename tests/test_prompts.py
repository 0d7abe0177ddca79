"""System prompts: rlms' template rules for a user's custom_system_prompt."""

from __future__ import annotations

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


def test_names_are_capitalised_runs_inside_sentences():
    from rlm.utils.prompts import names_in

    line = "2024-03-05T10:57:00Z NOTE [ops] Pavel Ferreira works for Haltrax Foods."
    assert names_in(line) == ["Pavel Ferreira", "Haltrax Foods"]  # NOTE is a tag
    assert names_in("The project Raven-24 is run by Halmont Works.") == [
        "Raven-24",
        "Halmont Works",
    ]
    assert names_in("Rome, Oslo. Bern") == ["Oslo"]  # "Rome" and "Bern" start sentences
