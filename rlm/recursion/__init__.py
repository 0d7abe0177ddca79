"""Recursion: child RLMs and the sub-calls that reach them (see :mod:`rlm.recursion.children`)."""
