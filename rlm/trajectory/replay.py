"""Replaying a recorded run offline, block by block, and comparing it with the recording.

The recorded code blocks run again in a fresh environment. No provider is
called: :class:`RecordingLM` answers the root model's calls with the recorded
responses, in order, and the sub-calls made by the code (``llm_query`` and
friends) with the recorded answer to the same prompt. A sub-call whose
prompt is not in the recording fails with a :class:`ReplayError` naming it
(inside the REPL it becomes an ``Error:`` string, so the block's output
differs and the replay reports a divergence there).

**Replay executes the code in the file.** A log can be edited by anyone who
can write it, so by default the code runs isolated: in the environment the run
was recorded in when that one is isolated and can be started here, otherwise in
``subprocess``. Running it in this process needs an explicit
``environment="local"``.

Comparison is per block: stdout (cut-aware: when the log kept only the head
and tail of a long output, the replayed output must have that head, that
tail and the announced length), the block's ``error`` and its final answer
when the log records them. The first difference is a :class:`ReplayDivergence`.
"""

from __future__ import annotations

import difflib
import json
import threading
import time
import warnings
from collections.abc import Generator, Iterator
from dataclasses import dataclass, fields
from typing import Any

from rlm.clients.base_lm import BaseLM, Generation, Messages, to_messages
from rlm.clients.scripted import is_root_call
from rlm.comms.lm_handler import LMHandler
from rlm.datatypes import CodeBlock, REPLResult, RLMChatCompletion, RLMIteration
from rlm.logger.rlm_logger import compact, iteration_record
from rlm.trajectory.model import Block, Iteration, SubCall, Trajectory, is_cut, same_output
from rlm.utils.exceptions import RLMError
from rlm.utils.parsing import find_final_answer
from rlm.utils.text import truncate_end


class ReplayError(RLMError):
    """A recording cannot be replayed: the context is missing, or a call is not in it."""


class ReplayDivergenceError(ReplayError):
    """Raised by ``replay(strict=True)`` at the first block that differs from the recording."""

    def __init__(self, divergence: ReplayDivergence):
        self.divergence = divergence
        super().__init__(str(divergence))


def estimate_tokens(text: str) -> int:
    """About four characters per token: root calls are not measured in logs."""
    return (len(text) + 3) // 4


def estimate_message_tokens(messages: Messages) -> int:
    return sum(estimate_tokens(_key(m.get("content", ""))) + 4 for m in messages)


def _key(prompt: Any) -> str:
    return json.dumps(prompt, sort_keys=True, ensure_ascii=False, default=repr)


def _recorded_key(prompt: Any) -> str:
    """The key of a recorded prompt (the log already compacted it)."""
    return _key(to_messages(prompt))


def _live_key(messages: Messages) -> str:
    """The key of a prompt made during the replay, compacted as the logger would have."""
    return _key(compact(messages))


class RecordedCallError(ReplayError):
    """A sub-call that failed in the recording fails again, with the recorded error."""


def _recorded_failure(error: str) -> RecordedCallError:
    """The recorded error raised again: same class name and message, so the REPL sees
    the same ``Error: Name: message`` text as in the recorded run."""
    name, sep, message = error.partition(": ")
    if not sep or not name.isidentifier():
        return RecordedCallError(error)
    return type(name, (RecordedCallError,), {})(message)


# ---------------------------------------------------------------------------
# The recording client
# ---------------------------------------------------------------------------


