#!/usr/bin/env python3
"""Long-context benchmark: tasks of known answer, 1x to 64x the model's window, on three arms.

    python3 benchmarks/longcontext/run.py --oracle --sizes 1,4 --seeds 0,1 --out /tmp/lc
    python3 benchmarks/longcontext/run.py --families niah --sizes 1 --seeds 0 \\
        --arms direct,rlm --out /tmp/lc-real            # the embedded model, on a local server

Every arm uses the same model. By default that is the embedded Qwen2.5-Coder-1.5B GGUF,
served by one loopback llama_cpp.server that every arm reaches with backend "openai";
--backend/--model/--base-url name any other provider; --oracle uses a scripted model
that solves each task through the RLM loop (it scores 1.0 and proves the plumbing).
Runs resume: rerunning with the same --out skips every finished task of every arm.
The table goes to stdout and to OUT/results.md and OUT/results.json, one plot per
family to OUT/plots/. See docs/longcontext.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.longcontext import arms, oracle, report, tasks  # noqa: E402
from benchmarks.longcontext.server import Tokens  # noqa: E402
from rlm.local_server import LLAMA_SERVER, LlamaServerError, llama_server  # noqa: E402

DEFAULT_WINDOW = 8192  # the embedded model's n_ctx (rlm/clients/llama_cpp.py)
CALIBRATION_CHARS = 16000  # the sample a tokenizer measures characters per token on
RLMS_HINT = "python3 -m venv /tmp/rlms-venv && /tmp/rlms-venv/bin/pip install rlms==0.1.3"


class UsageError(Exception):
    """A wrong argument or a setting the output folder disagrees with (exit status 2)."""


def _list(text: str, kind: type, name: str) -> list[Any]:
    try:
        values = [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(
            f"{name}: {text!r} is not a comma-separated list of {kind.__name__}s"
        ) from None
    if not values:
        raise UsageError(f"{name} is empty")
    return values


def _choices(text: str, accepted: tuple[str, ...], name: str) -> list[str]:
    values = _list(text, str, name)
    unknown = [v for v in values if v not in accepted]
    if unknown:
        raise UsageError(
            f"unknown {name} {', '.join(map(repr, unknown))}; accepted: {', '.join(accepted)}"
        )
    return list(dict.fromkeys(values))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run.py",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="See docs/longcontext.md for the task families, the scoring and the rlms arm.",
    )
    p.add_argument(
        "--families", default=",".join(tasks.FAMILIES), help="comma-separated: %(default)s"
    )
    p.add_argument(
        "--sizes", default="1,4,16,64", help="multiples of the window (default %(default)s)"
    )
    p.add_argument(
        "--seeds", default="0,1,2,3,4", help="comma-separated seeds (default %(default)s)"
    )
    p.add_argument(
        "--arms",
        default=None,
        help="comma-separated of direct, rlm, rlms (default: direct,rlm, and rlms when an "
        "rlms interpreter is given)",
    )
    p.add_argument(
        "--out", required=True, help="output folder; a rerun with the same folder resumes"
    )
    p.add_argument(
        "--max-iterations", type=int, default=10, help="root turns per task (default 10)"
    )
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per task (default 900)")
    p.add_argument("--concurrency", type=int, default=1, help="tasks at once per arm (default 1)")
    p.add_argument(
        "--retry-failed", action="store_true", help="run the tasks that failed before again"
    )
    p.add_argument("--oracle", action="store_true", help="a scripted model that solves every task")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="print the table of the tasks already in --out; run nothing",
    )
    p.add_argument(
        "--min-score",
        action="append",
        default=[],
        metavar="ARM=SCORE",
        help="exit with status 3 when a cell of ARM scores below SCORE, or has a failure "
        "(repeatable; CI uses rlm=1 with --oracle)",
    )
    p.add_argument("--backend", help="another provider's backend name (e.g. openai, vllm)")
    p.add_argument("--model", help="its model name")
    p.add_argument("--base-url", help="its base URL (an OpenAI-compatible server)")
    p.add_argument("--api-key", help="its API key (default: the backend's environment variable)")
    p.add_argument(
        "--window", type=int, default=DEFAULT_WINDOW, help="the model's window in tokens"
    )
    p.add_argument(
        "--chars-per-token",
        type=float,
        default=4.0,
        help="characters per token without a tokenizer (default 4)",
    )
    p.add_argument(
        "--tokenizer",
        help="a GGUF file whose tokenizer sizes contexts and cuts DIRECT's (default: the "
        "embedded model's file when it is the model)",
    )
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (0)")
    p.add_argument(
        "--answer-tokens", type=int, default=1024, help="max tokens per root or sub answer (1024)"
    )
    p.add_argument(
        "--rlms-python",
        default=os.environ.get("RLM_RLMS_PYTHON"),
        help="an interpreter with rlms 0.1.3 installed (default $RLM_RLMS_PYTHON); " + RLMS_HINT,
    )
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="llama.cpp threads")
    p.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="an extra argument for llama_cpp.server (repeatable), e.g. --server-arg=--cache",
    )
    p.add_argument(
        "--kv-reuse",
        choices=("on", "off"),
        default="on",
        help="the embedded model's server reuses the KV cache of the prompt prefix it holds "
        "(on), or evaluates every prompt whole (off: noreuse_server.py)",
    )
    return p


def _min_scores(values: list[str], chosen: list[str]) -> dict[str, float]:
    """``--min-score ARM=SCORE`` values as {arm: score}, each arm one that runs."""
    out: dict[str, float] = {}
    for value in values:
        arm, sep, score = value.partition("=")
        if not sep or arm not in chosen:
            raise UsageError(f"--min-score wants ARM=SCORE with ARM one of {chosen}, got {value!r}")
        try:
            out[arm] = float(score)
        except ValueError:
            raise UsageError(f"--min-score {value!r}: {score!r} is not a number") from None
        if not 0 <= out[arm] <= 1:
            raise UsageError(f"--min-score {value!r}: scores run from 0 to 1")
    return out


def _below(table: list[report.Row], minimum: dict[str, float]) -> list[str]:
    """The cells that miss ``--min-score``: a lower mean score, or a failed task."""
    return [
        f"{row.family} {row.size:g}x {row.arm}: score {row.score:.2f} < {minimum[row.arm]:g}"
        if row.score < minimum[row.arm]
        else f"{row.family} {row.size:g}x {row.arm}: {row.failures} failed task(s)"
        for row in table
        if row.arm in minimum and (row.score < minimum[row.arm] or row.failures)
    ]


def check(args: argparse.Namespace) -> argparse.Namespace:
    """Turn the comma lists into lists and refuse wrong combinations (UsageError)."""
    args.families = _choices(args.families, tasks.FAMILIES, "family")
    args.sizes = _list(args.sizes, float, "--sizes")
    args.seeds = _list(args.seeds, int, "--seeds")
    if any(s <= 0 for s in args.sizes):
        raise UsageError(f"--sizes must be > 0, got {args.sizes}")
    if any(s < 0 for s in args.seeds):
        raise UsageError(f"--seeds must be >= 0, got {args.seeds}")
    for name in ("max_iterations", "concurrency", "answer_tokens"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1")
    if args.timeout <= 0:
        raise UsageError("--timeout must be > 0")
    if args.window < 256:
        raise UsageError(f"--window must be at least 256 tokens, got {args.window}")
    if args.chars_per_token <= 0:
        raise UsageError("--chars-per-token must be > 0")
    default_arms = "direct,rlm" + (",rlms" if args.rlms_python and not args.oracle else "")
    args.arms = _choices(args.arms or default_arms, arms.ARMS, "arm")
    args.arms.sort(key=arms.ARMS.index)
    if args.oracle and (args.backend or args.model or args.base_url):
        raise UsageError("--oracle uses its scripted model: drop --backend/--model/--base-url")
    if args.oracle and "rlms" in args.arms:
        raise UsageError(
            "--oracle cannot drive the rlms arm: rlms runs in its own interpreter, where this "
            "process's scripted model does not exist (point --base-url at a scripted "
            "OpenAI-compatible server instead, as tests/test_longcontext.py does)"
        )
    if (args.backend or args.base_url) and not args.model:
        raise UsageError("--backend/--base-url need --model (the model name to ask for)")
    if args.kv_reuse == "off" and (args.oracle or _provider(args)):
        raise UsageError(
            "--kv-reuse off turns reuse off in the embedded model's server; with --oracle "
            "or --backend/--model/--base-url no such server runs"
        )
    if args.kv_reuse == "off" and any(a.split("=")[0] == "--cache" for a in args.server_arg):
        raise UsageError(
            "--kv-reuse off with --server-arg=--cache: the RAM cache would save and load every "
            "prompt's state, which the reuse-off server then throws away (a cost the "
            "control arm must not pay)"
        )
    if "rlms" in args.arms and not args.rlms_python:
        raise UsageError(
            f"the rlms arm needs --rlms-python PATH or RLM_RLMS_PYTHON; make one: {RLMS_HINT}"
        )
    args.min_score = _min_scores(args.min_score, args.arms)
    smallest = min(args.sizes) * args.window * args.chars_per_token
    if smallest < 2000:
        raise UsageError(
            f"--sizes {min(args.sizes):g} x --window {args.window} is about {smallest:.0f} "
            "characters; the smallest task is 2,000"
        )
    return args


# -- the tasks -----------------------------------------------------------------------------


def task_id(family: str, multiple: float, seed: int) -> str:
    return f"{family}-{multiple:g}x-s{seed}"


def prepare(
    args: argparse.Namespace, tokens: Tokens, out: Path
) -> tuple[list[arms.Prepared], dict[str, dict]]:
    """The grid's tasks, generated once into OUT/contexts and OUT/tasks (reused on a rerun)."""
    prepared, specs = [], {}
    for family in args.families:
        for seed in args.seeds:
            ratio = tokens.chars_per_token
            if tokens.exact:
                ratio = tokens.ratio(tasks.generate(family, CALIBRATION_CHARS, seed).context)
            for multiple in args.sizes:
                size_chars = max(2000, round(multiple * args.window * ratio))
                tid = task_id(family, multiple, seed)
                spec_path = out / "tasks" / f"{tid}.json"
                context_path = (out / "contexts" / f"{tid}.txt").absolute()
                if spec_path.exists() and context_path.exists():
                    spec = json.loads(spec_path.read_text(encoding="utf-8"))
                    if spec["size_chars"] != size_chars:
                        raise UsageError(
                            f"{spec_path} was made with {spec['size_chars']:,} characters but "
                            f"this run asks for {size_chars:,} (another --window, "
                            "--chars-per-token or tokenizer): use another --out"
                        )
                else:
                    task = tasks.generate(family, size_chars, seed)
                    spec = {"id": tid, "multiple": multiple, **task.spec()}
                    spec["tokens"] = round(len(task.context) / ratio)
                    for path, text in ((context_path, task.context), (spec_path, json.dumps(spec))):
                        path.parent.mkdir(parents=True, exist_ok=True)
                        tmp = path.with_name(path.name + ".tmp")
                        tmp.write_text(text, encoding="utf-8")
                        os.replace(tmp, path)
                specs[tid] = spec
                metadata = {
                    "family": family,
                    "multiple": multiple,
                    "seed": seed,
                    "size_chars": size_chars,
                }
                prepared.append(arms.Prepared(tid, spec["question"], context_path, metadata))
    return prepared, specs


