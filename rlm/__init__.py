"""rlm: Recursive Language Models.

``RLM(...).completion(prompt)`` is a drop-in replacement for a model's
``completion(prompt)`` that handles prompts far beyond its context window.
"""

import warnings as _warnings


def _warn_if_rlms_installed() -> None:
    """Warn (once per process) when the ``rlms`` distribution is installed too.

    ``rlms`` and this package both install the ``rlm/`` folder, so whichever was
    installed last has overwritten the other's files.
    """
    from importlib import metadata

    try:
        version = metadata.version("rlms")
    except metadata.PackageNotFoundError:
        return
    except Exception:  # a broken metadata folder must never stop the import
        return
    _warnings.warn(
        f"The 'rlms' distribution ({version}) is installed alongside 'rlm'. Both install the "
        "same rlm/ package folder, so one has overwritten the other's files. Run "
        "`pip uninstall rlms`, then `pip install --force-reinstall rlm` to restore the "
        "files it removed.",
        RuntimeWarning,
        stacklevel=3,
    )


_warn_if_rlms_installed()

from rlm.core.rlm import RLM  # noqa: E402
from rlm.trajectory import Trajectory, load_trajectory  # noqa: E402
from rlm.utils.exceptions import (  # noqa: E402
    BudgetExceededError,
    CancellationError,
    ConfigurationError,
    ErrorThresholdExceededError,
    ProviderError,
    RLMError,
    StructuredOutputError,
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
    "ConfigurationError",
    "ProviderError",
    "StructuredOutputError",
    "Trajectory",
    "load_trajectory",
]
