"""``rlm batch``, and the RLM options that ``rlm batch`` and ``rlm serve`` share with ``rlm run``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def _json_object(text: str) -> dict[str, Any]:
    """A JSON object given inline or as ``@FILE``."""
    if text.startswith("@"):
        with open(text[1:], encoding="utf-8") as fh:
            text = fh.read()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc.msg}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def add_rlm_options(parser: argparse.ArgumentParser, max_iterations: int = 20) -> None:
    """The backend, model, environment and limit options of ``rlm run``."""
    parser.add_argument(
        "--backend", help="client backend (default: openai with a key, else llama_cpp)"
    )
    parser.add_argument(
        "-m", "--model", help="model name, or provider/model (e.g. anthropic/claude-sonnet-4-5)"
    )
    parser.add_argument(
        "--base-url", help="an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1"
    )
    parser.add_argument(
        "--backend-kwargs",
        type=_json_object,
        metavar="JSON",
        help="more backend_kwargs, as a JSON object or @FILE holding one",
    )
    parser.add_argument("--environment", default="local", help="REPL environment (default: local)")
    parser.add_argument(
        "--environment-kwargs", type=_json_object, metavar="JSON", help="environment_kwargs (JSON)"
    )
    parser.add_argument(
        "--temperature", type=float, help="sampling temperature (default: the backend's; 0 locally)"
    )
    parser.add_argument("--max-iterations", type=int, default=max_iterations)
    parser.add_argument("--max-depth", type=int, default=1)
    parser.add_argument("--max-budget", type=float, help="USD")
    parser.add_argument("--max-timeout", type=float, help="seconds")
    parser.add_argument("--max-tokens", type=int)
    parser.add_argument("--max-errors", type=int)


def rlm_config(args: argparse.Namespace) -> dict[str, Any]:
    """``RLM(**config)`` arguments from the options of :func:`add_rlm_options`."""
    from rlm.cli import choose_backend

    if args.backend in (None, "openai", "llama_cpp") or (args.model and "/" in args.model):
        backend, backend_kwargs = choose_backend(args.backend, args.model, args.base_url)
    else:
        backend, backend_kwargs = args.backend, {}
        if args.model:
            backend_kwargs["model_name"] = args.model
        if args.base_url:
            backend_kwargs["base_url"] = args.base_url
    backend_kwargs.update(args.backend_kwargs or {})
    if args.temperature is not None:
        backend_kwargs["sampling_args"] = {
            **(backend_kwargs.get("sampling_args") or {}),
            "temperature": args.temperature,
        }
    return {
        "backend": backend,
        "backend_kwargs": backend_kwargs,
        "environment": args.environment,
        "environment_kwargs": args.environment_kwargs or {},
        "max_iterations": args.max_iterations,
        "max_depth": args.max_depth,
        "max_budget": args.max_budget,
        "max_timeout": args.max_timeout,
        "max_tokens": args.max_tokens,
        "max_errors": args.max_errors,
    }


def _batch(args: argparse.Namespace) -> int:
    from rlm.batch import batch
    from rlm.core.rlm import RLM

    config = rlm_config(args)
    RLM(**config)  # check the settings before reading a line (fails loud, as rlm run does)
    summary = batch(
        args.input,
        args.output,
        config=config,
        concurrency=args.concurrency,
        engine=args.engine,
        ray_address=args.ray_address,
        progress=False if args.no_progress else None,
        retry_failed=args.retry_failed,
    )
    print(summary.line(), file=sys.stderr)
    print(json.dumps(summary.to_dict()))
    return 0


def build_batch(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "batch",
        help="run an RLM over every item of a JSON-lines dataset (resumable)",
        description="Run each item of INPUT ({id, context | context_file, question, ...} per "
        "line, with optional per-item overrides) and append one result record per item to "
        "OUTPUT. Items already in OUTPUT are skipped, so a rerun after a crash or Ctrl-C "
        "finishes the rest. Prints a summary (a line on stderr, JSON on stdout).",
    )
    parser.add_argument("input", metavar="INPUT.jsonl")
    parser.add_argument("-o", "--output", required=True, metavar="OUTPUT.jsonl")
    parser.add_argument(
        "-j", "--concurrency", type=int, default=8, help="items at once (default: 8)"
    )
    parser.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="local: in this process (default); ray: Ray tasks on a cluster (rlm[ray])",
    )
    parser.add_argument(
        "--ray-address",
        metavar="ADDRESS",
        help="a running Ray cluster (e.g. HEAD:6379 or auto); default: start a local one",
    )
    parser.add_argument(
        "--retry-failed", action="store_true", help="run again the items recorded as failed"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_rlm_options(parser)
    parser.set_defaults(handler=_batch)