# -- the model -----------------------------------------------------------------------------


def _sampling(args: argparse.Namespace) -> dict[str, Any]:
    return {"temperature": args.temperature, "max_tokens": args.answer_tokens}


@contextlib.contextmanager
def model_for(args: argparse.Namespace, out: Path, start: bool) -> Iterator[arms.Model | None]:
    """The model every arm uses (``start=False``: nothing will run, start no server)."""
    if args.oracle:
        kwargs = {"responses": oracle.scripted_reply, "model_name": "oracle"}
        yield arms.Model(
            "scripted", kwargs, args.window, "oracle (scripted, benchmarks/longcontext/oracle.py)"
        )
        return
    if _provider(args):
        kwargs: dict[str, Any] = {"model_name": args.model, "sampling_args": _sampling(args)}
        kwargs["timeout"] = args.timeout
        if args.base_url:
            kwargs["base_url"] = args.base_url
        if args.api_key:
            kwargs["api_key"] = args.api_key
        elif _loopback(args.base_url):
            kwargs["api_key"] = "local"  # a loopback server needs no key
        yield arms.Model(
            args.backend or "openai",
            kwargs,
            args.window,
            f"{args.model} ({args.backend or 'openai'})",
        )
        return
    path = embedded_model()
    if not start:
        yield None
        return
    from rlm.clients.llama_cpp import model_name_from_path

    with llama_server(
        path,
        args.window,
        args.threads,
        log_path=out / "llama-server.log",
        extra_args=args.server_arg,
        launcher=_NO_REUSE if args.kv_reuse == "off" else LLAMA_SERVER,
    ) as url:
        kwargs = {
            "model_name": model_name_from_path(path),
            "base_url": url,
            "api_key": "local",
            "timeout": args.timeout,
            "sampling_args": _sampling(args),
        }
        label = (
            f"{model_name_from_path(path)} (embedded GGUF on llama_cpp.server, n_ctx {args.window}"
            f"{', KV-cache reuse off' if args.kv_reuse == 'off' else ''})"
        )
        yield arms.Model("openai", kwargs, args.window, label)


