"""Helpers for tests that start processes: waiting for them to exit, without polling."""

from __future__ import annotations

import os
import select


def wait_exit(pids: set[int], timeout: float = 60) -> set[int]:
    """Wait (on pidfds, no polling) until every pid has exited; returns those still alive."""
    fds = {}
    for pid in pids:
        try:
            fds[os.pidfd_open(pid)] = pid
        except ProcessLookupError:
            pass
    alive = set(fds)
    try:
        while alive:
            ready, _, _ = select.select(list(alive), [], [], timeout)
            if not ready:
                break
            alive -= set(ready)
    finally:
        for fd in fds:
            os.close(fd)
    return {fds[fd] for fd in alive}
