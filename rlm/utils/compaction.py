"""The root model's history and its context window.

* Compaction: once the history fills ``compaction_threshold_pct`` of the window, it is
  summarised and restarted from the summary.
* Trimming: a root call the model refuses as too long for its window
  (:class:`~rlm.utils.exceptions.ContextOverflowError`, whatever the provider) is made
  again without the history's oldest turns, a note in their place. This covers servers
  that do not report their window, where compaction cannot start in time.

:class:`Compaction` is a base class of :class:`rlm.core.rlm.RLM`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rlm.core import events as ev
from rlm.core.run import Run
from rlm.environments import BaseEnv, env_supports
from rlm.utils.exceptions import ContextOverflowError
from rlm.utils.prompts import build_after_compaction_prompt, build_compaction_prompt
from rlm.utils.token_utils import context_window_for, count_tokens

if TYPE_CHECKING:
    from rlm.comms.lm_handler import LMHandler


#: How often one root call is made again with a shorter history.
MAX_TRIMS = 3
#: With the window known, the history is cut to this share of it, and to this share of
#: the last cut on each further refusal of the same call: the estimate of its tokens is
#: rough (code and numbers take more), and the answer needs room.
TRIM_TARGET = 0.7


def trimmed_note(dropped: int, window: int | None) -> dict[str, str]:
    size = f" ({window:,} tokens)" if window else ""
    return {
        "role": "user",
        "content": (
            f"Note: the {dropped} oldest messages of this conversation were removed: with "
            f"them, it no longer fit the model's context window{size}. The REPL still "
            "holds every variable they set; print one to see what it holds."
        ),
    }


def trim_history(
    run: Run, messages: list[dict[str, Any]], window: int | None, attempt: int = 0
) -> bool:
    """Drop the oldest turns of ``messages`` (the root history; its turns start at
    ``run.history_start``, its last message stays) in place, a note in their place: down
    to ``TRIM_TARGET ** (attempt + 1)`` of ``window`` by the estimate when it is known,
    else (or when the estimate says it fits already) the older half; the cut ends
    before an assistant message (a turn's start). False when nothing is left to drop."""
    start = run.history_start
    first = start + (1 if run.trim_note else 0)  # an earlier trim's note is replaced
    end = len(messages) - 1
    if end <= first:
        return False
    cut = first
    if window:
        sizes = [count_tokens([message]) for message in messages]
        left = sum(sizes[:start]) + sum(sizes[first:])
        while cut < end and left > TRIM_TARGET ** (attempt + 1) * window:
            left -= sizes[cut]
            cut += 1
    if cut == first:  # no window, or the estimate says it fits: the model counts more
        cut = first + max(1, (end - first) // 2)
    while cut < end and messages[cut].get("role") != "assistant":
        cut += 1
    run.dropped_messages += cut - first
    messages[start:cut] = [trimmed_note(run.dropped_messages, window)]
    run.trim_note = True
    run.measured_tokens = None
    if window:
        run.refused_window = min(window, run.refused_window or window)
    run.emit(ev.HistoryTrimmed, dropped=cut - first, window=window, tokens=count_tokens(messages))
    return True


def ask_fitting(
    run: Run,
    messages: list[dict[str, Any]],
    ask: Callable[[list[dict[str, Any]]], str],
    tail: tuple[dict[str, Any], ...] = (),
) -> tuple[str, list[dict[str, Any]]]:
    """``ask(messages + tail)``, and what was sent; when the model refuses the prompt as
    too long for its window, :func:`trim_history` and again, up to :data:`MAX_TRIMS`
    times. The refusal is raised when nothing is left to drop, or after the last try."""
    trims = 0
    while True:
        sent = [*messages, *tail]
        try:
            return ask(sent), sent
        except ContextOverflowError as exc:
            if trims == MAX_TRIMS or not trim_history(run, messages, exc.window, trims):
                raise
            trims += 1


class Compaction:
    """``_maybe_compact``: the loop's call, before each iteration after the first."""

    def _history_tokens(self, run: Run, messages: list[dict[str, Any]]) -> int:
        if run.measured_tokens is not None and run.measured_messages <= len(messages):
            return run.measured_tokens + count_tokens(messages[run.measured_messages :])
        return count_tokens(messages)

    def _maybe_compact(
        self,
        run: Run,
        handler: LMHandler,
        env: BaseEnv,
        messages: list[dict[str, Any]],
        setup_length: int,
        compactions: int,
        reserve: int = 0,
    ) -> tuple[list[dict[str, Any]], int]:
        """Summarise and restart the history once it fills ``compaction_threshold_pct`` of the
        window, ``reserve`` tokens (what one more iteration may add) counted in."""
        window = context_window_for(self.client, self.context_window)
        if run.refused_window and run.refused_window < window:  # the model said so
            window = run.refused_window
            reserve = min(reserve, window // 4)  # it was sized for the larger window
        threshold = int(self.compaction_threshold_pct * window)
        tokens = self._history_tokens(run, messages)
        run.emit(ev.CompactionStatus, tokens=tokens, threshold=threshold, window=window)
        if tokens + reserve < threshold:
            return messages, compactions
        compactions += 1
        summary, _ = ask_fitting(
            run,
            messages,
            lambda sent: self._ask_root(run, handler, sent),
            (build_compaction_prompt(),),
        )
        if env_supports(env, "compaction"):
            env.append_compaction_entry({"type": "summary", "content": summary})
        run.measured_tokens = None
        # The restart holds no trimmed-history note, and a trim keeps its summary.
        run.trim_note, run.dropped_messages = False, 0
        run.history_start = setup_length + 2
        run.emit(
            ev.Compacted, tokens_before=tokens, threshold=threshold, summary_chars=len(summary)
        )
        restarted = [
            *messages[:setup_length],
            {"role": "assistant", "content": summary},
            build_after_compaction_prompt(compactions, history=bool(self.compaction)),
        ]
        return restarted, compactions