#: The launcher of a server that evaluates every prompt whole (``--kv-reuse off``).
_NO_REUSE = (str(Path(__file__).resolve().parent / "noreuse_server.py"),)
#: What that server writes first in its log.
_NO_REUSE_MARK = "noreuse_server: prefix reuse is off"


def _same_reuse(log: Path, kv_reuse: str) -> None:
    """Refuse to resume a folder whose server ran with the other ``--kv-reuse``: its log,
    appended to by every run, would mix the two (and so would its task records)."""
    try:
        text = log.read_text(errors="replace")
    except FileNotFoundError:
        return
    was = "off" if _NO_REUSE_MARK in text else "on"
    if "prompt eval time" in text and was != kv_reuse:
        raise UsageError(
            f"{log.parent} holds a run with --kv-reuse {was}; resume it with --kv-reuse {was}, "
            f"or give --kv-reuse {kv_reuse} its own --out folder"
        )


def _provider(args: argparse.Namespace) -> bool:
    """Whether the model is one the user named (not the embedded one)."""
    return bool(args.backend or args.base_url or args.model)


def _loopback(url: str | None) -> bool:
    from urllib.parse import urlparse

    return bool(url) and urlparse(url).hostname in ("127.0.0.1", "localhost", "::1")


def embedded_model() -> Path:
    from rlm.local_model import find_model

    missing = [
        m
        for m in ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "pydantic_settings")
        if importlib.util.find_spec(m) is None
    ]
    if missing:
        raise UsageError(
            f"the embedded model's server needs {', '.join(missing)}: pip install "
            '"rlm[local-server]" (or use --oracle, or --backend/--model/--base-url)'
        )
    path = find_model()
    if path is None:
        raise UsageError(
            "the embedded model is not fetched: python3 -m rlm fetch-model "
            "(or use --oracle, or --backend/--model/--base-url)"
        )
    return path