class RecordingLM(BaseLM):
    """A client that answers from a recorded trajectory instead of a provider.

    * root calls (first message has the role ``system``, as the RLM loop
      sends) get the recorded responses of the iterations, in order;
    * any other call is a sub-call, answered with the recorded response to
      the same prompt (identical prompts are answered in recorded order; one
      asked more often than recorded gets its last recorded answer again);
    * a sub-call whose prompt is not in the recording, or a root call past
      the end of the recording, raises :class:`ReplayError`.

    Usage: sub-calls report their recorded tokens and cost; root calls,
    which the log does not measure, are estimated at four characters per token.
    """

    is_local = True

    def __init__(self, trajectory: Trajectory, model_name: str | None = None):
        super().__init__(model_name=model_name or trajectory.root_model, timeout=None)
        self.trajectory = trajectory
        self._lock = threading.Lock()
        self._root = [iteration.response for iteration in trajectory.iterations]
        self._root_next = 0
        self._subs: dict[str, list[SubCall]] = {}
        for block in trajectory.blocks:
            for call in block.calls:
                self._subs.setdefault(_recorded_key(call.prompt), []).append(call)
        self._sub_next: dict[str, int] = {}

    @property
    def root_calls_left(self) -> int:
        """How many recorded root-model answers are not used yet."""
        return len(self._root) - self._root_next

    def _next_root(self, messages: Messages) -> Generation:
        with self._lock:
            if self._root_next >= len(self._root):
                raise ReplayError(
                    f"root call {self._root_next + 1} is not in the recording: it holds "
                    f"{len(self._root)} root responses and the replay asked for more"
                )
            text = self._root[self._root_next]
            self._root_next += 1
        return Generation(
            text=text,
            model=self.model_name,
            input_tokens=estimate_message_tokens(messages),
            output_tokens=estimate_tokens(text),
        )

    def root_response(self, messages: Messages) -> Generation:
        """The next recorded root response, counted in this client's usage."""
        generation = self._next_root(messages)
        self._usage.record(generation.model, generation.usage())
        return generation

    def _sub_response(self, key: str, messages: Messages) -> Generation:
        with self._lock:
            recorded = self._subs[key]
            position = self._sub_next.get(key, 0)
            self._sub_next[key] = position + 1
            call = recorded[min(position, len(recorded) - 1)]
        usage = next(iter(call.usage.model_usage_summaries.values()), None)
        if call.error and not call.response:
            raise _recorded_failure(call.error)
        return Generation(
            text=call.response,
            model=call.model,
            input_tokens=usage.total_input_tokens if usage else estimate_message_tokens(messages),
            output_tokens=usage.total_output_tokens if usage else estimate_tokens(call.response),
            cached_tokens=usage.total_cached_tokens if usage else 0,
            cost=usage.total_cost if usage else None,
        )

    def _generate(self, messages: Messages, model: str | None = None) -> Generation:
        key = _live_key(messages)
        if key in self._subs:
            return self._sub_response(key, messages)
        if is_root_call(messages):
            return self._next_root(messages)
        preview = truncate_end(" ".join(str(messages[-1].get("content", "")).split()), 120)
        known = [
            truncate_end(" ".join(str(c.prompt_text).split()), 60)
            for calls in list(self._subs.values())[:5]
            for c in calls[:1]
        ]
        raise ReplayError(
            f"sub-call not in the recording: prompt {preview!r}. "
            f"The recording answers {len(self._subs)} distinct sub-call prompts"
            + (f", e.g. {known}" if known else "")
        )


# ---------------------------------------------------------------------------
# Steps and divergences
# ---------------------------------------------------------------------------


@dataclass
class ReplayDivergence:
    """Where a replay first differs from its recording.

    ``iteration_index`` and ``block_index`` are 0-based positions in
    ``trajectory.iterations`` and ``iteration.blocks``; ``block_index`` is
    ``None`` when every block matched but the run's final answer did not.
    ``field`` is ``"stdout"``, ``"error"``, ``"final_answer"`` or ``"replay"``
    (the block could not be run again).
    """

    iteration_index: int
    block_index: int | None
    field: str
    expected: str | None
    actual: str | None
    code: str = ""
    expected_stdout: str = ""
    actual_stdout: str = ""

    @property
    def iteration(self) -> int:
        """The 1-based iteration number, as in the log."""
        return self.iteration_index + 1

    def diff(self) -> str:
        """A unified diff of the expected and actual values of ``field``."""
        expected = (self.expected or "").splitlines(keepends=True)
        actual = (self.actual or "").splitlines(keepends=True)
        return "".join(
            difflib.unified_diff(expected, actual, "recorded", "replayed", lineterm="\n", n=2)
        )

    def to_dict(self) -> dict[str, Any]:
        """This divergence as a JSON-able dict: every field but the two whole outputs
        (``expected`` and ``actual`` already hold what differs)."""
        return {
            f.name: getattr(self, f.name) for f in fields(self) if not f.name.endswith("_stdout")
        }

    def __str__(self) -> str:
        where = f"iteration {self.iteration} (index {self.iteration_index})"
        if self.block_index is not None:
            where += f", block {self.block_index}"
        return f"replay diverged at {where}: {self.field} differs\n{self.diff()}".rstrip()


