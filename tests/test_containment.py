"""Containment: model code in `subprocess` and `docker` tries to break out and cannot.

Each attack is contained (the cell fails, or the worker is killed and restarted
with a clear error; the REPL goes on; this process and its LM handler are
unharmed), or the environment refuses to start with an error that names what is
missing. CI runs this file twice on the same machine: once as it is, once with
bubblewrap hidden (``scripts/containment_without_bwrap.sh``, which bind-mounts
/dev/null over it in a private mount namespace and sets
``RLM_CONTAINMENT_PASS=no-bwrap``).

Safety of the suite itself: every attack that could write to the host runs only
after the sandbox has shown that it cannot see a marker file this test made on
the host; every target path is unique and checked to be absent afterwards; every
environment is cleaned up by its fixture, even when the test fails.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid

import pytest

import rlm
from rlm.environments import get_environment
from rlm.utils.exceptions import ConfigurationError
from tests.test_environments import block, env_kwargs, require, run_rlm

FAKE_KEY = "sk-fake-host-secret-0123456789"
PASS = os.environ.get("RLM_CONTAINMENT_PASS", "bwrap")
SYSTEM_PYTHON = "/usr/bin/python3"
VARIANTS = ["subprocess", "subprocess-bwrap", "docker"]


def variant_kwargs(name: str) -> tuple[str, dict]:
    """(environment, environment_kwargs) of one variant, with small limits."""
    if name == "docker":
        return "docker", env_kwargs("docker", memory_mb=1024, workdir_mb=256)
    kwargs = {"memory_mb": 1024, "workdir_mb": 256, "max_processes": 64}
    if name == "subprocess-bwrap":
        kwargs["sandbox"] = "bwrap"
        if os.geteuid() == 0 and os.path.exists(SYSTEM_PYTHON):
            kwargs["python"] = SYSTEM_PYTHON  # one an unprivileged uid can reach
    return "subprocess", kwargs


def bwrap_installed() -> bool:
    return shutil.which("bwrap") is not None


@pytest.fixture(params=VARIANTS)
def sandbox(request, monkeypatch, scripted_handler):
    """A started sandbox, or None when it refused to start (the refusal is checked)."""
    require(request.param)
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    handler = scripted_handler(sub_responses=lambda m: "pong")
    name, kwargs = variant_kwargs(request.param)
    kwargs.update(lm_handler_address=handler.address, context_payload="ctx")
    try:
        env = get_environment(name, kwargs)
    except ConfigurationError as exc:
        message = str(exc)
        # Refusing is allowed only where a layer is really missing, and it must say how
        # to get it and how to accept less.
        assert request.param == "subprocess-bwrap" and not bwrap_installed(), message
        assert "apt-get install bubblewrap" in message
        assert "sandbox=" in message
        yield None
        return
    if PASS == "no-bwrap" and request.param == "subprocess":
        assert env.isolation["sandbox"] == "unshare"
    try:
        yield env
    finally:
        env.cleanup()
    # The host and its handler are unharmed.
    from rlm.core.comms_utils import LMRequest, send_lm_request

    reply = send_lm_request(handler.address, LMRequest(prompt="ping"))
    assert reply.chat_completion.response == "pong"


def contained(env) -> bool:
    """Whether attacks should run (False: the environment refused to start)."""
    return env is not None


def still_works(env) -> None:
    result = env.execute_code("print(context, llm_query('ping'))")
    assert result.stdout == "ctx pong\n", (result.stdout, result.stderr, result.error)


def prove_private_filesystem(env, tmp_path) -> None:
    """Before any attack that could write to the host: the sandbox cannot see a marker
    this test made on the host. Fails the test (attempting nothing) otherwise."""
    marker = tmp_path / f"marker-{uuid.uuid4().hex}"
    marker.write_text("host")
    result = env.execute_code(f"import os\nprint(os.path.exists({str(marker)!r}))")
    assert result.stdout == "False\n", "the sandbox sees the host's files: not attempting writes"
    layers = env.isolation
    assert str(layers.get("filesystem", "")).startswith("private") or (
        layers.get("sandbox") == "docker" and layers.get("read_only_root") is True
    )


# ---------------------------------------------------------------------------
# The earlier set: keys, files, writes, network, processes, memory, time
# ---------------------------------------------------------------------------


def test_host_api_keys_and_memory_are_not_visible(sandbox):
    if not contained(sandbox):
        return
    host_pid = os.getpid()
    result = sandbox.execute_code(
        "import os\n"
        "found = [k for k, v in os.environ.items() if 'KEY' in k or 'sk-fake' in v]\n"
        f"for path in ['/proc/1/environ', '/proc/{host_pid}/environ', '/proc/{host_pid}/mem',\n"
        f"             '/proc/{host_pid}/cmdline']:\n"
        "    try:\n"
        "        found.append(open(path, 'rb').read(100000).decode('latin-1'))\n"
        "    except OSError:\n"
        "        pass\n"
        "print(found)"
    )
    assert FAKE_KEY not in result.stdout
    assert "OPENAI_API_KEY" not in result.stdout
    still_works(sandbox)


def test_files_outside_the_work_dir_cannot_be_read(sandbox, tmp_path):
    if not contained(sandbox):
        return
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret")
    root_only = tmp_path / "root-only.txt"
    root_only.write_text("root secret")
    root_only.chmod(0o600)
    paths = [str(secret), str(root_only), os.path.abspath(__file__), "/etc/shadow"]
    result = sandbox.execute_code(
        f"for p in {paths!r}:\n"
        "    try:\n"
        "        print('read', open(p).read()[:20])\n"
        "    except OSError as exc:\n"
        "        print('refused', type(exc).__name__)"
    )
    assert "secret" not in result.stdout
    assert result.stdout.count("refused") == len(paths), result.stdout
    still_works(sandbox)


def test_writes_outside_the_work_dir_do_not_reach_the_host(sandbox, tmp_path):
    if not contained(sandbox):
        return
    prove_private_filesystem(sandbox, tmp_path)
    tag = uuid.uuid4().hex
    targets = [str(tmp_path / f"planted-{tag}"), f"/usr/planted-{tag}", f"/etc/planted-{tag}"]
    package_init = os.path.abspath(rlm.__file__)

    def digest() -> str:
        with open(package_init, "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()

    before = digest()
    result = sandbox.execute_code(
        f"for p in {targets!r}:\n"
        "    try:\n"
        "        open(p, 'w').write('x')\n"
        "        print('wrote', p)\n"
        "    except OSError as exc:\n"
        "        print('refused', type(exc).__name__)\n"
        "try:\n"
        f"    open({package_init!r}, 'a').write('\\nraise SystemExit(1)\\n')\n"
        "    print('wrote the package')\n"
        "except OSError as exc:\n"
        "    print('refused', type(exc).__name__)\n"
        "open('inside.txt', 'w').write('fine')\n"
        "print(open('inside.txt').read())"
    )
    assert result.error is None, result.stderr
    for target in targets:
        assert not os.path.exists(target)
    assert digest() == before
    assert "wrote" not in result.stdout
    assert result.stdout.rstrip().endswith("fine")
    still_works(sandbox)


def test_no_network(sandbox):
    if not contained(sandbox):
        return
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


FORK_BOMB = (
    "import os, signal, time\n"
    "children = []\n"
    "try:\n"
    "    while len(children) < 100000:\n"
    "        pid = os.fork()\n"
    "        if pid == 0:\n"
    "            os.setsid()  # leave the process group: the cap must still hold\n"
    "            time.sleep(600)\n"
    "            os._exit(0)\n"
    "        children.append(pid)\n"
    "except OSError as exc:\n"
    "    print('fork refused after', len(children), type(exc).__name__)\n"
    "for pid in children:\n"
    "    os.kill(pid, signal.SIGKILL)\n"
    "    os.waitpid(pid, 0)"
)


def test_fork_bomb_is_capped(sandbox):
    if not contained(sandbox):
        return
    result = sandbox.execute_code(FORK_BOMB, timeout=60)
    assert "fork refused after" in result.stdout, (result.stdout, result.stderr, result.error)
    refused_after = int(result.stdout.split("after")[1].split()[0])
    assert refused_after <= 64
    still_works(sandbox)


def test_huge_allocation_is_refused(sandbox):
    if not contained(sandbox):
        return
    result = sandbox.execute_code("big = bytearray(10 * 1024**3)\nprint(len(big))", timeout=60)
    assert result.error is not None
    assert result.error.startswith(("MemoryError", "WorkerDied"))
    still_works(sandbox)


def test_memory_is_bounded_for_the_whole_process_tree(sandbox):
    """Three children of 700 MB each under memory_mb=1024: they cannot all live."""
    if not contained(sandbox):
        return
    result = sandbox.execute_code(
        "import subprocess, sys\n"
        'code = \'b = bytearray(700 * 1024**2); b[::4096] = b"x" * len(b[::4096]); '
        "import time; time.sleep(20)'\n"
        "procs = [subprocess.Popen([sys.executable, '-c', code]) for _ in range(3)]\n"
        "print(sorted(p.wait() for p in procs))",
        timeout=120,
    )
    if result.error is None:
        codes = eval(result.stdout)  # exit codes of the three children
        assert any(code != 0 for code in codes), result.stdout
    else:
        assert result.error.startswith(("WorkerDied", "MemoryError")), result.error
    still_works(sandbox)


def test_work_dir_and_tmp_are_size_capped(sandbox):
    if not contained(sandbox):
        return
    result = sandbox.execute_code(
        "import os\n"
        "for path in ['filler', '/tmp/filler']:\n"
        "    written = 0\n"
        "    try:\n"
        "        with open(path, 'wb') as fh:\n"
        "            while written < 2048:\n"
        "                fh.write(b'x' * 1024 * 1024)\n"
        "                written += 1\n"
        "    except OSError as exc:\n"
        "        print('stopped', path, written, type(exc).__name__)\n"
        "    finally:\n"
        "        os.remove(path)\n",
        timeout=120,
    )
    assert result.stdout.count("stopped") == 2, (result.stdout, result.stderr, result.error)
    for line in result.stdout.splitlines():
        assert int(line.split()[2]) <= 256, line
    still_works(sandbox)


def test_spinning_forever_is_stopped(sandbox):
    if not contained(sandbox):
        return
    result = sandbox.execute_code("while True:\n    pass", timeout=0.5)
    assert result.error.startswith("TimeoutError")
    result = sandbox.execute_code("sum(range(10**14))", timeout=0.5)
    assert result.error.startswith("TimeoutError")
    still_works(sandbox)


def test_a_cell_that_catches_the_timeout_is_killed_with_its_worker(sandbox):
    if not contained(sandbox):
        return
    sandbox.execute_code("lost = 1")
    result = sandbox.execute_code(
        "while True:\n    try:\n        while True:\n            pass\n    except BaseException:\n"
        "        pass",
        timeout=0.5,
    )
    assert result.error.startswith("TimeoutError"), result.error
    assert "restarted" in result.stderr and "lost" in result.stderr
    result = sandbox.execute_code(
        "import threading\nprint(sorted(t.name for t in threading.enumerate() if t.name == 'rlm-cell'))"
        "\nprint('lost' in globals())"
    )
    assert result.stdout == "['rlm-cell']\nFalse\n", result.stdout
    still_works(sandbox)


def test_os_exit_restarts_the_worker(sandbox):
    if not contained(sandbox):
        return
    result = sandbox.execute_code("import os\nos._exit(0)")
    assert result.error.startswith("WorkerDied")
    still_works(sandbox)


def test_killing_the_parent_does_not_reach_the_host(sandbox):
    if not contained(sandbox):
        return
    host_pid = os.getpid()
    result = sandbox.execute_code(
        "import os, signal\n"
        f"for pid in [os.getppid(), {host_pid}, 1, -1]:\n"
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


# ---------------------------------------------------------------------------
# Issue 10: namespaces, io_uring, ptrace, forged frames
# ---------------------------------------------------------------------------

SYSCALL_ATTACKS = (
    "import ctypes, errno, os\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "NR = {'x86_64': dict(clone=56, unshare=272, io_uring_setup=425, ptrace=101, mount=165,"
    " setns=308),\n"
    "      'aarch64': dict(clone=220, unshare=97, io_uring_setup=425, ptrace=117, mount=40,"
    " setns=268)}[os.uname().machine]\n"
    "def attempt(label, *args):\n"
    "    ret = libc.syscall(*args)\n"
    "    if ret == 0:\n"
    "        os._exit(0)  # a child of a successful clone: leave at once\n"
    "    print(label, 'ok' if ret > 0 else 'refused', errno.errorcode.get(ctypes.get_errno()))\n"
    "SIGCHLD = 17\n"
    "for flag in (0x10000000, 0x20000000, 0x40000000, 0x00020000):\n"
    "    attempt('clone-%x' % flag, NR['clone'], flag | SIGCHLD, 0, 0, 0, 0)\n"
    "attempt('unshare', NR['unshare'], 0x10000000)\n"
    "params = ctypes.create_string_buffer(120)\n"
    "attempt('io_uring', NR['io_uring_setup'], 8, params)\n"
    "attempt('ptrace', NR['ptrace'], 16, 1, 0, 0)\n"  # PTRACE_ATTACH to pid 1
    "attempt('mount', NR['mount'], b'none', b'/tmp', b'tmpfs', 0, 0)\n"
)


def test_namespaces_io_uring_ptrace_and_mounts_are_refused(sandbox):
    if not contained(sandbox):
        return
    result = sandbox.execute_code(SYSCALL_ATTACKS, timeout=30)
    assert result.error is None, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 8, result.stdout
    layers = sandbox.isolation
    for line in lines:
        if line.startswith("io_uring") and layers["sandbox"] == "docker":
            # Docker 20.10's default profile allows io_uring; with --network none the
            # sockets it makes reach nothing (our own profile filters socket families).
            assert layers["network"] == "none", line
            continue
        assert " refused " in line, result.stdout
    still_works(sandbox)


FORGE = (
    "import gc, json, struct\n"
    "chan = [o for o in gc.get_objects() if type(o).__name__ == 'Channel'\n"
    "        and hasattr(o, '_out')][0]\n"
    "def raw(data):\n"
    "    with chan._write_lock:\n"
    "        chan._out.write(data)\n"
)


def test_forged_result_frames_get_a_clear_error(sandbox):
    if not contained(sandbox):
        return
    for bad in ("{'final_answer': {'a': 1}}", "{'stdout': 5}", "{'execution_time': 'x'}"):
        result = sandbox.execute_code(
            FORGE + "for i in range(400, 0, -1):  # descending: no frame lands on a later request\n"
            f"    m = dict(type='result', id=i, **{bad})\n"
            "    p = json.dumps(m).encode()\n"
            "    raw(struct.pack('>I', len(p)) + p)\n"
            "import time\ntime.sleep(5)"
        )
        assert result.error.startswith("WorkerProtocolError"), result.error
        assert result.final_answer is None
    result = sandbox.execute_code(FORGE + "p = b'[1, 2]'\nraw(struct.pack('>I', len(p)) + p)")
    assert result.error.startswith("WorkerDied"), result.error
    assert "a frame holds a JSON list" in result.error
    still_works(sandbox)


def test_an_oversized_frame_is_refused_before_allocation(sandbox):
    if not contained(sandbox):
        return
    result = sandbox.execute_code(
        FORGE + "raw(struct.pack('>I', 0xFFFFFFF0))\nimport time\ntime.sleep(30)", timeout=60
    )
    assert result.error.startswith("WorkerDied"), result.error
    assert "exceeds the limit" in result.error
    still_works(sandbox)


@pytest.mark.parametrize("variant", ["subprocess", "docker"])
def test_forged_frames_never_crash_completion(variant, tmp_path):
    require(variant)
    name, kwargs = variant_kwargs(variant)
    forge = (
        FORGE + "for i in range(400, 0, -1):  # descending: no frame lands on a later request\n"
        "    p = json.dumps(dict(type='result', id=i, final_answer={'x': 1})).encode()\n"
        "    raw(struct.pack('>I', len(p)) + p)\n"
        "import time\ntime.sleep(5)"
    )
    model = run_rlm(
        variant,
        [block(forge), block("raw(b'\\x00\\x00\\x00\\x02[]')"), "FINAL(done)"],
        environment_kwargs=kwargs,
        max_iterations=5,
    )
    result = model.completion("go")
    assert result.response == "done"
    assert isinstance(result.response, str)
