"""Sandbox: run the model's code in an isolated process instead of your interpreter.

    python examples/sandbox.py

``environment="subprocess"`` runs every cell in a separate worker process (in a
bubblewrap sandbox with a seccomp filter where those are available; it refuses to
start rather than run unconfined if they are asked for and missing). The model's code
cannot see your variables, and ``sys.exit()`` or a crash in it ends only the worker.
Offline on the scripted model. ``docker``, ``modal``, ``e2b``, ``daytona`` and ``prime``
use the same worker (see docs/api.md#environments).
"""

from __future__ import annotations

import os

from rlm import RLM

SECRET_IN_THE_HOST = "only the host process has this"

SCRIPT = [
    "```repl\n"
    "import os\n"
    "print('worker pid', os.getpid())\n"
    "print('sees the host variable:', 'SECRET_IN_THE_HOST' in globals())\n"
    "```",
    "```repl\n"
    "answer['content'] = f'{len(context.split())} words, counted in pid {os.getpid()}'\n"
    "answer['ready'] = True\n"
    "```",
]


def main() -> None:
    rlm = RLM(
        backend="scripted",
        backend_kwargs={"responses": SCRIPT},
        environment="subprocess",
        environment_kwargs={"cell_timeout": 30, "memory_mb": 512},
    )
    result = rlm.completion("the quick brown fox jumps over the lazy dog")
    print(result.response)
    print("host pid", os.getpid())


if __name__ == "__main__":
    main()
