"""The loop for small models (issue 13): stopping at the end of a block, feedback on common
mistakes, the answer check, sub-calls too large for the sub-model's window, and the small
model's prompt and compaction. Each is tested on and off; off is rlms' behaviour.

Driven by the scripted LM through a real handler and a real LocalREPL, and by the real
OpenAI client against a loopback server that honours ``stop`` as providers do.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import rlm.core.rlm as core
from rlm import RLM
from rlm.clients.base_lm import with_stop
from rlm.clients.scripted import ScriptedLM
from rlm.utils import feedback
from rlm.utils.exceptions import ConfigurationError
from rlm.utils.prompts import RLM_SYSTEM_PROMPT, SMALL_MODEL_SYSTEM_PROMPT
from rlm.utils.token_utils import count_tokens


def block(code: str) -> str:
    return f"```repl\n{code}\n```"


def make_rlm(responses, sub_responses=None, model_name="scripted", **kwargs) -> RLM:
    backend_kwargs = {"responses": responses, "model_name": model_name}
    if sub_responses is not None:
        backend_kwargs["sub_responses"] = sub_responses
    return RLM(backend="scripted", backend_kwargs=backend_kwargs, **kwargs)


def root_calls(rlm: RLM) -> list[list[dict]]:
    return [m for m in rlm.client.calls if m and m[0].get("role") == "system"]


def sub_calls(rlm: RLM) -> list[list[dict]]:
    return [m for m in rlm.client.calls if not (m and m[0].get("role") == "system")]


def last_user_text(messages: list[dict]) -> str:
    return "\n".join(str(m["content"]) for m in messages if m["role"] == "user")


IMAGINED = (
    "I will search.\n"
    + block("hits = [l for l in context.splitlines() if 'vault' in l]\nprint(len(hits))")
    + "\nREPL output:\n14\nFINAL(imagined 999)\n"
)


# ---------------------------------------------------------------------------
# Which models get the small-model loop
# ---------------------------------------------------------------------------


class Named:
    def __init__(self, name: str):
        self.model_name = name


@pytest.mark.parametrize(
    "name, small",
    [
        ("qwen2.5-coder-1.5b-instruct", True),
        ("Qwen/Qwen2.5-0.5B-Instruct", True),
        ("gemma-2-2b-it", True),
        ("qwen3-4b", True),
        ("llama-3.1-8b-instruct", False),
        ("mixtral-8x7b", False),
        ("gpt-4o-mini", False),
        ("qwen2.5-72b", False),
        ("scripted", False),
        ("mock-model", False),
    ],
)
def test_small_models_are_known_by_their_parameter_count(name, small):
    assert feedback.is_small_model("openai", Named(name)) is small


def test_the_embedded_backend_is_small_whatever_its_name():
    assert feedback.is_small_model("llama_cpp", Named("my-model"))


# ---------------------------------------------------------------------------
# Stopping at the end of the first block
# ---------------------------------------------------------------------------


def test_cut_drops_what_follows_the_first_complete_block():
    cut = feedback.cut_after_first_block(IMAGINED)
    assert cut.endswith("print(len(hits))\n```")
    assert "REPL output" not in cut and "FINAL" not in cut


def test_cut_keeps_text_without_a_complete_block_or_with_nothing_after_it():
    for text in ["FINAL(42)", "```repl\nx = 1\n", block("x = 1") + "\n\n  \n", ""]:
        assert feedback.cut_after_first_block(text) == text


def test_cut_does_not_end_a_block_at_a_fence_inside_a_string():
    code = 's = """\n```\n"""\nprint(s)'
    text = block(code) + "\nREPL output: made up"
    assert feedback.cut_after_first_block(text) == block(code)


def test_close_open_fence_puts_back_a_fence_a_stop_sequence_removed():
    assert feedback.close_open_fence("Look:\n```repl\nprint(1)") == "Look:\n```repl\nprint(1)\n```"
    assert feedback.close_open_fence(block("print(1)")) == block("print(1)")
    assert feedback.close_open_fence("FINAL(x)") == "FINAL(x)"


def test_off_every_block_runs_and_a_final_line_after_them_counts_as_in_rlms():
    log: list[int] = []
    response = block("record(1)") + "\n" + block("record(2)") + "\nFINAL(from the prose)"
    rlm = make_rlm([response, "never"], custom_tools={"record": log.append})
    assert rlm.completion("c").response == "from the prose"
    assert log == [1, 2]


def test_on_only_the_first_block_runs_and_imagined_output_is_dropped():
    log: list[int] = []
    response = block("record(1)") + "\n" + block("record(2)") + "\nFINAL(from the prose)"
    rlm = make_rlm(
        [response, "FINAL(after real output)"],
        custom_tools={"record": log.append},
        stop_at_block_end=True,
    )
    result = rlm.completion("c")
    assert result.response == "after real output"
    assert log == [1]
    second = root_calls(rlm)[1]
    assistant = [m["content"] for m in second if m["role"] == "assistant"]
    assert assistant == [block("record(1)")]  # the history holds the cut response


