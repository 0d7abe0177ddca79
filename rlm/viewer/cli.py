"""``rlm view LOG_OR_DIR``: the trajectory viewer in a browser."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from rlm.cli_common import add_command


def _view(args: argparse.Namespace) -> int:
    """browse trajectory logs in a web browser

    Serve a self-contained viewer for a trajectory log, or every .jsonl log under a
    directory, on 127.0.0.1: runs, the timeline of iterations, code, output, the sub-call
    tree, tokens and cost per model, errors, search.
    """
    from rlm.viewer.server import serve

    def ready(url: str) -> None:
        print(f"Serving {args.path} at {url} (Ctrl-C to stop)", file=sys.stderr, flush=True)

    try:
        serve(args.path, port=args.port, open_browser=not args.no_browser, ready=ready)
    except KeyboardInterrupt:
        return 0
    return 0


def build_view(subparsers: Any) -> None:
    parser = add_command(subparsers, "view", _view)
    parser.add_argument("path", metavar="LOG_OR_DIR", help="a .jsonl log or a folder of them")
    parser.add_argument(
        "--port", type=int, default=0, help="port on 127.0.0.1 (default: any free port)"
    )
    parser.add_argument(
        "--no-browser", action="store_true", help="only print the address; do not open a browser"
    )
