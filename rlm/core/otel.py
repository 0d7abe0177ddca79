"""Moved to :mod:`rlm.tracing.otel`; this rlms import path is the same module under its old name."""

import sys

from rlm.tracing import otel as _module
from rlm.tracing.otel import *  # noqa: F403  (the names, for type checkers)

sys.modules[__name__] = _module