def test_imagined_output_answers_the_run_off_and_never_on():
    context = "line one\nthe vault code is 4417\nline three"
    off = make_rlm([IMAGINED, "never"])
    assert off.completion(context).response == "imagined 999"
    on = make_rlm([IMAGINED, "FINAL(4417)"], stop_at_block_end=True)
    assert on.completion(context).response == "4417"
    shown = last_user_text(root_calls(on)[1])
    assert "REPL output:\n\n1" in shown  # the real count, not the imagined 14


@pytest.mark.parametrize(
    "code",
    ["answer['content'] = 'direct'\nanswer['ready'] = True", "x = 'direct'\nFINAL_VAR('x')"],
)
def test_on_a_first_block_that_answers_still_ends_the_run(code):
    rlm = make_rlm([block(code) + "\nREPL output: junk\nFINAL(junk)"], stop_at_block_end=True)
    assert rlm.completion("c").response == "direct"


def test_on_a_final_line_without_a_block_still_ends_the_run():
    rlm = make_rlm(["The answer is known.\nFINAL(plain)"], stop_at_block_end=True)
    assert rlm.completion("c").response == "plain"


def test_small_model_names_get_the_stop_by_default_and_others_do_not():
    small = make_rlm([IMAGINED, *["FINAL(real)"] * 4], model_name="qwen2.5-coder-1.5b-instruct")
    assert small.completion("vault").response == "real"
    assert root_calls(small)[0][0]["content"].startswith(SMALL_MODEL_SYSTEM_PROMPT[:60])
    assert any("Check your answer" in m["content"] for m in root_calls(small)[-1])
    large = make_rlm([IMAGINED], model_name="big-model")
    assert large.completion("vault").response == "imagined 999"
    assert root_calls(large)[0][0]["content"].startswith(RLM_SYSTEM_PROMPT[:60])


def test_stop_at_block_end_false_wins_over_a_small_model():
    rlm = make_rlm(
        [IMAGINED],
        model_name="qwen2.5-coder-1.5b-instruct",
        stop_at_block_end=False,
        verify_answer=False,
    )
    assert rlm.completion("vault").response == "imagined 999"


def test_with_stop_adds_to_the_clients_own_stop_sequences():
    assert with_stop({"temperature": 0}, None) == {"temperature": 0}
    assert with_stop({"stop": "END"}, ["\n```\n"]) == {"stop": ["END", "\n```\n"]}
    assert with_stop({"stop": ["\n```\n"]}, ["\n```\n"]) == {"stop": ["\n```\n"]}


def test_a_client_that_takes_no_stop_is_called_as_before():
    client = ScriptedLM(responses=["one\n```\ntwo"])
    assert not client.accepts_stop
    assert client.generate("hi", stop=["\n```\n"]).text == "one\n```\ntwo"


# A loopback OpenAI-compatible server that stops where asked, as providers do.


class StopHonouringServer(BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(body)
        messages = body["messages"]
        text = self.server.root.pop(0) if messages[0]["role"] == "system" else "sub answer"
        for stop in body.get("stop") or []:
            if stop in text:
                text = text[: text.index(stop)]  # the stop sequence itself is not returned
        reply = {
            "id": "stub",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": text},
                }
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        }
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def stop_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), StopHonouringServer)
    server.requests = []
    server.root = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def openai_rlm(server, model_name="qwen2.5-coder-1.5b-instruct", **kwargs) -> RLM:
    return RLM(
        backend="openai",
        backend_kwargs={
            "model_name": model_name,
            "base_url": f"http://127.0.0.1:{server.server_port}/v1",
            "api_key": "local",
        },
        **{"verify_answer": False, **kwargs},
    )


def test_a_stop_sequence_goes_to_the_provider_and_the_block_still_runs(stop_server):
    stop_server.root = [
        block("print(llm_query('say: ' + context))") + "\nREPL output:\nimagined",
        "FINAL(done)",
    ]
    result = openai_rlm(stop_server).completion("the text")
    assert result.response == "done"
    root, sub = stop_server.requests[0], stop_server.requests[1]
    assert root["stop"] == [feedback.BLOCK_END_STOP]
    assert "stop" not in sub  # sub-calls are not cut
    second_root = stop_server.requests[2]["messages"]
    assert second_root[-3]["content"] == block("print(llm_query('say: ' + context))")
    assert "sub answer" in second_root[-2]["content"]  # the block ran: its real output


def test_no_stop_sequence_when_the_option_is_off(stop_server):
    stop_server.root = ["FINAL(done)"]
    openai_rlm(stop_server, model_name="gpt-4o-mini").completion("c")
    assert "stop" not in stop_server.requests[0]
    stop_server.root = ["FINAL(done)"]
    openai_rlm(stop_server, stop_at_block_end=False).completion("c")
    assert "stop" not in stop_server.requests[1]