def tokens_for(args: argparse.Namespace) -> Tokens:
    gguf = args.tokenizer
    if gguf is None and not args.oracle and not _provider(args):
        gguf = embedded_model()
    try:
        return Tokens(args.chars_per_token, gguf)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


# -- the run -------------------------------------------------------------------------------


def _pending(arm: str, prepared: list[arms.Prepared], out: Path, retry_failed: bool) -> int:
    records = arms.records(out / "runs" / f"{arm}.jsonl")
    done = {tid for tid, r in records.items() if r.get("ok") or not retry_failed}
    return sum(1 for task in prepared if task.id not in done)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    out = Path(args.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    if not (args.oracle or _provider(args) or args.report_only):
        _same_reuse(out / "llama-server.log", args.kv_reuse)  # before its server is started
    rlms_version = None
    if "rlms" in args.arms:
        try:
            rlms_version = arms.rlms_version(args.rlms_python)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    tokens = tokens_for(args)
    prepared, specs = prepare(args, tokens, out)
    pending = {arm: _pending(arm, prepared, out, args.retry_failed) for arm in args.arms}
    if args.report_only:  # the table of what the folder holds; nothing runs
        pending = dict.fromkeys(args.arms, 0)
    settings = arms.Settings(
        args.max_iterations, args.timeout, args.concurrency, args.rlms_python, args.retry_failed
    )

    def report_line(arm: str):
        def on_record(record: dict[str, Any]) -> None:
            e = report.entry(specs[record["id"]], record, arm)
            failed = "" if e["ok"] else f" FAILED: {str(e['error'])[:200]}"
            print(
                f"[{arm}] {e['id']}: score {e['score']:.2f} in {e['time']:.1f} s{failed}",
                file=sys.stderr,
                flush=True,
            )

        return on_record

    label = "not started (nothing left to run)"
    with model_for(args, out, start=any(pending.values())) as model:
        if model is not None:
            label = model.label
        for arm in args.arms:
            path = out / "runs" / f"{arm}.jsonl"
            print(
                f"[{arm}] {pending[arm]} of {len(prepared)} tasks to run ({len(prepared) - pending[arm]} already in {path})",
                file=sys.stderr,
                flush=True,
            )
            if not pending[arm]:
                continue
            assert model is not None
            if arm == "direct":
                arms.run_direct(prepared, model, tokens, path, settings, report_line(arm))
            elif arm == "rlm":
                arms.run_rlm(prepared, model, path, settings, report_line(arm))
            else:
                arms.run_rlms(prepared, model, path, settings, report_line(arm))

    entries = []
    for arm in args.arms:
        done = arms.records(out / "runs" / f"{arm}.jsonl")
        entries += [report.entry(specs[t.id], done[t.id], arm) for t in prepared if t.id in done]
    table = report.rows(entries, args.families, args.arms)
    wall = time.perf_counter() - started
    summary = {
        "model": label,
        "window": f"{args.window} tokens",
        "sizing": f"tokenizer {tokens.gguf}"
        if tokens.exact
        else f"{tokens.chars_per_token:g} characters per token",
        "arms": ", ".join(args.arms) + (f" (rlms {rlms_version})" if rlms_version else ""),
        "families": ", ".join(args.families),
        "sizes": ", ".join(f"{s:g}x" for s in args.sizes),
        "seeds": ", ".join(map(str, args.seeds)),
        "max_iterations": args.max_iterations,
        "timeout": f"{args.timeout:g} s per task",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "wall time of this run": f"{wall:.1f} s",
    }
    # --report-only writes nothing: its settings are this command's, not the run's.
    text = report.write(out, table, entries, summary, save=not args.report_only)
    print(text)
    if not args.report_only:
        paths, why_not = report.plot(out, table, label)
        if why_not:
            print(f"No plots: {why_not}.", file=sys.stderr)
        for path in paths:
            print(f"plot: {path}", file=sys.stderr)
        print(
            f"results: {out / 'results.md'}, {out / 'results.json'}; wall time {wall:.1f} s",
            file=sys.stderr,
        )
    missed = _below(table, args.min_score)
    for line in missed:
        print(f"run.py: below --min-score: {line}", file=sys.stderr)
    return 3 if missed else 0


def _stop_on_sigterm() -> None:
    """``kill`` (SIGTERM) ends the run as Ctrl-C does, so the model server it started is
    stopped too (Python's default for SIGTERM exits without running ``finally``)."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    try:
        return run(check(args))
    except UsageError as exc:
        p.error(str(exc))  # exits with status 2
    except LlamaServerError as exc:
        print(f"run.py: {exc}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    _stop_on_sigterm()
    sys.exit(main())
