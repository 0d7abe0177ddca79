"""``rlm backends`` and ``rlm environments``: list what ``backend=`` and ``environment=``
accept, including third-party plugins found through entry points (groups
``rlm.backends`` and ``rlm.environments``; see :mod:`rlm.utils.registry`)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rlm.utils.registry import BACKEND_ENTRY_POINTS, ENVIRONMENT_ENTRY_POINTS, Entry


def _print(entries: list[Entry], as_json: bool) -> int:
    if as_json:
        print(json.dumps([e.__dict__ for e in entries]))
        return 0
    width = max((len(e.name) for e in entries), default=4)
    for entry in entries:
        detail = f"  {entry.detail}" if entry.detail else ""
        print(f"{entry.name:<{width}}  {entry.source}{detail}")
    return 0


def _backends(args: argparse.Namespace) -> int:
    from rlm.clients import backend_entries

    return _print(backend_entries(), args.json)


def _environments(args: argparse.Namespace) -> int:
    from rlm.environments import environment_entries

    return _print(environment_entries(), args.json)


def build_backends(subparsers: Any) -> None:
    """Add ``rlm backends``."""
    parser = subparsers.add_parser(
        "backends",
        help="list the model backends (built-in and plugins)",
        description="List every name backend= and -m provider/... accept: built-in ones and "
        f"plugins registered by installed packages under the entry-point group "
        f"{BACKEND_ENTRY_POINTS!r}.",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list")
    parser.set_defaults(handler=_backends)


def build_environments(subparsers: Any) -> None:
    """Add ``rlm environments``."""
    parser = subparsers.add_parser(
        "environments",
        help="list the REPL environments (built-in and plugins)",
        description="List every name environment= accepts: built-in ones and plugins "
        f"registered by installed packages under the entry-point group "
        f"{ENVIRONMENT_ENTRY_POINTS!r}.",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list")
    parser.set_defaults(handler=_environments)