# ---------------------------------------------------------------------------
# A search that matched nothing
# ---------------------------------------------------------------------------

SEARCH = "hits = [l for l in context.splitlines() if 'Zephyr' in l.lower()]\nprint(len(hits), hits)"


@pytest.mark.parametrize(
    "code, stdout",
    [
        (SEARCH, "0 []\n"),
        ("print(context.find('zephyr'))", "-1\n"),
        ("print(context.count('zephyr'))", "0\n"),
        ("import re\nprint(re.search('zephyr', context))", "None\n"),
        ("import re\nprint(re.findall('zephyr', context))", "[]\n"),
        ("hits = [l for l in lines if 'zephyr' in l]\nprint('Matches:', len(hits))", "Matches: 0"),
        ("for line in context.splitlines():\n    if 'zephyr' in line:\n        print(line)", ""),
    ],
)
def test_an_empty_search_result_gets_a_note(code, stdout):
    note = feedback.search_miss_note(code, stdout)
    assert note is not None and "matched nothing" in note


@pytest.mark.parametrize(
    "code, stdout, error",
    [
        ("print([])", "[]\n", None),  # no search
        ("print(context.count('a'))", "3\n", None),  # found something
        ("hits = [l for l in ls if 'a' in l]\nprint(hits)", "['a line']\n", None),
        ("print(context.find('a'))", "-1\n", "NameError: context"),  # failed: its own error
        ("hits = [l for l in ls if 'a' in l]", "", None),  # printed nothing
        ("for l in ls:\n    if 'a' in l:\n        n += 1", "", None),  # prints no hits
        ("x = [n for n in ns if n > 3]\nprint(x)", "[]\n", None),  # a filter, not a search
        ("print(context.find('a'))\nprint(context[:50])", "-1\nsome text of the context", None),
    ],
)
def test_other_outputs_get_no_note(code, stdout, error):
    assert feedback.search_miss_note(code, stdout, error) is None


def test_a_keyword_with_capitals_against_lowercased_text_is_named():
    note = feedback.search_miss_note(SEARCH, "0 []\n")
    assert "'Zephyr' has capital letters" in note and "write 'zephyr'" in note


def test_capitals_against_lowercased_text_are_named_whatever_the_output():
    code = "n = sum(1 for l in context.splitlines() if 'Zephyr' in l.lower())\nprint('lines', 40)"
    note = feedback.search_miss_note(code, "lines 40\n")
    assert note.startswith("Note: 'Zephyr' has capital letters") and "matched nothing" not in note


def test_an_already_case_insensitive_search_gets_other_advice():
    code = "hits = [l for l in context.splitlines() if 'zephyr' in l.lower()]\nprint(hits)"
    note = feedback.search_miss_note(code, "[]\n")
    assert "shorter keyword" in note and "case-insensitive" not in note


def test_the_note_reaches_the_model_with_feedback_on_and_not_off():
    context = "2024-01-01 warehouse zephyr code 7731\n2024-01-02 nothing"
    on = make_rlm([block(SEARCH), "FINAL(x)"], feedback=True)
    on.completion(context)
    assert "'Zephyr' has capital letters" in last_user_text(root_calls(on)[1])
    off = make_rlm([block(SEARCH), "FINAL(x)"])
    off.completion(context)
    assert "matched nothing" not in last_user_text(root_calls(off)[1])


def test_a_name_no_block_set_gets_a_note_with_feedback_on_and_not_off():
    """A small model copies an example's last lines without the ones that set its
    variables: the failure says which name is missing and what a block can see."""
    code = "labels = llm_query_batched([ask + line for line in context.split()])"
    on = make_rlm([block(code), "FINAL(x)"], feedback=True)
    on.completion("some context")
    shown = last_user_text(root_calls(on)[1])
    assert "NameError: name 'ask' is not defined" in shown
    assert "Note: `ask` is not defined." in shown and "the line that sets `ask`" in shown
    off = make_rlm([block(code), "FINAL(x)"])
    off.completion("some context")
    assert "Note: `ask`" not in last_user_text(root_calls(off)[1])
    assert feedback.undefined_name_note("ValueError: bad") is None


COUNT_QUESTION = (
    "Every line is a message about one topic. The topics are: billing (payments), "
    "delivery (parcels) or praise. How many messages are about billing? Answer with a number."
)


MESSAGES = "Message 1: refund me\n\nMessage 2: where is my parcel\nMessage 3: thanks!"
TALLY = (
    "labels = llm_query_batched(['Line: ' + line for line in context.splitlines() if line.strip()])\n"
    "print({'billing': 1, 'delivery': 1, 'praise': 1})"
)


