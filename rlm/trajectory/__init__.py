"""Recorded RLM runs: read them, show them, replay them offline.

``rlm.load_trajectory(path)`` reads a log (ours or the public ``rlms``
package's, 0.1.1 and 0.1.3); ``Trajectory.from_completion(result)`` takes the
trajectory a completion carries. See ``docs/trajectories.md``.
"""

from rlm.trajectory.model import (
    Block,
    Iteration,
    SubCall,
    Trajectory,
    find_logs,
    load_trajectories,
    load_trajectory,
    same_output,
)
from rlm.trajectory.replay import (
    RecordingLM,
    Replay,
    ReplayDivergence,
    ReplayDivergenceError,
    ReplayError,
    ReplayStep,
    replay,
    replay_steps,
    run_replay,
)

__all__ = [
    "Block",
    "Iteration",
    "RecordingLM",
    "Replay",
    "ReplayDivergence",
    "ReplayDivergenceError",
    "ReplayError",
    "ReplayStep",
    "SubCall",
    "Trajectory",
    "find_logs",
    "load_trajectories",
    "load_trajectory",
    "replay",
    "replay_steps",
    "run_replay",
    "same_output",
]
