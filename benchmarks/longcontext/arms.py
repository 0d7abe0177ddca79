"""The arms: one model, three ways of answering.

* ``direct``: the model alone, one call, the context cut to fit its window;
* ``rlm``: this repository's RLM, through the batch runner (``rlm.batch.batch``);
* ``rlms``: the public rlms 0.1.3 package, one driver process per task in the
  interpreter that has it (``rlms_driver.py``), so the two packages never share a process.

Every arm writes one JSON line per task to ``DIR/runs/<arm>.jsonl``, in the batch
runner's record format (the loop arms also write each task's trajectory to
``DIR/trajectories/<arm>/``, for ``rlm view``), and a rerun skips the tasks already there (the batch runner's
resume rules; the direct and rlms arms use its output file). The loop arms get the same
configuration: sub-calls go to the same model under the name ``<model>@sub``, so that
root and sub-call tokens can be told apart in the usage.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.longcontext.server import Tokens
from rlm.batch import batch as run_batch
from rlm.batch.runner import OutputFile
from rlm.clients import get_client
from rlm.datatypes import UsageSummary

ARMS = ("direct", "rlm", "rlms")
#: Suffix of the model name sub-calls are sent under.
SUB = "@sub"
DRIVER = Path(__file__).resolve().with_name("rlms_driver.py")
#: Tokens the DIRECT arm keeps free for its answer.
DIRECT_ANSWER_TOKENS = 512
DIRECT_TEMPLATE = (
    "Read the text below, then answer the question after it.\n\n"
    "<text>\n{text}\n</text>\n\nQuestion: {question}"
)

Record = dict[str, Any]


@dataclass(frozen=True)
class Model:
    """How every arm reaches the model: a backend and its client options (root calls,
    and sub-calls under ``<model_name>@sub``), and its window in tokens."""

    backend: str
    kwargs: dict[str, Any]
    window: int
    label: str

    @property
    def sub_kwargs(self) -> dict[str, Any]:
        return {**self.kwargs, "model_name": f"{self.kwargs.get('model_name')}{SUB}"}

    def loop_config(self, max_iterations: int, timeout: float) -> dict[str, Any]:
        """``RLM(...)`` arguments for the rlm and rlms arms alike."""
        return {
            "backend": self.backend,
            "backend_kwargs": self.kwargs,
            "other_backends": [self.backend],
            "other_backend_kwargs": [self.sub_kwargs],
            "max_iterations": max_iterations,
            "max_timeout": timeout,
        }


@dataclass(frozen=True)
class Prepared:
    """A task as the arms see it: its id, question, context file and metadata."""

    id: str
    question: str
    context_file: Path
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Settings:
    max_iterations: int
    timeout: float
    concurrency: int = 1
    rlms_python: str | None = None
    retry_failed: bool = False


def trajectories(path: Path, arm: str) -> Path:
    """Where the loop arm writing ``path`` (``DIR/runs/<arm>.jsonl``) puts its tasks'
    trajectory files."""
    return path.parent.parent / "trajectories" / arm


def _usage_summary(generation_model: str, usage: Any) -> dict[str, Any]:
    return UsageSummary({generation_model: usage}).to_dict()


def _record(
    task: Prepared,
    *,
    response: str | None,
    error: str | None,
    elapsed: float,
    root_model: str | None = None,
    usage_summary: dict[str, Any] | None = None,
    **extra: Any,
) -> Record:
    """A record in the batch runner's format (``usage`` totals from ``usage_summary``)."""
    models = (usage_summary or {}).get("model_usage_summaries") or {}
    return {
        "id": task.id,
        "ok": error is None,
        "response": response,
        "error": error,
        "execution_time": round(elapsed, 6),
        "root_model": root_model,
        "usage": {
            "calls": sum(int(u.get("total_calls") or 0) for u in models.values()),
            "input_tokens": sum(int(u.get("total_input_tokens") or 0) for u in models.values()),
            "output_tokens": sum(int(u.get("total_output_tokens") or 0) for u in models.values()),
            "cost": (usage_summary or {}).get("total_cost"),
        },
        "usage_summary": usage_summary or {"model_usage_summaries": {}},
        "metadata": task.metadata,
        **extra,
    }


