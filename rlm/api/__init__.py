"""The public entry points of an RLM (see :mod:`rlm.api.calls`)."""