def tally_shown(code: str, question: str = COUNT_QUESTION, small: bool = True) -> str:
    rlm = make_rlm(
        [block(code), "FINAL(1)"],
        sub_responses=lambda messages: "billing",
        small_model=small,
        verify_answer=False,
    )
    assert rlm.completion(MESSAGES, root_prompt=question).response == "1"
    return last_user_text(root_calls(rlm)[1])


def test_counts_after_asking_about_every_line_ask_a_small_model_to_answer_now():
    """Small models printed the tally's counts, then searched on until their turns ran
    out: the note restates the question and asks for the answer from the counts."""
    shown = tally_shown(TALLY)
    assert "{'billing': 1, 'delivery': 1, 'praise': 1}" in shown
    assert "Note: these are the counts of every line's kind" in shown
    assert "The question: Every line is a message" in shown  # restated


def test_the_counts_are_restated_each_turn_until_an_answer_comes():
    """After the answer-now note, small models searched on for eight turns, the counts
    ever further back: each later turn restates them, until an answer is submitted."""
    search = "print([l for l in context.splitlines() if 'zzz' in l.lower()])"
    rlm = make_rlm(
        [block(TALLY), block(search), block(search), "FINAL(1)"],
        sub_responses=lambda messages: "billing",
        small_model=True,
        verify_answer=False,
    )
    assert rlm.completion(MESSAGES, root_prompt=COUNT_QUESTION).response == "1"
    calls = root_calls(rlm)
    assert "Note: turn 1 printed" not in last_user_text(calls[1])  # the note itself, then
    for later in calls[2:4]:
        shown = later[-2]["content"]  # the REPL output of the search, with its notes
        assert "Note: turn 1 printed the counts of every line's kind:\n{'billing': 1," in shown
        assert "The question:" not in shown  # the turn's own prompt restates it
        assert 'Answer it from the counts now: set answer["content"]' in shown
    # The repeated search offers no search of its own: the counts are the way on.
    repeat = calls[3][-2]["content"]
    assert "same code as your previous block" in repeat
    assert "the counts the tally printed answer the question" in repeat
    assert "for name in" not in repeat
    # A tally whose counts do not answer (the answers were sentences) is not restated.
    few = TALLY.replace("'delivery': 1, 'praise': 1", "'praise': 1, 'other': 1")
    again = make_rlm(
        [block(few), block(search), "FINAL(1)"],
        sub_responses=lambda messages: "billing",
        small_model=True,
        verify_answer=False,
    )
    again.completion(MESSAGES, root_prompt=COUNT_QUESTION)
    assert "printed the counts" not in last_user_text(root_calls(again)[2])


def test_a_reply_without_a_block_after_the_counts_still_gets_them_restated():
    """Seed 2 of OOLONG 4x: after the counts, four replies of prose with no block and no
    answer got no note at all (notes rode on a REPL output there was none of)."""
    prose = "I have looked at the counts. The next step is to look at the counts."
    rlm = make_rlm(
        [block(TALLY), prose, "FINAL(1)"],
        sub_responses=lambda messages: "billing",
        small_model=True,
        verify_answer=False,
    )
    assert rlm.completion(MESSAGES, root_prompt=COUNT_QUESTION).response == "1"
    third = root_calls(rlm)[2]
    assert third[-3] == {"role": "assistant", "content": prose}
    note = third[-2]
    assert note["role"] == "user"
    assert note["content"].startswith("Note: turn 1 printed the counts of every line's kind:")
    assert 'Answer it from the counts now: set answer["content"]' in note["content"]


def test_counts_that_hold_few_of_the_answers_ask_for_the_tally_again():
    """The copied prompt lost its last line and the answers were sentences: counting the
    few that named a kind would give a wrong answer, so the note says so."""
    code = TALLY.replace(
        "{'billing': 1, 'delivery': 1, 'praise': 1}", "{'billing': 1, 'praise': 1, 'other': 1}"
    )
    shown = tally_shown(code)
    assert "answer it from the counts" not in shown.lower()
    assert "Note: only 2 of the 3 answers name one of the listed kinds" in shown
    assert 'Each prompt must end with the line "Answer with one word: the topic\'s name."' in shown


def test_no_tally_note_for_counts_the_question_cannot_be_answered_from():
    note = "counts of every line's kind"
    # Counts of keywords (no sub-call read the lines), and of a sample of them.
    assert note not in tally_shown("print({'billing': 2, 'delivery': 1})")
    sample = "llm_query_batched(['Line: ' + context.splitlines()[0]])\nprint({'billing': 1, 'praise': 0})"
    assert note not in tally_shown(sample)
    # A question that lists no kinds, one about pairs, and rlms' loop (small_model off).
    assert note not in tally_shown(TALLY, "How many messages are there?")
    pairs = (
        COUNT_QUESTION.split(" How many")[0] + " List every pair of users who wrote about billing."
    )
    assert note not in tally_shown(TALLY, pairs)  # kinds listed; counts do not list pairs
    assert note not in tally_shown(TALLY, small=False)


