"""Moved to :mod:`rlm.datatypes`; this rlms import path is the same module under its old name."""

import sys

from rlm import datatypes as _module
from rlm.datatypes import *  # noqa: F403  (the names, for type checkers)

sys.modules[__name__] = _module
