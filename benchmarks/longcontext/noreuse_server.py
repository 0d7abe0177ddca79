#!/usr/bin/env python3
"""``python -m llama_cpp.server`` with the KV cache's prefix reuse turned off.

    python3 benchmarks/longcontext/noreuse_server.py --model M.gguf --port 8000 ...

The server keeps the last prompt's evaluated tokens in its slot and evaluates only what
follows the longest prefix a new prompt shares with them; it has no option to stop
doing that. This script forgets the slot's tokens before every generation, so each
request evaluates its whole prompt, then runs the server with the same options. The
long-context runner starts it for ``--kv-reuse off``, the control arm of what reuse
saves (``kvcache.py`` reads both servers' logs). A benchmark tool, not for serving.
"""

from __future__ import annotations

import sys

import llama_cpp
from llama_cpp.server.__main__ import main

_generate = llama_cpp.Llama.generate


def _generate_from_scratch(self, tokens, *args, **kwargs):  # type: ignore[no-untyped-def]
    self.reset()  # no evaluated tokens: the prefix check finds nothing to reuse
    return _generate(self, tokens, *args, **kwargs)


if __name__ == "__main__":
    llama_cpp.Llama.generate = _generate_from_scratch  # type: ignore[method-assign]
    # run.py looks for this line (_NO_REUSE_MARK) before it resumes a folder.
    print("noreuse_server: prefix reuse is off (every prompt is evaluated whole)", flush=True)
    sys.exit(main())
