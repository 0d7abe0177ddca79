"""``rlm batch``: an RLM over every item of a JSON-lines dataset."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from rlm.cli_common import add_command, add_rlm_options, rlm_config


def _batch(args: argparse.Namespace) -> int:
    """run an RLM over every item of a JSON-lines dataset (resumable)

    Run each item of INPUT ({id, context | context_file, question, ...} per line, with
    optional per-item overrides) and append one result record per item to OUTPUT. Items
    already in OUTPUT are skipped, so a rerun after a crash or Ctrl-C finishes the rest.
    Prints a summary (a line on stderr, JSON on stdout).
    """
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
        log_dir=args.log_dir,
    )
    print(summary.line(), file=sys.stderr)
    print(json.dumps(summary.to_dict()))
    return 0


def build_batch(subparsers: Any) -> None:
    parser = add_command(subparsers, "batch", _batch)
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
        "--log-dir",
        metavar="DIR",
        help="write each item's trajectory to DIR (one JSON-lines file per item, "
        "named after its id; the record's log_file gives the path)",
    )
    parser.add_argument(
        "--retry-failed", action="store_true", help="run again the items recorded as failed"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_rlm_options(parser)
