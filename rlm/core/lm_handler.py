"""Moved to :mod:`rlm.comms.lm_handler`; this rlms import path is the same module under its old name."""

import sys

from rlm.comms import lm_handler as _module
from rlm.comms.lm_handler import *  # noqa: F403  (the names, for type checkers)

sys.modules[__name__] = _module
