"""One turn of the root model, and what the loop tells it afterwards.

:class:`Turns` is a base class of :class:`rlm.core.rlm.RLM`:

* ``_ask_root``: one root-model call, abandoned at ``max_timeout`` or on cancellation;
* ``_ask_turn``: the iteration's call; with ``stop_at_block_end`` the response ends at
  the end of its first complete ```repl block (a stop sequence where the client takes
  one, and a cut in every case);
* ``_sub_window_refusal``: the handler's refusal of a sub-call too large for the
  sub-model's window;
* ``_add_feedback``: notes appended to the REPL output the model reads (a search that
  matched nothing, an ``llm_query`` prompt without the context, a block that repeats the
  previous one);
* ``_unverified``: with ``verify_answer``, an answer found nowhere goes back once (a
  small model's first answer always does, with the question restated).

What applies to a run is decided once, when its clients are known (:meth:`Turns._guide`):
``None`` options follow :func:`rlm.utils.is_small_model`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rlm.clients.base_lm import to_messages
from rlm.comms import workers
from rlm.core import ledger
from rlm.core.run import Run
from rlm.datatypes import RLMChatCompletion, RLMIteration
from rlm.utils.feedback import (
    BLOCK_END_STOP,
    TALLY_ANSWER_NOTE,
    TextIndex,
    answer_searches,
    check_answer_prompt,
    close_open_fence,
    context_free_note,
    cut_after_first_block,
    grounded,
    is_small_model,
    next_names,
    repeated_block_note,
    search_miss_note,
    tally_note,
    tally_reminder,
    text_of,
    undefined_name_note,
    unverified_answer_prompt,
    window_refusal,
    wrong_fence_note,
)
from rlm.utils.prompts import counts_answer, tally_plan
from rlm.utils.token_utils import CHARS_PER_TOKEN, count_tokens

if TYPE_CHECKING:
    from rlm.comms.lm_handler import LMHandler
    from rlm.comms.protocol import LMRequest

#: How often a wait for the root model wakes to check cancellation and the deadline (s).
_ROOT_WAIT_SLICE = 0.25
#: String literals in a block's code (the terms a model searched for).
_QUOTED = re.compile(r"['\"]([^'\"\n]{3,80})['\"]")
#: REPL outputs a small model's answer check takes names from.
_RECENT_OUTPUTS = 4
#: Times a small model's answer can go back (a large model's: once); the same answer
#: again is final once something the run saw holds it.
_SMALL_CHECKS = 3
#: Tokens planned for one root answer when ``max_tokens`` is not set (for compaction).
_ANSWER_TOKENS = 512


#: The start of a line that is not blank.
_NON_BLANK_LINE = re.compile(r"^[^\S\n]*\S", re.M)


@dataclass
class Guide:
    """What one run does beyond rlms' loop (all off: rlms' behaviour)."""

    small: bool = False
    stop: bool = False
    feedback: bool = False
    verify: bool = False
    #: Characters of each block's output shown to the model (None: the default 20,000).
    output_chars: int | None = None
    #: Compact the history even without ``compaction=True`` (a small model, known window).
    compact: bool = False
    #: Tokens one more iteration may add, kept free when compaction decides (known window).
    reserve: int = 0
    index: TextIndex | None = None
    #: The final answers sent back so far.
    checked: list[str] = field(default_factory=list)
    #: The run's ``root_prompt``, restated when a small model's answer goes back.
    question: str | None = None
    #: Whether ``context`` is one string (a small model's check then suggests a search).
    text_context: bool = False
    #: The latest REPL outputs, as printed (names in them are suggested for the check).
    recent: list[str] = field(default_factory=list)
    #: Terms searched so far, by the model's code or a suggested search (lowercase).
    searched: list[str] = field(default_factory=list)
    #: Names the loop suggested and the answers it checked: the chain a question follows.
    chain: list[str] = field(default_factory=list)
    #: The previous block's code, whitespace collapsed (a repeat gets a note).
    last_code: str | None = None
    #: The kinds a counting question lists (:func:`~rlm.utils.prompts.tally_plan`),
    #: when their counts answer it (:func:`~rlm.utils.prompts.counts_answer`).
    kinds: list[str] = field(default_factory=list)
    #: The context's non-blank lines, which such a tally asks about (a string context).
    lines: int = 0
    #: The last line of the tally's prompt ("Answer with one word: the topic's name.").
    ask_end: str = ""
    #: The turn whose tally printed counts that answer the question, and its output:
    #: restated each later turn until an answer comes.
    tally: tuple[int, str] | None = None


class Turns:
    """The root model's turns: see the module docstring."""

    if TYPE_CHECKING:  # the RLM's configuration attributes (rlm.core.config)

        def __getattr__(self, name: str) -> Any: ...

    def _guide(self, prompt: Any, root_prompt: str | None = None) -> Guide:
        """What applies to a run on ``prompt``, decided now that the clients are built."""
        client = self.client
        small = self.small_model
        if small is None:
            small = is_small_model(self.backend, client)
        own = getattr(client, "context_window", None)
        window = self.context_window or (own if isinstance(own, int) and own > 0 else None)
        guide = Guide(
            small=small,
            stop=small if self.stop_at_block_end is None else self.stop_at_block_end,
            feedback=small if self.feedback is None else self.feedback,
            verify=small if self.verify_answer is None else bool(self.verify_answer),
            question=root_prompt,
            text_context=isinstance(prompt, str),
        )
        if small and isinstance(prompt, str) and counts_answer(root_prompt):
            ask, kinds = tally_plan(root_prompt)
            if ask is not None:  # lines counted without a list of them (a huge context)
                guide.kinds = kinds
                guide.lines = sum(1 for _ in _NON_BLANK_LINE.finditer(prompt))
                guide.ask_end = ask.rsplit("\n", 1)[-1]
        if small and window is not None:
            # A small window: short outputs, and the history compacted before it overflows.
            guide.output_chars = max(2_000, window // 2)
            guide.compact = True
        if window is not None:
            answer = (getattr(client, "sampling_args", None) or {}).get("max_tokens")
            output = min((guide.output_chars or 20_000) // CHARS_PER_TOKEN, window // 4)
            guide.reserve = (answer if isinstance(answer, int) else _ANSWER_TOKENS) + output + 64
        if guide.feedback or guide.verify:
            guide.index = TextIndex(prompt, root_prompt)
        return guide

    # -- root calls -------------------------------------------------------------

    def _ask_root(
        self,
        run: Run,
        handler: LMHandler,
        messages: list[dict[str, Any]],
        stop: list[str] | None = None,
    ) -> str:
        """One root-model call (streamed when a subscriber wants tokens), abandoned if it
        outlives ``max_timeout`` (TimeoutExceededError) or the run is cancelled meanwhile.

        It runs on a reused worker thread (rlm.comms.workers), so that this thread can
        give up on it, when that can be needed: the run has a deadline (``max_timeout``,
        its own or a parent's), it is a child run (its parent's cancellation reaches
        it), it runs on a worker of the pool itself (``stream()``, ``acompletion()``:
        their callers cancel it), or its client says so (``inline_root_calls = False``:
        llama.cpp, whose native decode must not take a Ctrl-C midway). Otherwise nothing
        but Ctrl-C can stop the run while the call runs, and Ctrl-C reaches the call in
        this thread as well as the wait for it: the call runs here, a hand-off less per
        iteration."""
        if (
            run.deadline is None
            and run.parent is None
            and not workers.in_pool()
            and getattr(handler.get_client(None, 0), "inline_root_calls", True)
        ):
            return self._root_response(run, handler, messages, stop)
        future = workers.submit(lambda: self._root_response(run, handler, messages, stop))
        while True:
            try:
                return future.result(
                    _ROOT_WAIT_SLICE
                    if run.deadline is None
                    else max(0.0, min(_ROOT_WAIT_SLICE, run.remaining() or 0.0))
                )
            except TimeoutError:
                if future.done():
                    raise  # the call's own TimeoutError
            # Raises once past the deadline or cancelled; otherwise keep waiting.
            ledger.check_time(run, "while waiting for the root model")

    def _root_response(
        self,
        run: Run,
        handler: LMHandler,
        messages: list[dict[str, Any]],
        stop: list[str] | None,
    ) -> str:
        on_token = run.on_token()
        if stop:
            record = handler.completion_record(messages, on_token=on_token, stop=stop)
        else:  # as rlms-era handlers are called
            record = handler.completion_record(messages, on_token=on_token)
        return self._measured(run, messages, record)

    @staticmethod
    def _measured(run: Run, messages: list[dict[str, Any]], record: RLMChatCompletion) -> str:
        """Remember how big the provider says the history is (prompt + answer), for compaction."""
        usage = record.usage_summary
        run.last_root_usage = usage
        if usage.total_input_tokens > 0:
            run.measured_tokens = usage.total_input_tokens + usage.total_output_tokens
            run.measured_messages = len(messages) + 1  # the answer becomes the next message
        return record.response

    def _ask_turn(self, run: Run, handler: LMHandler, messages: list[dict[str, Any]]) -> str:
        """The iteration's root call: with ``stop_at_block_end``, ended at its first block."""
        guide = run.guide
        if guide is None or not guide.stop:
            return self._ask_root(run, handler, messages)
        text = self._ask_root(run, handler, messages, stop=[BLOCK_END_STOP])
        if getattr(handler.get_client(None, 0), "accepts_stop", False):
            text = close_open_fence(text)  # the stop sequence took the closing fence
        return cut_after_first_block(text)

    # -- sub-calls --------------------------------------------------------------

    def _sub_window_refusal(self, run: Run, request: LMRequest) -> str | None:
        """Why a plain sub-call must not go out: its prompt (estimated) does not fit the
        window of the model that would answer it (``sub_window_tokens``, else the client's
        own; a client that does not know its window has no limit)."""
        if request.kind == "rlm" and self.depth + 1 < self.max_depth:
            return None  # a child RLM, with its own REPL: the prompt becomes its context
        handler = run.handler
        if handler is None or request.prompt is None:
            return None
        window = self.sub_window_tokens
        if window is None:
            client = handler.get_client(request.model, request.depth)
            own = getattr(client, "context_window", None)
            window = own if isinstance(own, int) and own > 0 else None
        if window is None:
            return None
        return window_refusal(count_tokens(to_messages(request.prompt)), window)

    # -- after the blocks ran ---------------------------------------------------

    def _add_feedback(
        self, run: Run, iteration: RLMIteration, new_messages: list[dict[str, Any]]
    ) -> None:
        """Append the notes of ``iteration``'s blocks to its REPL-output message, and
        remember their output as evidence (for later checks)."""
        guide = run.guide
        if guide is None or guide.index is None:
            return
        notes: list[str] = []
        blocks = iteration.code_blocks
        for number, block in enumerate(blocks, start=1):
            result = block.result
            found = []
            if guide.feedback:
                found.append(
                    search_miss_note(block.code, result.stdout, getattr(result, "error", None))
                )
                found.append(undefined_name_note(result.stderr))
                prompts = [text_of(call.prompt) for call in result.rlm_calls]
                found.append(context_free_note(prompts, guide.index))
                asked = len(result.rlm_calls)
                tally = tally_note(
                    guide.kinds, guide.question, result.stdout, asked, guide.lines, guide.ask_end
                )
                found.append(tally)
                if tally is not None:  # the newest tally is the one to answer from
                    answers = tally.startswith(TALLY_ANSWER_NOTE)
                    guide.tally = (run.iteration, result.stdout.strip()) if answers else None
            if result.stdout.strip():
                guide.recent = [*guide.recent[-(_RECENT_OUTPUTS - 1) :], result.stdout[-4000:]]
            code = " ".join(block.code.split())
            if guide.feedback and code == guide.last_code:
                found.append(self._repeat_note(guide))
            guide.last_code = code
            # What the model searched for itself is not suggested again.
            terms = _QUOTED.findall(code.lower())
            guide.searched.extend(t for t in terms if t not in guide.searched)
            label = f"(block {number}) " if len(blocks) > 1 else ""
            notes.extend(label + note for note in found if note)
            guide.index.add([result.stdout, *(c.response for c in result.rlm_calls)])
        if guide.tally is not None and iteration.final_answer is None:
            turn, counts = guide.tally
            if turn != run.iteration:
                notes.append(tally_reminder(counts, turn))
        if guide.feedback and not blocks and iteration.final_answer is None:
            note = wrong_fence_note(iteration.response)
            if note is not None:
                new_messages.append({"role": "user", "content": note})
        if notes and len(new_messages) > 1:
            last = new_messages[-1]
            new_messages[-1] = {**last, "content": last["content"] + "\n\n" + "\n".join(notes)}
        elif notes:  # a reply without a block has no REPL output to carry them
            new_messages.append({"role": "user", "content": "\n".join(notes)})

    @staticmethod
    def _repeat_note(guide: Guide) -> str:
        """The note for a block that repeats the previous one, with a search for the
        names its output gave that no suggested search has covered yet; none once a
        tally's counts answer the question (small models followed it away from them)."""
        if guide.tally is not None:
            return repeated_block_note([], counted=True)
        names: list[str] = []
        if guide.text_context:
            names = next_names(guide.question, guide.recent, guide.searched, guide.chain)
            guide.searched.extend(names)
            guide.chain.extend(names)
        return repeated_block_note(names)

    def _unverified(
        self, run: Run, iteration: RLMIteration, last: bool = False
    ) -> dict[str, str] | None:
        """With ``verify_answer``: the message sending ``iteration``'s final answer back,
        once, when nothing the run saw holds it (the block that set it excluded). A small
        model's answer goes back in any case, with the question restated and a search for
        the answer and the names the outputs gave, until it repeats an answer found in
        what the run saw, up to ``_SMALL_CHECKS`` times. On the ``last`` iteration
        nothing goes back (no turn would be left to act on it)."""
        guide = run.guide
        answer = iteration.final_answer
        if guide is None or not guide.verify or answer is None or last:
            return None
        if guide.checked and not guide.small:
            return None  # once
        assert guide.index is not None
        blocks = list(iteration.code_blocks)
        if blocks and blocks[-1].result.final_answer is not None:
            blocks = blocks[:-1]  # its own output (print(answer)) proves nothing
        seen = [b.result.stdout for b in blocks]
        seen += [c.response for b in iteration.code_blocks for c in b.result.rlm_calls]
        found = grounded(answer, guide.index, seen)
        searches = None
        if guide.small and guide.text_context:
            outputs = [*guide.recent, *(s for s in seen if s.strip())]
            searches = answer_searches(answer, guide.question, outputs, guide.searched, guide.chain)
            if found and searches and searches[0] == " ".join(answer.split()).lower():
                # A name: the suggested search prints it, so only the context vouches.
                found = guide.index.in_context(answer)
        key = answer.strip().lower()
        again = key in guide.checked
        if guide.small and (
            len(guide.checked) >= _SMALL_CHECKS or (found and key in guide.checked)
        ):
            return None  # the same answer again, now found: final
        guide.checked.append(key)
        if not guide.small:
            return None if found else unverified_answer_prompt(answer)
        if searches:
            guide.searched.extend(t for t in searches if t not in guide.searched)
            guide.chain.extend(t for t in searches if t not in guide.chain)
        return check_answer_prompt(answer, guide.question, found, searches, again)