def test_the_tally_note_needs_counts_of_two_listed_kinds():
    kinds = ["billing", "delivery", "praise"]
    every = {"asked": 3, "lines": 3}
    assert feedback.tally_note(kinds, None, '{"Billing": 3, "delivery": 4}', **every)
    assert feedback.tally_note(kinds, None, "{'billing': 3}", **every) is None  # one kind
    assert feedback.tally_note(kinds, None, "{'sync': 3, 'error': 4}", **every) is None
    assert feedback.tally_note(kinds, None, "billing: 3, delivery: 4", **every) is None
    assert feedback.tally_note([], None, "{'billing': 3, 'delivery': 4}", **every) is None
    assert feedback.tally_note(kinds, None, "{'billing': 3, 'delivery': 4}", 2, 3) is None


def test_the_note_is_not_written_into_the_blocks_output(tmp_path):
    from rlm.logger import RLMLogger

    rlm = make_rlm([block(SEARCH), "FINAL(x)"], feedback=True, logger=RLMLogger(log_dir=tmp_path))
    result = rlm.completion("no such word here")
    stdout = result.metadata["iterations"][0]["code_blocks"][0]["result"]["stdout"]
    assert stdout == "0 []\n"


def test_code_in_a_python_block_gets_told_that_only_repl_blocks_run():
    python = "```python\nprint(len(context))\n```"
    on = make_rlm([python, "FINAL(x)"], feedback=True)
    on.completion("c")
    assert "Only blocks that start with ```repl run" in last_user_text(root_calls(on)[1])
    off = make_rlm([python, "FINAL(x)"])
    off.completion("c")
    assert "Only blocks" not in last_user_text(root_calls(off)[1])
    plain = make_rlm(["Thinking about it.", "FINAL(x)"], feedback=True)
    plain.completion("c")
    assert "Only blocks" not in last_user_text(root_calls(plain)[1])


# ---------------------------------------------------------------------------
# llm_query without the context
# ---------------------------------------------------------------------------

LOG = "\n".join(f"2024-03-{d:02d} INFO shipment {d} left dock {d % 7}" for d in range(1, 29))
LOG += "\n2024-03-29 INFO the access code for warehouse Zephyr is 7731"


def test_text_index_finds_pieces_of_the_context_however_they_are_cased():
    index = feedback.TextIndex(LOG)
    assert index.holds("Read this:\n" + LOG[300:700])
    assert index.holds(LOG[300:700].upper())
    assert index.holds("Question?  " + "  ".join(LOG.splitlines()[5:8]))
    assert not index.holds("What is the access code for the blue depot in the north?")
    asked = feedback.TextIndex(LOG, question="What is the access code for warehouse Zephyr?")
    assert feedback.TextIndex(LOG).holds("What is the access code for warehouse Zephyr?")
    assert not asked.holds("What is the access code for warehouse Zephyr?")
    assert asked.holds("What is the access code for warehouse Zephyr? " + LOG[-60:])
    index.add(["an answer from a sub-call about the harbour and its cranes"])
    assert index.holds("Combine: an answer from a sub-call about the harbour and its cranes")


def test_a_context_too_large_to_index_gets_no_note_and_no_check(monkeypatch):
    monkeypatch.setattr(feedback, "MAX_INDEX_CHARS", 100)
    index = feedback.TextIndex(LOG)
    assert index.holds("What is the access code for the blue depot in the north?")
    assert index.too_large and feedback.grounded("9999", index)


def test_text_index_reads_lists_and_dicts():
    index = feedback.TextIndex({"docs": ["first document about owls and their habits", 42]})
    assert index.holds("Summarise: first document about owls and their habits")


def test_a_prompt_without_the_context_gets_a_warning_in_the_output():
    code = "print(llm_query('What is the access code for warehouse Zephyr?'))"
    rlm = make_rlm([block(code), "FINAL(x)"], sub_responses=["1234"], feedback=True)
    rlm.completion(LOG, root_prompt="What is the access code for warehouse Zephyr?")
    shown = last_user_text(root_calls(rlm)[1])
    assert "Warning: an llm_query prompt holds none of the text of `context`" in shown
    assert "What is the access code" in shown


def test_a_prompt_with_a_chunk_of_the_context_gets_no_warning():
    code = (
        "lines = [l for l in context.splitlines() if 'zephyr' in l.lower()]\n"
        "print(llm_query_batched(['What is the code? ' + l for l in lines]))"
    )
    rlm = make_rlm([block(code), "FINAL(x)"], sub_responses=["7731"], feedback=True)
    rlm.completion(LOG)
    assert "Warning" not in last_user_text(root_calls(rlm)[1])


