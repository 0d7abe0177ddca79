"""``rlm export --format rlms IN OUT``: a trajectory log rewritten in one of the two formats.

``RLMLogger`` writes rlms' format by default (every iteration line holds its whole
prompt) and, with ``format="compact"``, a compact one (each line holds only the
messages its prompt adds to the previous line's). :func:`export_log` turns a log of
either format into either: ``rlms`` gives the file the default logger would have
written (lines already in that form are copied as they are), ``compact`` the file the
compact logger would have written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import IO, Any

from rlm.logger.rlm_logger import (
    LOG_FORMATS,
    LogFormatError,
    LogReader,
    iteration_line_from,
    metadata_line_from,
)


def _is_iteration(entry: dict[str, Any]) -> bool:
    return entry.get("type") == "iteration" or (
        entry.get("type") is None and "code_blocks" in entry
    )


def _kept(before: list[str], after: list[str]) -> int:
    """How many leading elements ``after`` shares with ``before``."""
    n = min(len(before), len(after))
    i = 0
    while i < n and before[i] == after[i]:
        i += 1
    return i


def _convert(lines: IO[str], out: IO[str], source: str, format: str) -> int:
    """Write each line of ``lines`` to ``out`` in ``format``; returns how many metadata and
    iteration records were read."""
    reader = LogReader(strict=True, texts=True)
    records = 0
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        where = f"{source}, line {number}"
        try:
            entry = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise LogFormatError(
                f"{where} is not JSON ({exc.msg}): not an RLM trajectory log"
            ) from None
        if not isinstance(entry, dict):
            raise LogFormatError(
                f"{where} holds a JSON {type(entry).__name__}, not a record of an RLM log"
            )
        compact_line = "prompt_kept" in entry or "prompt_new" in entry
        to_compact = (
            format == "compact"
            and not compact_line
            and _is_iteration(entry)
            and isinstance(entry.get("prompt"), list)
        )
        before = (reader.prompt_texts or []) if to_compact else []
        full = reader.read(entry, where)
        is_metadata = full.get("type") == "metadata"
        if is_metadata or _is_iteration(full):
            records += 1
        if is_metadata and ("log_format" in entry) != (format == "compact"):
            out.write(metadata_line_from(entry, format))
        elif compact_line and format == "rlms":
            out.write(iteration_line_from(entry, reader.prompt_texts or [], None))
        elif to_compact:
            texts = reader.prompt_texts or []
            out.write(iteration_line_from(entry, texts, _kept(before, texts)))
        else:  # already in the wanted form: the line as it was
            out.write(raw.rstrip("\r\n") + "\n")
    return records


def export_log(
    source: str | os.PathLike[str], destination: str | os.PathLike[str], format: str = "rlms"
) -> int:
    """Write the trajectory log ``source`` (either format) to ``destination`` in ``format``
    (``"rlms"``, the default logger's, or ``"compact"``); returns the number of metadata
    and iteration records. ``destination`` ``"-"`` is standard output; a file is written
    whole or not at all, readable by its owner only, like the logger's.

    Raises ``FileNotFoundError`` for a missing ``source`` and :class:`LogFormatError` (a
    ``ValueError``) naming the line for a file that is not an RLM trajectory log, or a
    compact log with a line missing.
    """
    if format not in LOG_FORMATS:
        raise ValueError(f"unknown log format {format!r}: the formats are {', '.join(LOG_FORMATS)}")
    source, destination = os.fspath(source), os.fspath(destination)
    if not os.path.isfile(source):
        raise FileNotFoundError(f"no such log file: {source}")
    if destination != "-" and os.path.exists(destination) and os.path.samefile(source, destination):
        raise ValueError(f"{destination} is the log being exported: write to another file")
    with open(source, encoding="utf-8", newline="") as lines:
        try:
            if destination == "-":
                records = _convert(lines, sys.stdout, source, format)
                _check_records(records, source)
            else:
                records = _write_whole(lines, destination, source, format)
        except UnicodeDecodeError as exc:
            raise LogFormatError(
                f"{source} is not UTF-8 text ({exc.reason}): not an RLM trajectory log"
            ) from None
    return records


def _check_records(records: int, source: str) -> None:
    if records == 0:
        raise LogFormatError(
            f"{source} holds no metadata or iteration records: not an RLM trajectory log"
        )


def _write_whole(lines: IO[str], destination: str, source: str, format: str) -> int:
    folder = os.path.dirname(os.path.abspath(destination))
    fd, scratch = tempfile.mkstemp(prefix=".rlm-export-", suffix=".jsonl", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as out:  # mkstemp: mode 0600
            records = _convert(lines, out, source, format)
        _check_records(records, source)
        os.replace(scratch, destination)
    except BaseException:
        os.unlink(scratch)
        raise
    return records


# -- the command --------------------------------------------------------------------


def _export(args: argparse.Namespace) -> int:
    """rewrite a trajectory log in rlms' format (or the compact one)

    Rewrite a trajectory log, written in either format, in the format asked for: 'rlms'
    (the default logger's, which the public rlms package reads: every iteration line holds
    its whole prompt) or 'compact' (RLMLogger(format='compact'): each line holds only the
    messages its prompt adds).
    """
    records = export_log(args.source, args.destination, args.format)
    if args.destination != "-":
        print(
            f"wrote {args.destination} ({records} records, {args.format} format)", file=sys.stderr
        )
    return 0


def build_export(subparsers: Any) -> None:
    from rlm.cli_common import add_command

    parser = add_command(subparsers, "export", _export)
    parser.add_argument("source", metavar="IN", help="a trajectory log (.jsonl), either format")
    parser.add_argument("destination", metavar="OUT", help="the file to write ('-': stdout)")
    parser.add_argument(
        "--format",
        choices=LOG_FORMATS,
        default="rlms",
        help="the format to write (default: rlms)",
    )
