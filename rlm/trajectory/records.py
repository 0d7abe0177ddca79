"""Flat rows of a trajectory, for pandas or any table tool."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rlm.trajectory.model import Trajectory

KINDS = ("blocks", "iterations", "subcalls")


def records(trajectory: Trajectory, kind: str) -> list[dict[str, Any]]:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    run = trajectory.name
    if kind == "iterations":
        return [
            {
                "run": run,
                "iteration": it.number,
                "timestamp": it.timestamp,
                "iteration_time": it.iteration_time,
                "blocks": len(it.blocks),
                "subcalls": len(it.calls),
                "errors": sum(block.failed for block in it.blocks),
                "response_chars": len(it.response),
                "final_answer": it.final_answer,
            }
            for it in trajectory.iterations
        ]
    if kind == "blocks":
        return [
            {
                "run": run,
                "iteration": trajectory.iterations[block.iteration_index].number,
                "block": block.index,
                "code": block.code,
                "stdout": block.stdout,
                "stderr": block.stderr,
                "error": block.error,
                "failed": block.failed,
                "execution_time": block.execution_time,
                "subcalls": len(block.calls),
                "final_answer": block.final_answer,
            }
            for block in trajectory.blocks
        ]
    rows = []
    for block in trajectory.blocks:
        number = trajectory.iterations[block.iteration_index].number
        for position, call in enumerate(block.calls):
            for sub in call.walk():
                usage = sub.usage
                rows.append(
                    {
                        "run": run,
                        "iteration": number,
                        "block": block.index,
                        "call": position,
                        "depth": sub.depth,
                        "model": sub.model,
                        "prompt": sub.prompt_text,
                        "response": sub.response,
                        "input_tokens": usage.total_input_tokens,
                        "output_tokens": usage.total_output_tokens,
                        "cost": usage.total_cost,
                        "execution_time": sub.execution_time,
                        "error": sub.error,
                        "has_child_run": sub.child is not None,
                    }
                )
    return rows
