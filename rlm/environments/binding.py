"""How an RLM gets its environment for a run (a new one, or the persistent one pointed at
the run's handler) and runs one code block in it, with the cell events.

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
        start = time.perf_counter()
        if env_supports(env, "cell_timeout"):
            result = env.execute_code(code, timeout=run.remaining())  # type: ignore[call-arg]
        else:
            result = env.execute_code(code)
        if run.listening:
            # Environments hand back a cell's output when it ends; it goes out then.
            for stream in ("stdout", "stderr"):
                if getattr(result, stream, ""):
                    run.emit(ev.CellOutput, cell=cell, stream=stream, text=getattr(result, stream))
            run.emit(
                ev.CellFinished,
                cell=cell,
                result=result,
                execution_time=getattr(result, "execution_time", None)
                or time.perf_counter() - start,
            )
        return result
