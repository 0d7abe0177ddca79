"""A root call the model refuses as too long for its window is made again with the
history's oldest turns dropped (rlm.utils.compaction.trim_history).

The model is a scripted OpenAI-compatible server on 127.0.0.1 that refuses a prompt
over its window as llama.cpp's server does (HTTP 400, ``context_length_exceeded``);
the official ``openai`` client talks to it. Such a server does not report its window,
so compaction cannot start in time: before, the run failed at the first refusal.
"""

from __future__ import annotations

import openai
import pytest

from rlm import RLM
from rlm.core import events as ev
from rlm.utils.exceptions import ContextOverflowError, ProviderContextLengthError

try:
    from tests.scripted_openai_server import (
        ROOT,
        SUMMARY,
        ModelCall,
        ScriptedOpenAIServer,
        repl_reply,
    )
except ImportError:  # pragma: no cover - tests/ on sys.path
    from scripted_openai_server import ROOT, SUMMARY, ModelCall, ScriptedOpenAIServer, repl_reply

FILLER = "print('FILLER:', 'x' * 4000)"
NOTE = "oldest messages of this conversation were removed"


def policy(call: ModelCall) -> str:
    """Turn 1 sets a variable, turns 2 and 3 print 4,000 characters each, turn 4 prints
    the variable, and the answer is what it printed."""
    assert call.kind == ROOT, call.kind
    secret = call.last_seen("SECRET")
    if secret:
        return f"The REPL printed it.\nFINAL({secret})"
    if call.turn == 1:
        return repl_reply("I keep a value.", "secret = 'k-' + str(6 * 7)\n" + FILLER)
    if call.turn in (2, 3):
        return repl_reply("More output.", FILLER)
    return repl_reply("I print the value.", "print('SECRET:', secret)")


def make_rlm(server: ScriptedOpenAIServer, events: list[ev.Event], **kwargs) -> RLM:
    rlm = RLM(
        backend="openai",
        backend_kwargs={"model_name": "local-model", "base_url": server.base_url, "api_key": "x"},
        **kwargs,
    )
    rlm.subscribe(events.append)
    return rlm


def test_a_refused_prompt_is_sent_again_without_the_oldest_turns(capsys):
    events: list[ev.Event] = []
    with ScriptedOpenAIServer(policy, window=3_000) as server:
        rlm = make_rlm(server, events, max_iterations=8, verbose=True)
        result = rlm.completion("a small context")
        calls, refused = server.calls, server.refused
    assert "History refused as too long for the window" in capsys.readouterr().out
    # Turn 1's variable outlived its dropped messages: the REPL keeps it.
    assert result.response == "k-42"
    assert refused, "the history never outgrew the window: the test proves nothing"
    trims = [e for e in events if isinstance(e, ev.HistoryTrimmed)]
    assert len(trims) >= 1 and all(t.dropped > 0 and t.window == 3_000 for t in trims)
    assert all(t.tokens <= 0.7 * 3_000 for t in trims)
    # The call after the refusal holds the note in place of turn 1, whose code is gone.
    after = calls[next(i for i, c in enumerate(calls) if NOTE in c.shown)]
    assert "3,000 tokens" in after.shown
    assert not any("secret = 'k-'" in c.written for c in calls if NOTE in c.shown)
    note_at = [m["content"] for m in after.messages].index(
        next(m["content"] for m in after.messages if NOTE in str(m["content"]))
    )
    assert after.messages[note_at + 1]["role"] == "assistant"  # the cut starts a turn
    # The trajectory records what was sent: the note, not the dropped turns.
    record = [e.record for e in events if isinstance(e, ev.IterationFinished)][-1]
    assert any(NOTE in str(m["content"]) for m in record.prompt)


def test_a_prompt_that_cannot_fit_raises_the_providers_refusal():
    """With nothing left to drop (the system prompt alone is too long), the refusal
    reaches the caller, as the rlm error and the SDK's own class."""
    events: list[ev.Event] = []
    with ScriptedOpenAIServer(policy, window=300) as server:
        with pytest.raises(ProviderContextLengthError) as info:
            make_rlm(server, events).completion("a small context")
        assert len(server.refused) == 1 and not server.calls
    error = info.value
    assert isinstance(error, ContextOverflowError) and isinstance(error, openai.BadRequestError)
    assert error.window == 300 and error.status_code == 400
    assert "prompt too long for the model's context window" in str(error)
    assert not [e for e in events if isinstance(e, ev.HistoryTrimmed)]
    finished = [e for e in events if isinstance(e, ev.RunFinished)]
    assert finished and "ProviderContextLengthError" in (finished[0].error or "")


