"""Containment: model code in `subprocess` and `docker` tries to break out and cannot.

Each attempt is contained: the cell fails or the worker is restarted with a clear
error, the REPL goes on, and this (host) process and its LM handler are unharmed.
"""

from __future__ import annotations

import os

import pytest

from rlm.environments import get_environment
from tests.test_environments import env_kwargs, require

FAKE_KEY = "sk-fake-host-secret-0123456789"


@pytest.fixture(params=["subprocess", "docker"])
def sandbox(request, monkeypatch, scripted_handler):
    require(request.param)
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    handler = scripted_handler(sub_responses=lambda m: "pong")
    env = get_environment(
        request.param,
        env_kwargs(request.param, lm_handler_address=handler.address, context_payload="ctx"),
    )
    yield env
    env.cleanup()
    # The host and its handler are unharmed.
    from rlm.core.comms_utils import LMRequest, send_lm_request

    assert (
        send_lm_request(handler.address, LMRequest(prompt="ping")).chat_completion.response
        == "pong"
    )


def still_works(env) -> None:
    result = env.execute_code("print(context, llm_query('ping'))")
    assert result.stdout == "ctx pong\n", result.stderr


def test_host_api_keys_are_not_visible(sandbox):
    result = sandbox.execute_code(
        "import os\n"
        "found = [k for k, v in os.environ.items() if 'KEY' in k or 'sk-fake' in v]\n"
        "try:\n"
        "    found.append(open('/proc/1/environ').read())\n"
        "except OSError:\n"
        "    pass\n"
        "print(found)"
    )
    assert FAKE_KEY not in result.stdout
    assert "OPENAI_API_KEY" not in result.stdout
    still_works(sandbox)


def test_files_outside_the_work_dir_cannot_be_read(sandbox, tmp_path):
    if sandbox.isolation.get("filesystem", "").startswith("host"):
        pytest.skip("no private filesystem view here (bubblewrap missing)")
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret")
    repo_file = os.path.abspath(__file__)
    result = sandbox.execute_code(
        f"for p in [{str(secret)!r}, {repo_file!r}]:\n"
        "    try:\n"
        "        print(open(p).read()[:20])\n"
        "    except OSError as exc:\n"
        "        print('refused', type(exc).__name__)"
    )
    assert "host secret" not in result.stdout
    assert result.stdout.count("refused") == 2
    still_works(sandbox)


def test_writes_outside_the_work_dir_do_not_reach_the_host(sandbox, tmp_path):
    target = tmp_path / "planted.txt"
    result = sandbox.execute_code(
        f"for p in [{str(target)!r}, '/usr/planted.txt', '/etc/planted.txt']:\n"
        "    try:\n"
        "        open(p, 'w').write('x')\n"
        "        print('wrote', p)\n"
        "    except OSError as exc:\n"
        "        print('refused', type(exc).__name__)\n"
        "open('inside.txt', 'w').write('fine')\n"
        "print(open('inside.txt').read())"
    )
    assert result.error is None, result.stderr
    assert not target.exists()
    assert not os.path.exists("/usr/planted.txt")
    assert not os.path.exists("/etc/planted.txt")
    assert result.stdout.rstrip().endswith("fine")
    still_works(sandbox)


def test_no_network(sandbox):
    host, port = sandbox.lm_handler_address
    result = sandbox.execute_code(
        "import socket\n"
        f"for addr in [({host!r}, {port}), ('1.1.1.1', 53)]:\n"
        "    try:\n"
        "        socket.create_connection(addr, timeout=2).close()\n"
        "        print('connected', addr)\n"
        "    except OSError as exc:\n"
        "        print('refused', type(exc).__name__)"
    )
    assert "connected" not in result.stdout
    assert result.stdout.count("refused") == 2
    still_works(sandbox)


def test_fork_bomb_is_capped(sandbox):
    layers = sandbox.isolation
    capped = layers.get("sandbox") == "docker" or layers.get("cgroup_pids") or os.getuid() != 0
    if not capped:
        pytest.skip("no process cap here (running as root without a pids cgroup)")
    result = sandbox.execute_code(
        "import os, signal, time\n"
        "children = []\n"
        "try:\n"
        "    while len(children) < 100000:\n"
        "        pid = os.fork()\n"
        "        if pid == 0:\n"
        "            time.sleep(600)\n"
        "            os._exit(0)\n"
        "        children.append(pid)\n"
        "except OSError as exc:\n"
        "    print('fork refused after', len(children), type(exc).__name__)\n"
        "for pid in children:\n"
        "    os.kill(pid, signal.SIGKILL)\n"
        "    os.waitpid(pid, 0)",
        timeout=60,
    )
    assert "fork refused after" in result.stdout, (result.stdout, result.stderr, result.error)
    still_works(sandbox)


def test_huge_allocation_is_refused(sandbox):
    result = sandbox.execute_code("big = bytearray(10 * 1024**3)\nprint(len(big))", timeout=60)
    assert result.error is not None
    assert result.error.startswith(("MemoryError", "WorkerDied"))
    still_works(sandbox)


def test_spinning_forever_is_stopped(sandbox):
    result = sandbox.execute_code("while True:\n    pass", timeout=0.5)
    assert result.error.startswith("TimeoutError")
    result = sandbox.execute_code("sum(range(10**14))", timeout=0.5)
    assert result.error.startswith("TimeoutError")
    still_works(sandbox)


def test_os_exit_restarts_the_worker(sandbox):
    result = sandbox.execute_code("import os\nos._exit(0)")
    assert result.error.startswith("WorkerDied")
    still_works(sandbox)


def test_killing_the_parent_does_not_reach_the_host(sandbox):
    host_pid = os.getpid()
    result = sandbox.execute_code(
        "import os, signal\n"
        f"for pid in [os.getppid(), {host_pid}, 1]:\n"
        "    try:\n"
        "        os.kill(pid, signal.SIGKILL)\n"
        "    except OSError as exc:\n"
        "        print('refused', pid, type(exc).__name__)\n"
        "print('alive')",
        timeout=10,
    )
    # Either the cell went on or the sandbox died and was restarted; this process lives.
    assert os.getpid() == host_pid
    assert result.error is None or result.error.startswith("WorkerDied"), result.stderr
    still_works(sandbox)
