"""Shared fixtures. Tests run offline; the scripted LM drives the loop deterministically."""

from __future__ import annotations

import signal

import pytest

from rlm.clients.scripted import ScriptedLM
from rlm.core.lm_handler import LMHandler

# A shell without job control starts background commands with SIGINT ignored, and Python
# then installs no KeyboardInterrupt handler (nor do the programs the tests start, since an
# ignored signal stays ignored across exec). The Ctrl-C tests need Python's default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


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


@pytest.fixture
def docker():
    """``docker(**kwargs)`` makes a DockerREPL (the test image unless ``image`` is given);
    every one is cleaned up at the end, whatever happens. Skips (or fails, under
    RLM_REQUIRE_DOCKER=1) without an engine or image."""
    from rlm.environments.docker_repl import DockerREPL
    from tests.test_environments import DOCKER_IMAGE, require

    require("docker")
    made: list[DockerREPL] = []

    def make(**kwargs) -> DockerREPL:
        kwargs.setdefault("image", DOCKER_IMAGE)
        env = DockerREPL(**kwargs)
        made.append(env)
        return env

    yield make
    for env in made:
        env.cleanup()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Say plainly what did not run: every skip reason with its count and test names."""
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        terminalreporter.write_sep("=", "no test was skipped", green=True)
        return
    by_reason: dict[str, list[str]] = {}
    for report in skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        by_reason.setdefault(reason, []).append(report.nodeid)
    terminalreporter.write_sep("=", f"{len(skipped)} skipped, by reason", yellow=True)
    for reason, nodes in sorted(by_reason.items(), key=lambda item: -len(item[1])):
        terminalreporter.write_line(f"{len(nodes):4d} x {reason}")
        for node in nodes[:3]:
            terminalreporter.write_line(f"        {node}")
        if len(nodes) > 3:
            terminalreporter.write_line(f"        ... and {len(nodes) - 3} more")