@dataclass
class ReplayStep:
    """One re-run block: what the log says it did (``expected``) and what it did now."""

    iteration_index: int
    block_index: int
    code: str
    expected: Block
    result: REPLResult
    divergence: ReplayDivergence | None

    @property
    def matches(self) -> bool:
        """Whether the block's output is the recorded one."""
        return self.divergence is None

    @property
    def stdout(self) -> str:
        """The block's standard output in the replay."""
        return self.result.stdout

    def __repr__(self) -> str:
        status = "matches" if self.matches else f"DIVERGES ({self.divergence.field})"  # type: ignore[union-attr]
        return (
            f"<ReplayStep iteration {self.iteration_index + 1} block {self.block_index}: {status}>"
        )


def _compare(
    expected: Block, actual: REPLResult, iteration_index: int, records_errors: bool
) -> ReplayDivergence | None:
    recorded = expected.raw.get("result") or {}
    checks: list[tuple[str, str | None, str | None, bool]] = [
        ("stdout", expected.stdout, actual.stdout, same_output(expected.stdout, actual.stdout))
    ]
    if records_errors:
        # Our logs write a block's error only when it has one: absent means none.
        checks.append(("error", expected.error, actual.error, expected.error == actual.error))
    else:
        # Public logs do not record it; a traceback in stderr says the block raised.
        failed = actual.error is not None
        checks.append(
            (
                "error",
                "an exception" if expected.failed else None,
                actual.error,
                expected.failed == failed,
            )
        )
    if "final_answer" in recorded:
        checks.append(
            (
                "final_answer",
                expected.final_answer,
                actual.final_answer,
                expected.final_answer == actual.final_answer,
            )
        )
    for name, want, got, ok in checks:
        if not ok:
            return ReplayDivergence(
                iteration_index=iteration_index,
                block_index=expected.index,
                field=name,
                expected=want,
                actual=got,
                code=expected.code,
                expected_stdout=expected.stdout,
                actual_stdout=actual.stdout,
            )
    return None


def _resolve_context(trajectory: Trajectory, context: Any) -> Any:
    if context is not ...:
        return context
    if trajectory.has_context:
        return trajectory.context
    raise ReplayError(
        "the log holds only a summary of the context, not the context itself; "
        "pass it: trajectory.replay(context=...) (rlm replay LOG --context FILE)"
    )


#: Where replay runs when the recorded environment is not isolated or cannot start here.
DEFAULT_REPLAY_ENVIRONMENT = "subprocess"


def _open_environment(
    trajectory: Trajectory, environment: str | None, kwargs: dict[str, Any]
) -> tuple[Any, str]:
    """Build the environment replay runs in; returns ``(env, name)``.

    A named ``environment`` is used as given (``"local"`` included: the caller
    asked for it). ``None`` means: the recorded environment when it is isolated
    and starts here, else :data:`DEFAULT_REPLAY_ENVIRONMENT` (which fails closed
    with its own error when it cannot isolate).
    """
    from rlm.environments import IsolatedEnv, available_environments, get_environment

    if environment is not None:
        return get_environment(environment, kwargs), environment
    recorded = trajectory.environment_type
    if (
        isinstance(recorded, str)
        and recorded not in ("local", DEFAULT_REPLAY_ENVIRONMENT)
        and recorded in available_environments()
    ):
        env = None
        try:
            env = get_environment(recorded, kwargs)
        except Exception as exc:  # not installed, no daemon, no credentials...
            warnings.warn(
                f"replay: the recorded environment {recorded!r} cannot start here "
                f"({type(exc).__name__}: {exc}); replaying in {DEFAULT_REPLAY_ENVIRONMENT!r}",
                stacklevel=4,
            )
        if env is not None:
            if isinstance(env, IsolatedEnv):
                return env, recorded
            env.cleanup()  # not isolated (in-process): the code from the file does not run here
    return get_environment(DEFAULT_REPLAY_ENVIRONMENT, kwargs), DEFAULT_REPLAY_ENVIRONMENT


