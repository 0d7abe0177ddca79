"""Run a dataset of RLM items: concurrently, with progress, per-item errors and resume.

The output is JSON lines, one record per item, appended and flushed as each item
ends (in the order items finish)::

    {"id": "doc-17", "ok": true, "response": "...", "error": null,
     "execution_time": 3.2, "root_model": "gpt-4o-mini",
     "usage": {"calls": 5, "input_tokens": 9000, "output_tokens": 400, "cost": 0.0021},
     "usage_summary": {...}, "metadata": ...}

Resume: items whose id is already in the output are skipped, so a rerun after a
crash or Ctrl-C does only what is left (``retry_failed=True`` reruns the failed
ones, replacing their records). A half-written last line (a killed writer) is
dropped. The in-process engine runs items on asyncio; ``engine="ray"`` runs them
as Ray tasks (:mod:`rlm.batch.ray_engine`) with the same output and resume rules.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlm.batch.items import BatchItem, config_of, item_config, read_items
from rlm.comms.workers import in_worker
from rlm.datatypes import cost_text

#: Items run at once by default.
DEFAULT_CONCURRENCY = 8
ENGINES = ("local", "ray")


# -- one item -------------------------------------------------------------------------


def _record(item_id: str, result: Any = None, error: str | None = None, elapsed: float = 0.0):
    if result is None:
        return {
            "id": item_id,
            "ok": False,
            "response": None,
            "error": error,
            "execution_time": round(elapsed, 6),
            "usage": {"calls": 0, "input_tokens": 0, "output_tokens": 0, "cost": None},
        }
    usage = result.usage_summary
    return {
        "id": item_id,
        "ok": result.error is None,
        "response": result.response,
        "error": result.error,
        "execution_time": round(float(result.execution_time or elapsed), 6),
        "root_model": result.root_model,
        "usage": {
            "calls": usage.total_calls,
            "input_tokens": usage.total_input_tokens,
            "output_tokens": usage.total_output_tokens,
            "cost": usage.total_cost,
        },
        "usage_summary": usage.to_dict(),
    }


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _item_rlm(config: dict[str, Any], payload: dict[str, Any], log_dir: str | None) -> Any:
    """The item's RLM, with a trajectory file of its own in ``log_dir`` (named after the
    item's id) when one is given."""
    from rlm.core.rlm import RLM

    settings = item_config(config, payload["overrides"])
    if log_dir is not None:
        from rlm.logger import RLMLogger

        name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(payload["id"]))[:100] or "item"
        settings["logger"] = RLMLogger(log_dir, file_name=name)
    return RLM(**settings)


def _logged(record: dict[str, Any], rlm: Any) -> dict[str, Any]:
    """``record`` with the path of the item's trajectory file, when it has one."""
    path = getattr(getattr(rlm, "logger", None), "log_file_path", None)
    return {**record, "log_file": path} if path else record


def run_payload(
    config: dict[str, Any], payload: dict[str, Any], log_dir: str | None = None
) -> dict[str, Any]:
    """Run one item (as made by ``BatchItem.to_payload``) to its output record. Never raises
    for the item's own failures; used in-process and by Ray workers alike."""
    start = time.perf_counter()
    rlm = None
    try:
        rlm = _item_rlm(config, payload, log_dir)
        try:
            result = rlm.completion(payload["context"], root_prompt=payload["question"])
        finally:
            rlm.close()
    except Exception as exc:
        record = _record(payload["id"], error=_describe(exc), elapsed=time.perf_counter() - start)
    else:
        record = _record(payload["id"], result, elapsed=time.perf_counter() - start)
    return _logged(record, rlm)


async def arun_payload(
    config: dict[str, Any], payload: dict[str, Any], log_dir: str | None = None
) -> dict[str, Any]:
    """``run_payload`` on the event loop (cancelling it cancels the run, down to its cells)."""
    start = time.perf_counter()
    rlm = None
    try:
        rlm = _item_rlm(config, payload, log_dir)
        try:
            result = await rlm.acompletion(payload["context"], root_prompt=payload["question"])
        finally:
            rlm.close()
    except Exception as exc:
        record = _record(payload["id"], error=_describe(exc), elapsed=time.perf_counter() - start)
    else:
        record = _record(payload["id"], result, elapsed=time.perf_counter() - start)
    return _logged(record, rlm)


# -- the output file --------------------------------------------------------------------


