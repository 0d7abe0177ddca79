"""A sandbox ends with its host: a host killed with SIGKILL (no cleanup runs) leaves no
sandbox process behind, even one spinning in a cell.

Each variant starts a host process that opens a ``subprocess`` environment and runs a
cell that never ends; the test kills the host and waits (on pidfds, no polling) for
every process the host had started. Whatever is still alive is killed at the end.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import wait_exit
from tests.test_environments import require

HOST = """
import threading
from rlm.clients.scripted import ScriptedLM
from rlm.core.lm_handler import LMHandler
from rlm.environments import get_environment
asked = threading.Event()
def answer(messages):
    asked.set()
    return "ok"
handler = LMHandler(ScriptedLM(responses=answer, sub_responses=answer))
handler.start()
env = get_environment("subprocess", {{**{options!r}, "lm_handler_address": handler.address}})
cell = "llm_query('are you there?')\\nwhile True: pass"
threading.Thread(target=env.execute_code, args=(cell,), daemon=True).start()
asked.wait()  # the cell runs: it asked, and spins once answered
print(env.isolation["sandbox"], flush=True)
threading.Event().wait()
"""


def _descendants(pid: int) -> set[int]:
    found: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = list(Path(f"/proc/{parent}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                children = {int(c) for c in (task / "children").read_text().split()}
            except OSError:
                continue
            todo.extend(children - found)
            found |= children
    return found


@pytest.mark.parametrize("sandbox", ["unshare", "bwrap"])
def test_a_killed_host_takes_its_sandbox_with_it(sandbox):
    require("subprocess")
    if sandbox == "bwrap" and shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed (apt-get install bubblewrap)")
    options = {"sandbox": sandbox, "context_payload": "ctx"}
    if sandbox == "bwrap" and os.geteuid() == 0 and os.path.exists("/usr/bin/python3"):
        options["python"] = "/usr/bin/python3"  # one the unprivileged uid can reach
    host = subprocess.Popen(
        [sys.executable, "-c", HOST.format(options=options)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    started: set[int] = set()
    try:
        assert host.stdout is not None
        first = host.stdout.readline().strip()
        if first != sandbox:
            host.kill()
            pytest.fail(
                f"the host did not start a {sandbox} sandbox: {first!r} {host.stderr.read()}"
            )
        started = _descendants(host.pid)
        assert started, "the host started no sandbox process"
        host.kill()  # SIGKILL: no cleanup, no atexit
        host.wait()
        assert wait_exit(started) == set()
    finally:
        if host.poll() is None:
            host.kill()
            host.wait()
        for pid in _descendants(host.pid) | started:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
