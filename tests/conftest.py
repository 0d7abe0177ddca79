"""Shared fixtures. Tests run offline; the scripted LM drives the loop deterministically."""

from __future__ import annotations

import pytest

from rlm.clients.scripted import ScriptedLM
from rlm.core.lm_handler import LMHandler


@pytest.fixture
def scripted_handler():
    """Start an LMHandler around a ScriptedLM built from the given kwargs; stopped afterwards."""
    handlers: list[LMHandler] = []

    def make(**kwargs) -> LMHandler:
        kwargs.setdefault("sub_responses", lambda messages: "sub:" + str(messages[-1]["content"]))
        handler = LMHandler(ScriptedLM(**kwargs))
        handler.start()
        handlers.append(handler)
        return handler

    yield make
    for handler in handlers:
        handler.stop()