class Replay:
    """An in-progress replay: iterate it for :class:`ReplayStep` objects.

    Replay executes the code recorded in the trajectory. With ``environment=None``
    (the default) it runs isolated: in the recorded environment when that is
    isolated and available, else in ``subprocess``; ``environment="local"`` runs
    it in this process, and only when asked for by name. ``environment_used``
    says where it ran.

    After the iteration, ``final_answer``, ``divergence`` (the first one, or
    ``None``), ``usage`` and ``iterations`` (log records of the replayed run)
    are set. Breaking out early releases the environment.
    """

    def __init__(
        self,
        trajectory: Trajectory,
        context: Any = ...,
        environment: str | None = None,
        environment_kwargs: dict[str, Any] | None = None,
    ):
        self.trajectory = trajectory
        self.context = _resolve_context(trajectory, context)
        self.environment = environment
        self.environment_used: str | None = None
        self.environment_kwargs = dict(environment_kwargs or {})
        self.client = RecordingLM(trajectory)
        self.final_answer: str | None = None
        self.divergence: ReplayDivergence | None = None
        self.iterations: list[dict[str, Any]] = []
        self.steps = 0
        self.execution_time = 0.0
        self._started = False

    @property
    def usage(self) -> Any:
        """Tokens and cost of the replayed calls, as recorded (no provider was called)."""
        return self.client.get_usage_summary()

    def __iter__(self) -> Iterator[ReplayStep]:
        if self._started:
            raise RuntimeError("a Replay runs once; call replay_steps() again for a new one")
        self._started = True
        return self._run()

    def _note(self, divergence: ReplayDivergence | None) -> None:
        if divergence is not None and self.divergence is None:
            self.divergence = divergence

    def _run(self) -> Iterator[ReplayStep]:
        start = time.perf_counter()
        handler = LMHandler(self.client)
        handler.start()
        env = None
        try:
            kwargs = dict(self.environment_kwargs)
            kwargs.update(
                lm_handler_address=handler.address,
                context_payload=self.context,
                depth=self.trajectory.depth + 1,
            )
            env, self.environment_used = _open_environment(
                self.trajectory, self.environment, kwargs
            )
            iterations = self.trajectory.iterations
            records_errors = any(
                "error" in (block.raw.get("result") or {}) for block in self.trajectory.blocks
            )
            for iteration in iterations:
                last = iteration.index == len(iterations) - 1
                final = yield from self._iteration(env, iteration, last, records_errors)
                if final is not None:
                    self.final_answer = final
                    break
            expected = self.trajectory.final_answer
            if self.divergence is None and self.final_answer != expected:
                self._note(
                    ReplayDivergence(
                        iteration_index=len(self.iterations) - 1,
                        block_index=None,
                        field="final_answer",
                        expected=expected,
                        actual=self.final_answer,
                    )
                )
        finally:
            self.execution_time = time.perf_counter() - start
            handler.stop()
            if env is not None:
                env.cleanup()

    def _iteration(
        self, env: Any, iteration: Iteration, last: bool, records_errors: bool
    ) -> Generator[ReplayStep, None, str | None]:
        """Replay one recorded iteration: its root response, then its blocks up to the one
        that sets a final answer; records it and returns that answer (or None)."""
        began = time.perf_counter()
        prompt = iteration.prompt if iteration.prompt is not None else []
        response = self.client.root_response(to_messages(prompt)).text
        blocks: list[CodeBlock] = []
        final: str | None = None
        for block in iteration.blocks:
            step = self._block(env, iteration, block, records_errors)
            blocks.append(CodeBlock(code=block.code, result=step.result))
            yield step
            if step.result.final_answer is not None:
                final = step.result.final_answer
                break
        if final is None:
            final = find_final_answer(response, environment=env)
        if final is None and last and not iteration.blocks and iteration.final_answer:
            final = response.strip()  # the out-of-iterations "best answer" call
        record = RLMIteration(
            prompt=prompt,
            response=response,
            code_blocks=blocks,
            final_answer=final,
            iteration_time=time.perf_counter() - began,
        )
        self.iterations.append(
            {"type": "iteration", "iteration": len(self.iterations) + 1, **iteration_record(record)}
        )
        return final

    def _block(
        self, env: Any, iteration: Iteration, block: Block, records_errors: bool
    ) -> ReplayStep:
        """Run one recorded block again and compare it with the recording."""
        if is_cut(block.code) and len(block.code) > 20_000:
            raise ReplayError(
                f"iteration {iteration.number} block {block.index}: the log kept only "
                "part of this block's code, so it cannot run again"
            )
        result = env.execute_code(block.code)
        divergence = _compare(block, result, iteration.index, records_errors)
        self._note(divergence)
        self.steps += 1
        return ReplayStep(iteration.index, block.index, block.code, block, result, divergence)

    def completion(self) -> RLMChatCompletion:
        """The replayed run as a completion (call after iterating)."""
        return RLMChatCompletion(
            root_model=self.trajectory.root_model,
            prompt=self.context,
            response=self.final_answer or "",
            usage_summary=self.usage,
            execution_time=self.execution_time,
            metadata={
                "run_metadata": dict(self.trajectory.metadata),
                "iterations": self.iterations,
                "replay": {
                    "source": self.trajectory.path,
                    "environment": self.environment_used,
                    "blocks": self.steps,
                    "matches": self.divergence is None,
                    "divergence": self.divergence.to_dict() if self.divergence else None,
                },
            },
        )


