"""Compaction: once the root model's history fills ``compaction_threshold_pct`` of its
context window, it is summarised and restarted from the summary.

:class:`Compaction` is a base class of :class:`rlm.core.rlm.RLM`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rlm.core import events as ev
from rlm.core.run import Run
from rlm.environments import BaseEnv, env_supports
from rlm.utils.prompts import build_after_compaction_prompt, build_compaction_prompt
from rlm.utils.token_utils import context_window_for, count_tokens

if TYPE_CHECKING:
    from rlm.comms.lm_handler import LMHandler


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
        threshold = int(self.compaction_threshold_pct * window)
        tokens = self._history_tokens(run, messages)
        run.emit(ev.CompactionStatus, tokens=tokens, threshold=threshold, window=window)
        if tokens + reserve < threshold:
            return messages, compactions
        compactions += 1
        summary = self._ask_root(run, handler, [*messages, build_compaction_prompt()])
        if env_supports(env, "compaction"):
            env.append_compaction_entry({"type": "summary", "content": summary})
        run.measured_tokens = None
        run.emit(
            ev.Compacted, tokens_before=tokens, threshold=threshold, summary_chars=len(summary)
        )
        restarted = [
            *messages[:setup_length],
            {"role": "assistant", "content": summary},
            build_after_compaction_prompt(compactions, history=bool(self.compaction)),
        ]
        return restarted, compactions