class OutputFile:
    """The JSON-lines output: what is already done, and appending records one line each."""

    def __init__(self, path: str | Path | None):
        # Absolute now: local REPL cells change the working directory while they run.
        self.path = Path(path).absolute() if path is not None else None
        self.records: dict[str, dict[str, Any]] = {}
        self._fh: Any = None

    def load(self, retry_failed: bool = False) -> None:
        if self.path is None or not self.path.exists():
            return
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        kept: list[bytes] = []
        dropped = end < len(data)  # a half-written last line from a killed run
        for line in data[:end].splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                item_id = str(record["id"])
            except (ValueError, KeyError, TypeError):
                dropped = True
                continue
            if retry_failed and not record.get("ok"):
                dropped = True
                self.records.pop(item_id, None)
                continue
            self.records[item_id] = record
            kept.append(line)
        if dropped:  # rewrite without the broken or retried lines, atomically
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_bytes(b"".join(line + b"\n" for line in kept))
            os.replace(tmp, self.path)

    def append(self, record: dict[str, Any]) -> None:
        self.records[str(record["id"])] = record
        if self.path is None:
            return
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self.path.open("a", encoding="utf-8")
        self._fh.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


# -- progress and summary ---------------------------------------------------------------


@dataclass
class BatchSummary:
    """What a batch did. ``records`` holds every item's record (this run's and earlier ones)."""

    total: int = 0
    done: int = 0
    failed: int = 0
    skipped: int = 0
    ran: int = 0
    calls: int = 0  # model calls made by this run
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float | None = None
    p50: float = 0.0
    p95: float = 0.0
    elapsed: float = 0.0
    output: str | None = None
    records: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "records"}
        return out

    def line(self) -> str:
        return (
            f"done {self.done}, failed {self.failed} of {self.total} items "
            f"({self.ran} run now, {self.skipped} already in the output); "
            f"cost {cost_text(self.cost, '${:.4f}')}; "
            f"{self.input_tokens + self.output_tokens:,} tokens; item time p50 {self.p50:.2f} s, "
            f"p95 {self.p95:.2f} s; {self.calls} model calls in {self.elapsed:.1f} s"
        )


def _percentile(values: list[float], pct: float) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(pct) - 1]


def summarise(
    items: list[BatchItem], output: OutputFile, skipped: int, ran: list[dict], elapsed: float
) -> BatchSummary:
    ids = {item.id for item in items}
    records = {k: v for k, v in output.records.items() if k in ids}

    def usage(record: dict[str, Any], key: str) -> Any:
        value = (record.get("usage") or {}).get(key)
        return value if key == "cost" else int(value or 0)

    known = [c for c in (usage(r, "cost") for r in records.values()) if c is not None]
    times = sorted(float(r.get("execution_time") or 0.0) for r in records.values())
    return BatchSummary(
        total=len(items),
        done=sum(1 for r in records.values() if r.get("ok")),
        failed=sum(1 for r in records.values() if not r.get("ok")),
        skipped=skipped,
        ran=len(ran),
        calls=sum(usage(r, "calls") for r in ran),
        input_tokens=sum(usage(r, "input_tokens") for r in records.values()),
        output_tokens=sum(usage(r, "output_tokens") for r in records.values()),
        cost=sum(known) if known else None,
        p50=_percentile(times, 50),
        p95=_percentile(times, 95),
        elapsed=elapsed,
        output=str(output.path) if output.path is not None else None,
        records=records,
    )