def _each(
    todo: list[Prepared],
    work: Callable[[Prepared], Record],
    output: OutputFile,
    concurrency: int,
    on_record: Callable[[Record], None],
) -> None:
    """``work`` on every task, ``concurrency`` at once; records appended as they end. On an
    interrupt nothing waits for the calls in flight (stopping the model server ends them)."""
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="longcontext")
    try:
        for future in as_completed([pool.submit(work, task) for task in todo]):
            record = future.result()
            output.append(record)
            on_record(record)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        output.close()


def _todo(
    tasks: list[Prepared], path: Path, retry_failed: bool
) -> tuple[OutputFile, list[Prepared]]:
    output = OutputFile(path)
    output.load(retry_failed=retry_failed)
    return output, [t for t in tasks if t.id not in output.records]


def records(path: Path) -> dict[str, Record]:
    """The records an arm has written to ``path`` so far, by task id (the batch runner's
    reading: a half-written last line is dropped)."""
    output = OutputFile(path)
    output.load()
    return output.records


# -- direct ------------------------------------------------------------------------------


def direct_prompt(context: str, question: str, model: Model, tokens: Tokens) -> tuple[str, int]:
    """The DIRECT arm's prompt (the context's head cut to the window) and the number of
    context characters it keeps."""
    frame = DIRECT_TEMPLATE.format(text="", question=question)
    # Room for the chat template's own tokens too.
    budget = model.window - DIRECT_ANSWER_TOKENS - tokens.count(frame) - 64
    shown = tokens.head(context, budget)
    return DIRECT_TEMPLATE.format(text=shown, question=question), len(shown)


def run_direct(
    tasks: list[Prepared],
    model: Model,
    tokens: Tokens,
    path: Path,
    settings: Settings,
    on_record: Callable[[Record], None],
) -> int:
    """The DIRECT arm over ``tasks``; returns how many tasks it ran now."""
    output, todo = _todo(tasks, path, settings.retry_failed)
    if not todo:
        output.close()
        return 0
    sampling = {**(model.kwargs.get("sampling_args") or {}), "max_tokens": DIRECT_ANSWER_TOKENS}
    kwargs = {**model.kwargs, "sampling_args": sampling}
    if model.backend != "scripted":
        kwargs.setdefault("timeout", settings.timeout)
    client = get_client(model.backend, kwargs)

    def work(task: Prepared) -> Record:
        start = time.perf_counter()
        shown = 0
        try:
            context = task.context_file.read_text(encoding="utf-8")
            prompt, shown = direct_prompt(context, task.question, model, tokens)
            generation = client.generate(prompt)
        except Exception as exc:
            return _record(
                task,
                response=None,
                error=f"{type(exc).__name__}: {exc}",
                elapsed=time.perf_counter() - start,
                context_chars_shown=shown,
            )
        return _record(
            task,
            response=generation.text,
            error=None,
            elapsed=time.perf_counter() - start,
            root_model=generation.model,
            usage_summary=_usage_summary(generation.model, generation.usage()),
            context_chars_shown=shown,
        )

    _each(todo, work, output, settings.concurrency, on_record)
    return len(todo)


# -- rlm (ours, through the batch runner) --------------------------------------------------


