"""Moved to :mod:`rlm.comms.protocol`; this rlms import path is the same module under its old name."""

import sys

from rlm.comms import protocol as _module
from rlm.comms.protocol import *  # noqa: F403  (the names, for type checkers)

sys.modules[__name__] = _module
