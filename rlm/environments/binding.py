"""How an RLM gets its environment for a run (a new one, or the persistent one pointed at
the run's handler) and runs one code block in it, with the cell events. A cell's output
goes out while it runs when a subscriber has ``wants_live_output`` and the environment
``supports_live_output`` (``local``); otherwise when it ends.

:class:`EnvironmentBinding` is a base class of :class:`rlm.core.rlm.RLM`. Environments
come from ``rlm.core.rlm.get_environment`` as that name is at call time.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from rlm.core import events as ev
from rlm.core import ledger
from rlm.core.run import Run
from rlm.environments.base_env import BaseEnv, env_supports

if TYPE_CHECKING:
    from rlm.comms.lm_handler import LMHandler


def wants_live_output(run: Run) -> bool:
    """Whether a subscriber of ``run`` wants a cell's output while it runs (its attribute
    ``wants_live_output`` is true); otherwise each stream's output is one ``cell_output``
    event when the cell ends."""
    return any(
        getattr(s, "wants_live_output", False) for s in (*run.subscribers, *run.tree.subscribers)
    )


class EnvironmentBinding:
    """``_environment`` and ``_run_cell``: the loop's two uses of its environment."""

    #: Environments that get rlms' in-process ``subcall_fn`` callback when ``max_depth > 1``.
    _SUBCALL_FN_ENVIRONMENTS = ("local", "ipython", "docker")

    def _environment(self, prompt: Any, handler: LMHandler, run: Run) -> BaseEnv:
        if self.persistent:
            self._persistent_run = run  # what the persistent REPL's subcall_fn serves now
        if self.persistent and self._persistent_env is not None:
            env = self._persistent_env
            assert env_supports(env, "persistence")
            env.update_handler_address(handler.address)
            env.add_context(prompt)
            return env
        kwargs = dict(self.environment_kwargs)
        kwargs.update(
            lm_handler_address=handler.address,
            context_payload=prompt,
            depth=self.depth + 1,
            max_concurrent_subcalls=self.max_concurrent_subcalls,
        )
        if self.environment_type in self._SUBCALL_FN_ENVIRONMENTS and self.max_depth > 1:
            kwargs["subcall_fn"] = self._subcall_fn(run)
        if self.custom_tools is not None:
            kwargs["custom_tools"] = self.custom_tools
        if self.custom_sub_tools is not None:
            kwargs["custom_sub_tools"] = self.custom_sub_tools
        if self.compaction:
            kwargs["compaction"] = True
        if self.persistent:
            kwargs["persistent"] = True
        # rlm.core.rlm.get_environment, looked up at call time (rlms' tests patch it).
        env = self._seam("get_environment")(self.environment_type, kwargs)
        if self.persistent:
            self._persistent_env = env
        return env

    def _run_cell(self, run: Run, env: BaseEnv, code: str, cell: int) -> Any:
        """Run one code block, with its cell events."""
        ledger.check_time(run, "before running a code block")
        run.emit(ev.CellStarted, cell=cell, code=code)
        # A subscriber that saw the cell start may have cancelled the run already (a
        # client that disconnects on cell_started): its interrupt found no cell running.
        ledger.check_time(run, "before running a code block")
        start = time.perf_counter()
        sent = {"stdout": 0, "stderr": 0}  # characters of each stream already out
        kwargs: dict[str, Any] = {}
        if env_supports(env, "cell_timeout"):
            kwargs["timeout"] = run.remaining()
        if env_supports(env, "live_output") and wants_live_output(run):

            def on_output(stream: str, text: str) -> None:
                sent[stream] += len(text)
                run.emit(ev.CellOutput, cell=cell, stream=stream, text=text)

            kwargs["on_output"] = on_output
        result = env.execute_code(code, **kwargs)
        if run.listening:
            # What did not go out while the cell ran goes out now: the texts of a
            # stream's cell_output events add up to the result's.
            for stream in ("stdout", "stderr"):
                rest = (getattr(result, stream, "") or "")[sent[stream] :]
                if rest:
                    run.emit(ev.CellOutput, cell=cell, stream=stream, text=rest)
            run.emit(
                ev.CellFinished,
                cell=cell,
                result=result,
                execution_time=getattr(result, "execution_time", None)
                or time.perf_counter() - start,
            )
        return result
