"""``rlm run`` on a terminal: a live status line, read from a pseudo-terminal as it changes.

The model is a loopback OpenAI-compatible server that holds each root answer until the
test has seen the status of the iteration asking for it (no sleeps, no timing)."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ANSWERS = [
    "```repl\nprint(len(context))\n```",
    '```repl\nanswer["content"] = "live done"\nanswer["ready"] = True\n```',
]


class GatedSSE(BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        number = self.server.count
        self.server.count += 1
        self.server.gates[number].wait(60)
        text = ANSWERS[min(number, len(ANSWERS) - 1)]
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        base = {"id": "c", "created": 0, "model": body["model"], "object": "chat.completion.chunk"}
        for piece in re.findall(r"\S+\s*|\s+", text):
            delta = {"index": 0, "delta": {"content": piece}, "finish_reason": None}
            self.wfile.write(f"data: {json.dumps({**base, 'choices': [delta]})}\n\n".encode())
        usage = {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}
        self.wfile.write(
            f"data: {json.dumps({**base, 'choices': [], 'usage': usage})}\n\n".encode()
        )
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()

    def log_message(self, *args):
        pass


@pytest.fixture
def gated_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), GatedSSE)
    server.count = 0
    server.gates = [threading.Event() for _ in range(8)]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    for gate in server.gates:
        gate.set()
    server.shutdown()
    server.server_close()


def read_until(fd: int, pattern: str, seen: list[str]) -> str:
    """Read the terminal until ``pattern`` appears in what was read since the last call."""
    buffer = ""
    while re.search(pattern, buffer) is None:
        ready, _, _ = select.select([fd], [], [], 60)
        assert ready, f"no terminal output while waiting for {pattern!r}: {buffer[-500:]!r}"
        try:
            chunk = os.read(fd, 65536).decode("utf-8", "replace")
        except OSError:  # the child closed the terminal
            chunk = ""
        assert chunk, f"the terminal closed before {pattern!r}: {buffer[-500:]!r}"
        buffer += chunk
        seen.append(chunk)
    return buffer


def test_rlm_run_shows_a_live_status_that_follows_the_run(gated_server, tmp_path):
    context = tmp_path / "ctx.txt"
    context.write_text("some context")
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RLM_", "OPENAI_"))}
    env.update(COLUMNS="200", LINES="50", TERM="xterm-256color")
    root = Path(__file__).resolve().parents[1]
    url = f"http://127.0.0.1:{gated_server.server_address[1]}/v1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlm", "run", "how long?", "-c", str(context)]
        + ["--backend", "openai", "-m", "stub", "--base-url", url],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        cwd=root,
        env=env,
        close_fds=True,
    )
    os.close(slave)
    seen: list[str] = []
    try:
        read_until(master, r"iteration 1 · cells 0 · sub-calls 0 · tokens 0 ", seen)
        gated_server.gates[0].set()
        # After the first answer: its tokens counted, the second iteration waiting.
        read_until(master, r"iteration 2 · cells 0 · sub-calls 0 · tokens 110 ", seen)
        gated_server.gates[1].set()
        read_until(master, r"live done", seen)
        while True:  # drain until the program exits
            ready, _, _ = select.select([master], [], [], 60)
            try:
                chunk = os.read(master, 65536).decode("utf-8", "replace") if ready else ""
            except OSError:
                break
            if not chunk:
                break
            seen.append(chunk)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    text = "".join(seen)
    assert re.search(r"\d+\.\ds", text)  # the elapsed time is shown
    assert text.index("iteration 1 ·") < text.index("iteration 2 ·")