def test_no_warning_with_feedback_off():
    code = "print(llm_query('What is the access code for warehouse Zephyr?'))"
    rlm = make_rlm([block(code), "FINAL(x)"], sub_responses=["1234"])
    rlm.completion(LOG)
    assert "Warning" not in last_user_text(root_calls(rlm)[1])


# ---------------------------------------------------------------------------
# The answer check
# ---------------------------------------------------------------------------


def test_grounded_answers():
    index = feedback.TextIndex(LOG)
    assert feedback.grounded("7731", index)
    assert feedback.grounded("The access code is 7731.", index)
    assert feedback.grounded("yes", index)  # nothing to judge
    assert not feedback.grounded("9999", index)
    assert not feedback.grounded("Samir works in San Francisco", index)
    assert feedback.grounded("9999", index, ["the total is 9999"])


def test_an_answer_found_nowhere_goes_back_once_then_is_accepted():
    rlm = make_rlm(["FINAL(9999)", "FINAL(still 9999)"], verify_answer=True)
    assert rlm.completion(LOG).response == "still 9999"
    calls = root_calls(rlm)
    assert len(calls) == 2
    assert "was not accepted yet" in calls[1][-2]["content"]


def test_an_answer_in_the_context_is_accepted_at_once():
    rlm = make_rlm(["FINAL(7731)", "never"], verify_answer=True)
    assert rlm.completion(LOG).response == "7731"
    assert len(root_calls(rlm)) == 1


def test_an_answer_from_a_sub_call_or_earlier_output_is_accepted():
    computed = block("n = 6 * 7\nprint(n)")
    rlm = make_rlm([computed, "FINAL(42)"], verify_answer=True)
    assert rlm.completion("no numbers here").response == "42"
    assert len(root_calls(rlm)) == 2
    asked = block(
        "a = llm_query('Text: ' + context)\nanswer['content'] = a\nanswer['ready'] = True"
    )
    rlm = make_rlm([asked], sub_responses=["Lisbon"], verify_answer=True)
    assert rlm.completion("a city far away").response == "Lisbon"


def test_printing_the_answer_in_its_own_block_does_not_prove_it():
    code = "answer['content'] = '9999'\nprint(answer['content'])\nanswer['ready'] = True"
    rlm = make_rlm([block(code), "FINAL(7731)"], verify_answer=True)
    assert rlm.completion(LOG).response == "7731"


def test_a_structured_answer_is_not_checked():
    rlm = make_rlm(['FINAL({"n": 9999})', "never"], verify_answer=True)
    result = rlm.completion(LOG, response_format={"type": "object", "properties": {"n": {}}})
    assert result.parsed == {"n": 9999}


def test_no_check_by_default():
    rlm = make_rlm(["FINAL(9999)", "never"])
    assert rlm.completion(LOG).response == "9999"


# ---------------------------------------------------------------------------
# Sub-calls larger than the sub-model's window
# ---------------------------------------------------------------------------


def test_window_refusal_names_the_estimate_and_the_window():
    assert feedback.window_refusal(100, 8192) is None
    text = feedback.window_refusal(9000, 8192)
    assert "9,000 tokens" in text and "8,192 tokens" in text and "llm_query_batched" in text


def test_a_sub_call_over_sub_window_tokens_gets_an_error_and_is_not_sent():
    code = "r = llm_query('Read: ' + context)\nrs = llm_query_batched(['a', context])\nprint(r, rs)"
    rlm = make_rlm([block(code), "FINAL(x)"], sub_responses=lambda m: "sub", sub_window_tokens=500)
    rlm.completion("word " * 2000)  # about 2,500 tokens
    shown = last_user_text(root_calls(rlm)[1])
    assert "Error: the prompt is about 2,5" in shown and "window of 500 tokens" in shown
    assert "llm() call failed - the prompt is about" in shown
    assert [m[-1]["content"] for m in sub_calls(rlm)] == ["a"]  # only the small one went out


def test_without_a_known_window_sub_calls_go_out_whatever_their_size():
    code = "print(llm_query('Read: ' + context)[:20])"
    rlm = make_rlm([block(code), "FINAL(x)"], sub_responses=lambda m: "sub ok")
    rlm.completion("word " * 2000)
    assert len(sub_calls(rlm)) == 1
    assert "sub ok" in last_user_text(root_calls(rlm)[1])


class WindowedLM(ScriptedLM):
    """A scripted model that knows its window, as the llama.cpp client does (n_ctx)."""

    context_window = 1000


def test_the_window_of_the_client_is_the_default(monkeypatch):
    made: list[WindowedLM] = []

    def get_client(backend, kwargs):
        made.append(WindowedLM(**kwargs))
        return made[-1]

    monkeypatch.setattr(core, "get_client", get_client)
    code = "print(llm_query('Read: ' + context))"
    rlm = make_rlm([block(code), "FINAL(x)"], sub_responses=lambda m: "sub", small_model=False)
    rlm.completion("word " * 2000)
    assert "window of 1,000 tokens" in last_user_text(root_calls(rlm)[1])