def replay_steps(
    trajectory: Trajectory,
    context: Any = ...,
    environment: str | None = None,
    environment_kwargs: dict[str, Any] | None = None,
) -> Replay:
    """Step through a replay: ``for step in replay_steps(t, context=...): ...``.

    ``context`` is needed when the trajectory came from a log file (logs keep
    only a summary of it); a trajectory from a completion already has it.
    The recorded code runs isolated unless ``environment="local"`` is given
    (see :class:`Replay`).
    """
    return Replay(trajectory, context, environment, environment_kwargs)


def run_replay(
    trajectory: Trajectory,
    context: Any = ...,
    environment: str | None = None,
    environment_kwargs: dict[str, Any] | None = None,
    strict: bool = False,
) -> tuple[RLMChatCompletion, ReplayDivergence | None]:
    """Replay to the end; returns the completion and the first divergence (or ``None``)."""
    replay_run = Replay(trajectory, context, environment, environment_kwargs)
    for step in replay_run:
        if strict and step.divergence is not None:
            raise ReplayDivergenceError(step.divergence)
    if strict and replay_run.divergence is not None:
        raise ReplayDivergenceError(replay_run.divergence)
    return replay_run.completion(), replay_run.divergence


def replay(
    trajectory: Trajectory,
    context: Any = ...,
    environment: str | None = None,
    environment_kwargs: dict[str, Any] | None = None,
    strict: bool = False,
) -> RLMChatCompletion:
    """Re-run a recorded trajectory offline and return the replayed completion.

    ``result.metadata["replay"]`` says whether every block matched and where
    the first divergence is; ``strict=True`` raises
    :class:`ReplayDivergenceError` there instead. Use
    ``Trajectory.compare()`` for the :class:`ReplayDivergence` object itself.
    """
    return run_replay(trajectory, context, environment, environment_kwargs, strict)[0]