class Progress:
    """A Rich progress bar on stderr: items done, failures, tokens and cost."""

    def __init__(self, total: int, already: int, enabled: bool):
        self.enabled = enabled
        self.failed = 0
        self.tokens = 0
        self.cost = 0.0
        self._bar: Any = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichProgress

        self._bar = RichProgress(
            TextColumn("batch"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._task = self._bar.add_task("batch", total=total, completed=already, status="")
        self._bar.start()

    def update(self, record: dict[str, Any]) -> None:
        if not record.get("ok"):
            self.failed += 1
        usage = record.get("usage") or {}
        self.tokens += int(usage.get("input_tokens") or 0) + int(usage.get("output_tokens") or 0)
        self.cost += float(usage.get("cost") or 0.0)
        if self._bar is not None:
            status = f"failed {self.failed}  {self.tokens:,} tokens  ${self.cost:.4f}"
            self._bar.update(self._task, advance=1, status=status)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


# -- the batch ----------------------------------------------------------------------------


def _malformed_record(item: BatchItem) -> dict[str, Any]:
    return _record(item.id, error=f"ConfigurationError: {item.problem}")


def _settings(
    rlm: Any, config: dict[str, Any] | None, engine: str, concurrency: int, log_dir: Any
) -> tuple[dict[str, Any], str | None]:
    """The batch's checked RLM settings and its absolute ``log_dir`` (or None)."""
    if engine not in ENGINES:
        from rlm.utils.exceptions import ConfigurationError

        raise ConfigurationError(f"unknown batch engine {engine!r}; accepted: {list(ENGINES)}")
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    base = dict(config or {}) if rlm is None else {**config_of(rlm), **(config or {})}
    base.pop("depth", None)
    if log_dir is not None and "logger" in base:
        raise ValueError("pass either log_dir or a logger in config, not both")
    # Absolute now: local REPL cells change the working directory while they run.
    return base, str(Path(log_dir).absolute()) if log_dir is not None else None


async def abatch(
    items: Any,
    output: str | Path | None = None,
    *,
    rlm: Any = None,
    config: dict[str, Any] | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    engine: str = "local",
    ray_address: str | None = None,
    ray_options: dict[str, Any] | None = None,
    progress: bool | None = None,
    retry_failed: bool = False,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    log_dir: str | Path | None = None,
) -> BatchSummary:
    """Run ``items`` (a JSON-lines path or an iterable of item dicts) and return the summary.

    The RLM settings come from ``rlm`` (an ``RLM`` whose constructor arguments are reused,
    observers aside) or ``config`` (``RLM(**config)`` arguments); an item's own keys
    override them. ``output`` (a JSON-lines path) makes the batch resumable. ``log_dir``
    gives every item its own trajectory file there (``RLMLogger(log_dir, file_name=<id>)``),
    named in its record as ``log_file``."""
    base, logs = _settings(rlm, config, engine, concurrency, log_dir)
    parsed, base_dir = read_items(items)
    out = OutputFile(output)
    out.load(retry_failed=retry_failed)
    todo = [item for item in parsed if item.id not in out.records]
    skipped = len(parsed) - len(todo)
    show = sys.stderr.isatty() if progress is None else progress
    bar = Progress(len(parsed), skipped, show)
    ran: list[dict[str, Any]] = []
    start = time.perf_counter()

    metadata = {item.id: item.metadata for item in todo if item.metadata is not None}

    def finish(record: dict[str, Any]) -> None:
        if record["id"] in metadata:
            record["metadata"] = metadata[record["id"]]
        out.append(record)
        ran.append(record)
        bar.update(record)
        if on_record is not None:
            on_record(record)

    try:
        runnable = []
        for item in todo:
            if item.problem is not None:
                finish(_malformed_record(item))
            else:
                runnable.append(item)
        if engine == "ray":
            from rlm.batch.ray_engine import run_on_ray

            await in_worker(
                run_on_ray,
                base,
                runnable,
                base_dir,
                finish,
                concurrency,
                ray_address,
                ray_options,
                logs,
            )
        else:
            await _run_local(base, runnable, base_dir, finish, concurrency, logs)
    finally:
        bar.close()
        out.close()
    return summarise(parsed, out, skipped, ran, time.perf_counter() - start)


async def _run_local(
    base: dict[str, Any],
    items: list[BatchItem],
    base_dir: Path | None,
    finish: Callable[[dict[str, Any]], None],
    concurrency: int,
    log_dir: str | None = None,
) -> None:
    queue = iter(items)

    async def worker() -> None:
        for item in queue:  # each worker pulls the next item: at most `concurrency` at once
            try:
                payload = await in_worker(item.to_payload, base_dir)
            except OSError as exc:
                finish(_record(item.id, error=f"cannot read context_file: {exc}"))
                continue
            finish(await arun_payload(base, payload, log_dir))

    workers = [asyncio.ensure_future(worker()) for _ in range(min(concurrency, len(items)))]
    try:
        await asyncio.gather(*workers)
    except BaseException:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        raise


def batch(items: Any, output: str | Path | None = None, **kwargs: Any) -> BatchSummary:
    """``abatch`` from synchronous code (not from inside a running event loop)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(abatch(items, output, **kwargs))
    raise RuntimeError("batch() was called inside an event loop; use `await abatch(...)`")
