"""``rlm backends`` and ``rlm environments``: list what ``backend=`` and ``environment=``
accept, including third-party plugins found through entry points (groups
``rlm.backends`` and ``rlm.environments``; see :mod:`rlm.utils.registry`)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rlm.cli_common import Handler, add_command
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
    """list the model backends (built-in and plugins)

    List every name backend= and -m provider/... accept: built-in ones and plugins
    registered by installed packages under the entry-point group {group!r}.
    """
    from rlm.clients import backend_entries

    return _print(backend_entries(), args.json)


def _environments(args: argparse.Namespace) -> int:
    """list the REPL environments (built-in and plugins)

    List every name environment= accepts: built-in ones and plugins registered by
    installed packages under the entry-point group {group!r}.
    """
    from rlm.environments import environment_entries

    return _print(environment_entries(), args.json)


def _add_list_command(subparsers: Any, name: str, handler: Handler, group: str) -> None:
    """Add ``rlm NAME [--json]``, which lists the names of one registry (``group``: the
    entry-point group its plugins register under)."""
    parser = add_command(subparsers, name, handler)
    if parser.description:
        parser.description = parser.description.format(group=group)
    parser.add_argument("--json", action="store_true", help="print a JSON list")


def build_backends(subparsers: Any) -> None:
    """Add ``rlm backends``."""
    _add_list_command(subparsers, "backends", _backends, BACKEND_ENTRY_POINTS)


def build_environments(subparsers: Any) -> None:
    """Add ``rlm environments``."""
    _add_list_command(subparsers, "environments", _environments, ENVIRONMENT_ENTRY_POINTS)