# ---------------------------------------------------------------------------
# The small model's prompt, output and compaction
# ---------------------------------------------------------------------------


def test_the_small_prompt_leaves_most_of_an_8k_window_for_the_history():
    rlm = make_rlm(["FINAL(x)"], small_model=True, verify_answer=False)
    rlm.completion("c", root_prompt="What is the code?")
    setup = root_calls(rlm)[0]
    assert count_tokens(setup) < 700
    assert "Never write the output yourself" in setup[0]["content"]
    tally = make_rlm(["FINAL(x)"], small_model=True, verify_answer=False)
    from benchmarks.longcontext.tasks import QUESTIONS

    tally.completion("c", root_prompt=QUESTIONS["most"])  # a tally example, kinds listed
    assert count_tokens(root_calls(tally)[0]) < 1000


def test_a_custom_system_prompt_is_kept_for_a_small_model():
    rlm = make_rlm(
        ["FINAL(x)"], small_model=True, verify_answer=False, custom_system_prompt="Mine."
    )
    rlm.completion("c")
    assert root_calls(rlm)[0][0]["content"].startswith("Mine.")


def test_a_small_model_with_a_known_window_is_compacted_before_it_overflows(monkeypatch):
    window = 3000

    def get_client(backend, kwargs):
        client = ScriptedLM(**kwargs)
        client.context_window = window
        return client

    monkeypatch.setattr(core, "get_client", get_client)

    turns: list[int] = []

    def root(messages):
        if "summary of your progress" in messages[-1]["content"]:
            return "Summary: printed chunks 1 to n."
        turns.append(1)
        return "FINAL(done)" if len(turns) > 6 else block("print(context[:6000])")

    rlm = make_rlm(root, small_model=True, max_iterations=10)
    assert rlm.completion("x" * 20000).response == "done"
    calls = root_calls(rlm)
    assert any("summary of your progress" in c[-1]["content"] for c in calls)
    assert max(count_tokens(c) for c in calls) < window
    outputs = [m["content"] for c in calls for m in c if "REPL output" in str(m["content"])]
    assert outputs and max(len(o) for o in outputs) < 2500  # half the window, in characters


def test_off_the_history_is_neither_cut_nor_compacted(monkeypatch):
    def get_client(backend, kwargs):
        client = ScriptedLM(**kwargs)
        client.context_window = 3000
        return client

    monkeypatch.setattr(core, "get_client", get_client)
    script = [block("print(context[:6000])")] * 3 + ["FINAL(done)"]
    rlm = make_rlm(script, small_model=False)
    rlm.completion("x" * 20000)
    calls = root_calls(rlm)
    assert not any("summary of your progress" in c[-1]["content"] for c in calls)
    assert max(count_tokens(c) for c in calls) > 3000  # rlms' behaviour: it grows


# ---------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sub_window_tokens": 0},
        {"sub_window_tokens": "8k"},
        {"stop_at_block_end": "yes"},
        {"feedback": 1.5},
        {"small_model": "auto"},
    ],
)
def test_bad_values_raise_at_construction(kwargs):
    with pytest.raises(ConfigurationError):
        RLM(backend="scripted", backend_kwargs={"responses": ["x"]}, **kwargs)


def test_children_get_the_options():
    rlm = make_rlm(["x"], stop_at_block_end=True, verify_answer=True, sub_window_tokens=900)
    child = rlm.config.child_arguments()
    assert child["stop_at_block_end"] is True and child["verify_answer"] is True
    assert child["sub_window_tokens"] == 900 and child["small_model"] is None


# ---------------------------------------------------------------------------
# The embedded model honours the stop sequence
# ---------------------------------------------------------------------------


@pytest.mark.real_model
def test_the_embedded_model_stops_at_the_end_of_its_block():
    try:
        from tests.llama_server import real_model_or_skip
    except ImportError:  # pragma: no cover - tests/ on sys.path
        from llama_server import real_model_or_skip
    from rlm.clients.llama_cpp import LlamaCppClient
    from rlm.utils.parsing import find_code_blocks

    path = real_model_or_skip()
    client = LlamaCppClient(
        model_path=path, n_ctx=2048, sampling_args={"temperature": 0, "max_tokens": 80}
    )
    assert client.accepts_stop
    text = "```repl\nprint(6 * 7)\n```\nOutput: 42\nDone."
    prompt = [
        {"role": "system", "content": "You repeat texts exactly, with nothing else."},
        {"role": "user", "content": f"Repeat this text exactly:\n\n{text}"},
    ]
    whole = client.generate(prompt).text
    assert "Output: 42" in whole  # without the stop sequence it writes on
    stopped = client.generate(prompt, stop=[feedback.BLOCK_END_STOP]).text
    assert "print(6 * 7)" in stopped and "Output" not in stopped
    assert find_code_blocks(feedback.close_open_fence(stopped)) == ["print(6 * 7)"]


