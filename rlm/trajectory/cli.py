"""``rlm replay LOG``: re-run a recorded trajectory offline and compare it with the log."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from rlm.cli_common import add_command, read_context


def _replay(args: argparse.Namespace) -> int:
    """re-run a recorded trajectory offline and compare it with the log

    Re-execute the code blocks of a trajectory log in a fresh environment, answering every
    model call from the recording (no provider is called), and report the first block
    whose output differs. Exit status 0 when the replay matches, 1 when it diverges.
    WARNING: replay EXECUTES THE CODE WRITTEN IN THE LOG FILE, and anyone who could edit
    the file chose that code. By default it runs isolated: in the recorded environment when
    that is isolated and available here, otherwise in 'subprocess'. Only --environment
    local runs it in this process.
    """
    from rlm.trajectory import ReplayError, load_trajectory
    from rlm.utils.text import truncate_end

    trajectory = load_trajectory(args.log, run=args.run)
    if args.context:
        context: Any = read_context(args.context)  # as `rlm run` reads it, so contexts match
    elif args.no_context:
        context = None
    else:
        raise ReplayError(
            "the log holds only a summary of the context; pass the same context as the "
            "recorded run with --context FILE_OR_DIR (or --no-context if it used none)"
        )
    replay = trajectory.replay_steps(context=context, environment=args.environment)
    first = True
    for step in replay:
        if first:
            first = False
            print(f"replaying in environment {replay.environment_used!r}", file=sys.stderr)
        if args.quiet:
            continue
        divergence = step.divergence
        where = divergence.field if divergence is not None else "?"
        status = "ok" if step.matches else f"DIVERGES ({where})"
        code = truncate_end(" ".join(step.code.split()), 60)
        print(f"iteration {step.iteration_index + 1} block {step.block_index}: {status}  {code}")
    print(f"final answer: {replay.final_answer}")
    if replay.divergence is None:
        print(f"replay matches the recording ({replay.steps} blocks)", file=sys.stderr)
        return 0
    print(str(replay.divergence), file=sys.stderr)
    return 1


def build_replay(subparsers: Any) -> None:
    parser = add_command(subparsers, "replay", _replay)
    parser.add_argument("log", metavar="LOG", help="a trajectory log (.jsonl)")
    parser.add_argument(
        "-c",
        "--context",
        action="append",
        metavar="PATH",
        help="the run's context: the same files or directories given to `rlm run` (repeatable)",
    )
    parser.add_argument(
        "--no-context", action="store_true", help="replay with no context (context is None)"
    )
    parser.add_argument(
        "--run", type=int, default=-1, help="which run of a log holding several (default: last)"
    )
    parser.add_argument(
        "--environment",
        default=None,
        help="where the log's code runs (default: the recorded environment if it is isolated "
        "and available, else subprocess; 'local' runs it in this process, unisolated)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the result")