def run_rlm(
    tasks: list[Prepared],
    model: Model,
    path: Path,
    settings: Settings,
    on_record: Callable[[Record], None],
) -> int:
    """Our RLM over ``tasks`` with ``rlm.batch.batch`` (which resumes from ``path``)."""
    items = [
        {
            "id": task.id,
            "context_file": str(task.context_file),
            "question": task.question,
            "metadata": task.metadata,
        }
        for task in tasks
    ]
    config = model.loop_config(settings.max_iterations, settings.timeout)
    # A cell may take the whole task's time (a tally of every line by sub-calls takes
    # 15-20 minutes on two cores), not the REPL's default 600 s.
    config["environment_kwargs"] = {"cell_timeout": settings.timeout}
    # The model's window, which an OpenAI-compatible server does not report: with it the
    # loop cuts outputs and compacts the history before the window overflows (without
    # it, a ten-turn OOLONG task asked for 9,511 tokens of an 8,192-token window). rlms
    # has no such argument.
    config["context_window"] = model.window
    summary = run_batch(
        items,
        path,
        config=config,
        concurrency=settings.concurrency,
        progress=False,
        retry_failed=settings.retry_failed,
        on_record=on_record,
        log_dir=trajectories(path, "rlm"),
    )
    return int(summary.ran)


# -- rlms (the public package, in its own interpreter) -------------------------------------


def _driver(python: str, request: dict[str, Any], timeout: float) -> dict[str, Any]:
    """One driver run: ``request`` on stdin, the JSON line it prints back. Runs with
    ``-I`` from an empty folder, without PYTHONPATH, so it never imports this repository."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    with tempfile.TemporaryDirectory(prefix="lc-rlms-") as cwd:
        done = subprocess.run(
            [python, "-I", str(DRIVER)],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd,
            env=env,
        )
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or not lines:
        tail = "\n".join((done.stderr or "").strip().splitlines()[-8:])
        raise RuntimeError(f"the rlms driver exited with status {done.returncode}:\n{tail}")
    return json.loads(lines[-1])


def rlms_version(python: str) -> str:
    """The rlms version ``python`` has; raises ``ValueError`` saying what is wrong."""
    if not Path(python).exists():
        raise ValueError(f"the rlms interpreter {python} does not exist")
    try:
        return str(_driver(python, {"probe": True}, timeout=120)["rlms_version"])
    except (RuntimeError, OSError, subprocess.SubprocessError, KeyError, ValueError) as exc:
        raise ValueError(
            f"{python} cannot run rlms ({exc}); make it with: python3 -m venv /tmp/rlms-venv "
            "&& /tmp/rlms-venv/bin/pip install rlms==0.1.3"
        ) from None


def run_rlms(
    tasks: list[Prepared],
    model: Model,
    path: Path,
    settings: Settings,
    on_record: Callable[[Record], None],
) -> int:
    """rlms 0.1.3 over ``tasks``, one driver process each."""
    if settings.rlms_python is None:
        raise ValueError("the rlms arm needs --rlms-python or RLM_RLMS_PYTHON")
    output, todo = _todo(tasks, path, settings.retry_failed)
    if not todo:
        output.close()
        return 0
    config = model.loop_config(settings.max_iterations, settings.timeout)
    python = settings.rlms_python

    def work(task: Prepared) -> Record:
        start = time.perf_counter()
        request = {
            "context_file": str(task.context_file),
            "question": task.question,
            "log_dir": str(trajectories(path, "rlms")),
            "id": task.id,
        }
        try:
            # The driver's own limit is max_timeout; this one catches a hung process.
            reply = _driver(python, {**request, "config": config}, settings.timeout * 1.5 + 60)
        except (RuntimeError, OSError, subprocess.SubprocessError, ValueError) as exc:
            return _record(
                task,
                response=None,
                error=f"{type(exc).__name__}: {exc}",
                elapsed=time.perf_counter() - start,
            )
        return _record(
            task,
            response=reply.get("response"),
            error=reply.get("error"),
            elapsed=float(reply.get("execution_time") or time.perf_counter() - start),
            root_model=reply.get("root_model"),
            usage_summary=reply.get("usage_summary"),
            rlms_version=reply.get("rlms_version"),
            log_file=reply.get("log_file"),
        )

    _each(todo, work, output, settings.concurrency, on_record)
    return len(todo)