def test_a_small_models_first_answer_goes_back_once_with_the_question():
    """The embedded model often submits the first hop (the company) when the question asks
    for the company's city: its first answer goes back once, with the question restated."""
    context = "Amara Weiss works for Dramont Labs.\nDramont Labs is headquartered in Leuven."
    question = "In which city is the company that Amara Weiss works for headquartered?"
    search = "print([l for l in context.splitlines() if {!r} in l.lower()])"
    rlm = make_rlm(
        [
            block(search.format("amara weiss")),
            "FINAL(Dramont Labs)",
            block(search.format("dramont labs")),
            "FINAL(Leuven)",
            "FINAL(Leuven)",
        ],
        small_model=True,
    )
    assert rlm.completion(context, root_prompt=question).response == "Leuven"
    checks = [m["content"] for m in root_calls(rlm)[-1] if "Check your answer" in m["content"]]
    assert len(checks) == 2 and question in checks[0] and "'Dramont Labs'" in checks[0]
    assert "not in the context" not in checks[0]  # the output did show it
    # The check suggests a search for the answer itself (the next hop).
    assert "for name in ['dramont labs']:" in checks[0]
    # A changed answer is checked again; the same answer twice is final.
    assert "'Leuven'" in checks[1] and len(rlm.client.calls) == 5

    # An answer nothing showed is named as such; a large model is not asked (verify off),
    # and verify_answer=False turns the check off for a small one.
    # An answer in neither the context nor an output goes back even when repeated, up to
    # three times (the check's own search prints it: that does not count).
    guess = make_rlm(["FINAL(Oslo)"] * 4, small_model=True)
    assert guess.completion(context, root_prompt=question).response == "Oslo"
    assert len(guess.client.calls) == 4
    assert "You gave this answer before" in " ".join(m["content"] for m in root_calls(guess)[-1])
    last = " ".join(m["content"] for m in root_calls(guess)[-1])
    assert "not in the context or in any REPL output" in last
    for rlm in (
        make_rlm(["FINAL(x)"]),
        make_rlm(["FINAL(x)"], small_model=True, verify_answer=False),
    ):
        assert rlm.completion(context, root_prompt=question).response == "x"
        assert len(rlm.client.calls) == 1


def test_a_repeated_block_is_named_with_the_names_not_searched_yet():
    """The embedded model, stuck, runs the same search again and again: the note says the
    output cannot change and offers a search for the chain's next name."""
    context = (
        "Henrik Berg leads the project Raven-24.\nOn a quiet Sunday morning nothing happened.\n"
        "The project Raven-24 is run by Halmont Works.\nHalmont Works is headquartered in Oslo."
    )
    question = (
        "In which city is the company that runs the project led by Henrik Berg headquartered?"
    )
    search = block("print([l for l in context.splitlines() if 'raven-24' in l.lower()])")
    rlm = make_rlm([search, search, "FINAL(Oslo)", "FINAL(Oslo)"], small_model=True)
    assert rlm.completion(context, root_prompt=question).response == "Oslo"
    third = " ".join(m["content"] for m in root_calls(rlm)[2])
    assert "same code as your previous block" in third
    assert "for name in ['halmont works']:" in third  # not "sunday": nothing asked about it
    assert "same code" not in " ".join(m["content"] for m in root_calls(rlm)[1])


def test_next_names_follow_the_chain_and_skip_unrelated_text():
    from rlm.utils.feedback import answer_searches, next_names

    question = "In which city is the company that Amara Weiss works for headquartered?"
    peek = "A painter met The Mayor on a Sunday. Nobody came."
    hit = "1\n['Amara Weiss works for Dramont Labs.']\n"
    assert next_names(question, [peek, hit]) == ["dramont labs"]
    assert next_names(question, [peek]) == []
    assert answer_searches("Dramont Labs", question, [peek, hit]) == ["dramont labs"]
    assert answer_searches("42", question, [hit]) == ["dramont labs"]  # no search for a number
    second = "['Amara Weiss works for Dramont Labs.', 'Dramont Labs is headquartered in Leuven.']"
    assert answer_searches("Leuven", question, [hit, second], ["dramont labs"]) == ["leuven"]


def test_no_check_on_the_last_iteration():
    """An answer on the last allowed turn is accepted: sending it back would leave only
    the forced answer, which replaced a correct one."""
    context = "Halmont Works is headquartered in Porto."
    rlm = make_rlm(["FINAL(Porto)"], small_model=True, max_iterations=1)
    assert rlm.completion(context, root_prompt="Where is Halmont Works?").response == "Porto"
    assert len(rlm.client.calls) == 1