def test_without_a_window_the_older_half_goes_and_later_trims_share_one_note():
    """A refusal that names no window (OpenAI's "Your input exceeds the context window of
    this model."): the older half of the turns goes, the cut ending at a turn's start;
    a second trim replaces the first note, counting every message dropped."""
    from rlm.core.run import Run
    from rlm.utils.compaction import trim_history

    def turn(n: int) -> list[dict[str, str]]:
        return [
            {"role": "user", "content": f"Turn {n} of 9."},
            {"role": "assistant", "content": f"code {n}"},
            {"role": "user", "content": f"output {n}"},
        ]

    events: list[ev.Event] = []
    run = Run(None, subscribers=[events.append])
    setup = [{"role": "system", "content": "sys"}, {"role": "user", "content": "setup"}]
    messages = [*setup, *turn(1), *turn(2), *turn(3), {"role": "user", "content": "Turn 4 of 9."}]
    run.history_start = len(setup)
    assert trim_history(run, messages, None)
    # Nine turn messages before the last: half is 4, then on to turn 2's answer.
    assert [m["content"] for m in messages[3:5]] == ["code 2", "output 2"]
    assert messages[:2] == setup and "the 4 oldest messages" in messages[2]["content"]
    assert messages[-1]["content"] == "Turn 4 of 9."
    assert trim_history(run, messages, None)
    assert [m["content"] for m in messages[2:]][1:] == ["code 3", "output 3", "Turn 4 of 9."]
    assert "the 7 oldest messages" in messages[2]["content"]
    assert sum("oldest messages" in m["content"] for m in messages) == 1
    assert trim_history(run, messages, None)  # turn 3 goes: only the note and the last stay
    assert [m["content"] for m in messages[3:]] == ["Turn 4 of 9."]
    assert not trim_history(run, messages, None)  # nothing left to drop
    assert [e.dropped for e in events if isinstance(e, ev.HistoryTrimmed)] == [4, 3, 2]


def test_a_refusal_our_estimate_calls_a_fit_still_drops_the_older_half():
    """The model counts more than our four characters per token (code, numbers): a
    trim to 70% of its window by our estimate would drop nothing, and the same prompt
    would be refused again."""
    from rlm.core.run import Run
    from rlm.utils.compaction import trim_history

    run = Run(None)
    run.history_start = 1
    messages = [{"role": "system", "content": "sys"}]
    for n in range(1, 5):
        messages += [
            {"role": "user", "content": f"Turn {n}"},
            {"role": "assistant", "content": f"code {n}"},
            {"role": "user", "content": f"output {n}"},
        ]
    messages.append({"role": "user", "content": "Turn 5"})
    assert trim_history(run, messages, 100_000)
    assert [m["content"] for m in messages[2:4]] == ["code 3", "output 3"]
    assert "the 7 oldest messages" in messages[1]["content"]


def test_a_refusal_teaches_compaction_the_window():
    """``context_window`` says 100,000 tokens and the server holds 3,000: compaction
    waits for the wrong size until the refusal names the right one; from then on the
    history is summarised in time, and every later call carries the summary."""
    summary = "SUMMARY: the value is in the variable secret."

    def compacting(call: ModelCall) -> str:
        return summary if call.kind == SUMMARY else policy(call)

    events: list[ev.Event] = []
    with ScriptedOpenAIServer(compacting, window=3_000) as server:
        rlm = make_rlm(server, events, max_iterations=8, compaction=True, context_window=100_000)
        result = rlm.completion("a small context")
        calls, refused = server.calls, server.refused
    assert result.response == "k-42" and len(refused) == 1
    kinds = [type(e).__name__ for e in events]
    assert kinds.index("HistoryTrimmed") < kinds.index("Compacted")
    status = [e for e in events if isinstance(e, ev.CompactionStatus)]
    assert status[0].window == 100_000 and status[-1].window == 3_000
    compacted = next(i for i, c in enumerate(calls) if c.kind == SUMMARY)
    assert all(summary in c.written for c in calls[compacted + 1 :])


def test_after_compaction_a_trim_keeps_the_summary():
    """After a compaction the turns start after its summary (``history_start``): a trim
    drops the turns after it, never the summary."""
    from rlm.core.run import Run
    from rlm.utils.compaction import trim_history

    run = Run(None)
    run.history_start = 3  # the system prompt, the summary, the after-compaction prompt
    messages = [
        {"role": "system", "content": "sys"},
        {"role": "assistant", "content": "SUMMARY"},
        {"role": "user", "content": "Go on from the summary."},
        {"role": "user", "content": "Turn 5"},
        {"role": "assistant", "content": "code 5"},
        {"role": "user", "content": "output 5"},
        {"role": "user", "content": "Turn 6"},
    ]
    assert trim_history(run, messages, None)
    assert [m["content"] for m in messages[:3]] == ["sys", "SUMMARY", "Go on from the summary."]
    assert "the 1 oldest messages" in messages[3]["content"]
    assert [m["content"] for m in messages[4:]] == ["code 5", "output 5", "Turn 6"]
