"""rlm: Recursive Language Models.

``RLM(...).completion(prompt)`` is a drop-in replacement for a model's
``completion(prompt)`` that handles prompts far beyond its context window.
"""

from rlm.core.rlm import RLM
from rlm.trajectory import Trajectory, load_trajectory
from rlm.utils.exceptions import (
    BudgetExceededError,
    CancellationError,
    ErrorThresholdExceededError,
    RLMError,
    TimeoutExceededError,
    TokenLimitExceededError,
)

__version__ = "0.2.0"

__all__ = [
    "RLM",
    "RLMError",
    "BudgetExceededError",
    "TimeoutExceededError",
    "TokenLimitExceededError",
    "ErrorThresholdExceededError",
    "CancellationError",
    "Trajectory",
    "load_trajectory",
]
