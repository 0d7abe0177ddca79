"""The trajectory viewer: ``rlm view LOG_OR_DIR`` (see :mod:`rlm.viewer.server`)."""

from rlm.viewer.server import LogLibrary, ViewerServer, serve

__all__ = ["LogLibrary", "ViewerServer", "serve"]
