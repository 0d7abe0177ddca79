"""What the subcommands of ``rlm`` share (the command itself is :mod:`rlm.cli`).

* :func:`add_command`: a subcommand's parser, documented by its handler's docstring;
* :func:`read_context`: the context of ``rlm run`` and ``rlm replay``, from files,
  folders or standard input;
* :func:`choose_backend`, :func:`add_rlm_options`, :func:`rlm_config` and
  :func:`rlm_settings`: the RLM settings that ``rlm run``, ``rlm batch`` and
  ``rlm serve`` take as options.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rlm.batch.items import LIMITS
from rlm.cli_options import UsageError

#: A subcommand's handler: takes the parsed arguments, returns the exit status.
Handler = Callable[[argparse.Namespace], int]


def _doc_texts(handler: Handler) -> tuple[str | None, str | None]:
    """The first paragraph of ``handler``'s docstring and the rest, each on one line."""
    if not handler.__doc__:  # python -OO strips docstrings
        return None, None
    paragraphs = [" ".join(p.split()) for p in inspect.cleandoc(handler.__doc__).split("\n\n")]
    return paragraphs[0], " ".join(paragraphs[1:]) or None


def add_command(
    subparsers: Any,
    name: str,
    handler: Handler,
    *,
    help: str | None = None,
    description: str | None = None,
) -> argparse.ArgumentParser:
    """Add the subcommand ``rlm NAME``, run by ``handler``; returns its parser.

    The handler's docstring documents the command: its first paragraph is the line in
    ``rlm --help``, the rest is the description of ``rlm NAME --help`` (each joined into
    one line; argparse wraps them). ``help`` and ``description`` replace them.
    """
    doc_help, doc_description = _doc_texts(handler)
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name, help=help or doc_help, description=description or doc_description
    )
    parser.set_defaults(handler=handler)
    return parser


# -- the context ------------------------------------------------------------------


def read_context(paths: Sequence[str] | None) -> str | list[str]:
    """The context: the files and directories in ``paths``, in order, else standard input.

    One file is its text; several (or a directory of several) are a list of texts, each
    headed ``=== PATH ===``. No context, or only blank text, is a :class:`UsageError`.
    """
    pieces: list[str] = []
    for name in paths or []:
        path = Path(name)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        if path.is_dir() and not files:
            raise ValueError(f"the directory {name} holds no files")
        for file in files:
            try:
                text = file.read_text(encoding="utf-8", errors="replace")
            except OSError as exc:
                raise ValueError(f"cannot read {file}: {exc.strerror}") from exc
            several = len(files) > 1 or len(paths or []) > 1
            pieces.append(f"=== {file} ===\n{text}" if several else text)
    if not pieces and not sys.stdin.isatty():
        pieces.append(sys.stdin.read())
    if not pieces:
        raise UsageError(
            "no context: pass --context FILE_OR_DIR (repeatable) or pipe text on stdin"
        )
    if not any(piece.strip() for piece in pieces):
        where = ", ".join(paths) if paths else "standard input"
        raise UsageError(
            f"the context is empty ({where} held no text): there is nothing to answer the "
            "question about; pass --context FILE_OR_DIR or pipe text on stdin"
        )
    return pieces[0] if len(pieces) == 1 else pieces


# -- the RLM settings -------------------------------------------------------------------


def choose_backend(
    backend: str | None, model: str | None, base_url: str | None
) -> tuple[str, dict[str, Any]]:
    """The backend and its kwargs for ``rlm run``.

    ``model`` may be ``provider/model`` (``-m anthropic/claude-sonnet-4-5``,
    :func:`rlm.clients.parse_model_string`) or a bare model name for ``backend``. With
    neither a backend nor a provider: OpenAI when OPENAI_API_KEY or ``base_url`` is set,
    else the embedded model. For the embedded model every prerequisite (llama-cpp-python,
    ``$RLM_LOCAL_MODEL``, disk space) is checked before it is fetched.
    """
    from rlm.clients import parse_model_string
    from rlm.utils.exceptions import ConfigurationError

    model_name = model
    if model and (backend is not None or "/" in model or model == "local"):
        try:
            backend, model_name = parse_model_string(model, backend)
        except ConfigurationError:
            if not base_url:  # an OpenAI-compatible server's names may hold a "/"
                raise
    if backend is None:
        backend = "openai" if (os.environ.get("OPENAI_API_KEY") or base_url) else "llama_cpp"
    kwargs: dict[str, Any] = {}
    if backend == "llama_cpp":
        from rlm.cli_options import check_local_model_prerequisites
        from rlm.local_model import fetch_model

        path = check_local_model_prerequisites()
        if path is None:
            print("Fetching the embedded model (about 1.1 GB, once)...", file=sys.stderr)
            path = fetch_model(progress=lambda msg: print(msg, file=sys.stderr))
        kwargs = {"model_path": str(path), "sampling_args": {"temperature": 0, "max_tokens": 512}}
        if model_name:
            kwargs["model_name"] = model_name
    else:
        kwargs["model_name"] = model_name or "gpt-4o-mini"
    if base_url:
        kwargs["base_url"] = base_url
    return backend, kwargs


def rlm_settings(
    args: argparse.Namespace, backend: str, backend_kwargs: dict[str, Any]
) -> dict[str, Any]:
    """``RLM(**settings)`` from the options every running command has: the backend (with
    ``--temperature`` put in its ``sampling_args``), ``--environment`` and each of the
    limits (:data:`rlm.batch.items.LIMITS`) that the command takes."""
    if args.temperature is not None:
        sampling = {**(backend_kwargs.get("sampling_args") or {}), "temperature": args.temperature}
        backend_kwargs = {**backend_kwargs, "sampling_args": sampling}
    settings = {
        "backend": backend,
        "backend_kwargs": backend_kwargs,
        "environment": args.environment,
    }
    settings.update((name, getattr(args, name)) for name in LIMITS if hasattr(args, name))
    return settings


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
    """The backend, model, environment and limit options of ``rlm batch`` and ``rlm serve``
    (those of ``rlm run``, which also come from ``RLM_*`` variables and a config file)."""
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
    if args.backend in (None, "openai", "llama_cpp") or (args.model and "/" in args.model):
        backend, backend_kwargs = choose_backend(args.backend, args.model, args.base_url)
    else:
        backend, backend_kwargs = args.backend, {}
        if args.model:
            backend_kwargs["model_name"] = args.model
        if args.base_url:
            backend_kwargs["base_url"] = args.base_url
    backend_kwargs.update(args.backend_kwargs or {})
    config = rlm_settings(args, backend, backend_kwargs)
    config["environment_kwargs"] = args.environment_kwargs or {}
    return config
