"""DockerREPL through the Docker SDK: engines, images, errors and leftovers, on real engines.

Against the running Docker engine (and, for ``DOCKER_HOST=tcp://...``, a second dockerd
that the test starts on loopback with its own data-root, exec-root and pidfile under a
temporary folder, and stops at the end). No SDK call is mocked. Every container a test
makes is removed by its fixture even when the test fails; processes the tests start are
killed by their own pid. Skips (or fails, with ``RLM_REQUIRE_DOCKER=1``) without an
engine or image.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from rlm.environments.docker_repl import (
    LABEL_OWNER,
    DockerEngineError,
    DockerImageError,
    DockerREPL,
    docker_client,
    remove_leftover_containers,
)
from rlm.utils.exceptions import ConfigurationError
from tests.test_environments import DOCKER_IMAGE, require

ROOT = Path(__file__).resolve().parent.parent


def gone(container_id: str, client=None) -> bool:
    client = client or docker_client()
    return not any(
        c["Id"] == container_id
        for c in client.api.containers(all=True, filters={"id": container_id})
    )


def force_remove(container_id: str | None) -> None:
    if container_id:
        try:
            docker_client().api.remove_container(container_id, force=True)
        except Exception:
            pass


# -- the docker command is not needed ----------------------------------------------------


def test_runs_with_no_docker_command_on_path(docker, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no docker, nothing else
    assert shutil.which("docker") is None
    env = docker()
    assert env.execute_code("print(6 * 7)").stdout == "42\n"
    container_id = env.container_id
    env.cleanup()
    assert gone(container_id)


def test_without_the_sdk_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "docker", None)  # `import docker` raises ImportError
    with pytest.raises(ConfigurationError, match=r'pip install "rlm\[docker\]"'):
        DockerREPL(image="any")


# -- engines ---------------------------------------------------------------------------


def test_an_engine_that_is_not_running_gives_one_line(tmp_path):
    with pytest.raises(DockerEngineError) as info:
        DockerREPL(image="any", base_url=f"unix://{tmp_path}/no-engine.sock")
    message = str(info.value)
    assert "no Docker engine is running there" in message and "\n" not in message
    assert isinstance(info.value, RuntimeError) and isinstance(info.value, ValueError)


def test_docker_host_naming_a_closed_port_gives_one_line(monkeypatch):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{port}")
    with pytest.raises(DockerEngineError, match=f"tcp://127.0.0.1:{port}.*no Docker engine"):
        DockerREPL(image="any")


def test_permission_denied_on_the_socket_gives_one_line(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root (to drop, for a child, the capabilities that ignore file modes)")
    path = tmp_path / "engine.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(1)
    os.chmod(path, 0)
    child = (
        "from rlm.environments.docker_repl import DockerREPL, DockerEngineError\n"
        "try:\n"
        f"    DockerREPL(image='any', base_url='unix://{path}')\n"
        "except DockerEngineError as exc:\n"
        "    print('raised:', exc)\n"
    )
    try:
        # The child runs as root without the capabilities that ignore file modes (dropped
        # from its bounding set before exec), so connect() gets EACCES as a user would.
        proc = subprocess.run(
            [sys.executable, "-c", child],
            preexec_fn=_drop_dac_capabilities,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        listener.close()
    assert proc.stdout.startswith("raised: "), proc.stdout + proc.stderr
    assert "permission denied on the Docker engine socket" in proc.stdout
    assert proc.stdout.count("\n") == 1


def _drop_dac_capabilities() -> None:
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        libc.prctl(24, cap, 0, 0, 0)  # PR_CAPBSET_DROP: gone from the exec'd program


# -- images ------------------------------------------------------------------------------


def test_a_missing_image_with_pull_off_names_the_image_and_the_script(docker):
    with pytest.raises(DockerImageError) as info:
        docker(image="rlm-no-such-image:never", pull=False)
    message = str(info.value)
    assert "'rlm-no-such-image:never'" in message and "scripts/docker_image.sh" in message
    assert "\n" not in message


def test_a_missing_image_that_cannot_be_pulled_fails_fast_with_the_reason(docker, capfd):
    # Port 1 on loopback: no registry answers, so the engine's pull fails at once.
    with pytest.raises(DockerImageError, match="pulling it failed") as info:
        docker(image="127.0.0.1:1/rlm-no-such-image:never")
    assert "scripts/docker_image.sh" in str(info.value)
    assert "pulling 127.0.0.1:1/rlm-no-such-image:never" in capfd.readouterr().err


# -- the worker --------------------------------------------------------------------------


def test_an_oom_killed_worker_is_reported_as_out_of_memory(docker):
    env = docker(memory_mb=128)
    before = env.container_id
    result = env.execute_code("blob = b'x' * (1 << 30)\nprint('survived')", timeout=120)
    assert "survived" not in result.stdout
    assert result.error and result.error.startswith("WorkerDied")
    assert "out of memory" in result.error and "OOM-killed" in result.error, result.error
    assert "128 MB" in result.error
    assert "out of memory" in result.stderr  # what the model reads
    # A fresh worker (and container) goes on; the killed one is removed.
    assert env.execute_code("print('again')").stdout == "again\n"
    assert env.container_id != before and gone(before)


def test_seccomp_refuses_io_uring_and_inet_sockets_in_the_container(docker):
    env = docker()
    code = (
        "import ctypes, errno, socket\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "params = ctypes.create_string_buffer(120)\n"
        "print(libc.syscall(425, 8, params), errno.errorcode[ctypes.get_errno()])\n"
        "try:\n"
        "    socket.socket(socket.AF_INET)\n"
        "except OSError as exc:\n"
        "    print(exc.errno == errno.EPERM)\n"
        "a, b = socket.socketpair()\n"
        "print('unix ok')\n"
    )
    if os.uname().machine != "x86_64":
        pytest.skip("io_uring_setup's number is for x86_64")
    result = env.execute_code(code)
    assert result.stdout.splitlines() == ["-1 EPERM", "True", "unix ok"], result.stderr
    assert env.isolation["seccomp"].startswith("rlm profile")


# -- leftovers of a killed host process -------------------------------------------------

_HOLDER = """
import sys, time
from rlm.environments.docker_repl import DockerREPL
env = DockerREPL(image=sys.argv[1])
env.execute_code("x = 1")
print(env.container_id, flush=True)
time.sleep(600)  # killed by the test long before this
"""

_NEXT_RUN = """
import sys
from rlm.environments.docker_repl import DockerREPL
env = DockerREPL(image=sys.argv[1])
print(env.execute_code("print('next run')").stdout, end="")
env.cleanup()
"""


def test_a_container_left_by_a_killed_process_is_removed_by_the_next_run(docker):
    require("docker")
    live = docker()  # this process is alive: its container must survive every sweep
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, DOCKER_IMAGE],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    container_id = None
    try:
        container_id = holder.stdout.readline().strip()
        assert len(container_id) == 64
        labels = docker_client().api.inspect_container(container_id)["Config"]["Labels"]
        assert labels[LABEL_OWNER].split(":")[1] == str(holder.pid)
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=60)
        assert not gone(container_id)  # nothing removed it when its owner died
        nxt = subprocess.run(
            [sys.executable, "-c", _NEXT_RUN, DOCKER_IMAGE],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert nxt.stdout == "next run\n", nxt.stderr
        assert gone(container_id)
        assert not gone(live.container_id)
        assert live.execute_code("print('alive')").stdout == "alive\n"
        assert live.container_id not in remove_leftover_containers(docker_client(), force=True)
    finally:
        if holder.poll() is None:
            os.kill(holder.pid, signal.SIGKILL)
            holder.wait(timeout=60)
        force_remove(container_id)


# -- an engine reached only through DOCKER_HOST=tcp://127.0.0.1:PORT ---------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def second_engine():
    """A second dockerd listening only on tcp://127.0.0.1:PORT, with its own data-root,
    exec-root and pidfile under a temporary folder; stopped and removed at the end."""
    require("docker")
    dockerd = shutil.which("dockerd") or shutil.which("dockerd", path="/usr/sbin:/usr/bin")
    if dockerd is None or os.geteuid() != 0:
        if os.environ.get("RLM_REQUIRE_DOCKER") == "1":
            pytest.fail("RLM_REQUIRE_DOCKER=1 but dockerd cannot be started here (needs root)")
        pytest.skip("starting a second dockerd needs the dockerd binary and root")
    import docker as sdk

    root = Path(tempfile.mkdtemp(prefix="rlm-dd-", dir="/tmp"))  # short: socket paths
    port = _free_port()
    url = f"tcp://127.0.0.1:{port}"
    with open(root / "dockerd.log", "wb") as log:  # the child keeps its own copy
        proc = subprocess.Popen(
            [
                dockerd,
                "--host",
                url,
                "--data-root",
                str(root / "data"),
                "--exec-root",
                str(root / "exec"),
                "--pidfile",
                str(root / "dockerd.pid"),
                "--bridge",
                "none",
                "--iptables=false",
                "--ip6tables=false",
                "--ip-masq=false",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    client = sdk.DockerClient(base_url=url, version="1.41", timeout=30)  # no request yet
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                client.api.ping()
                break
            except Exception:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(
                        "the second dockerd did not start: "
                        + (root / "dockerd.log").read_text(errors="replace")[-2000:]
                    )
                time.sleep(0.2)  # polling a starting daemon; no event to wait on
        # Its data-root is empty: give it the test image (offline, from the main engine).
        client.api.load_image(docker_client().api.get_image(DOCKER_IMAGE))
        yield url, client
    finally:
        try:
            for info in client.api.containers(all=True):
                client.api.remove_container(info["Id"], force=True)
        except Exception:
            pass
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
        mounted = [m for m in Path("/proc/mounts").read_text().splitlines() if str(root) in m]
        assert not mounted, mounted
        shutil.rmtree(root, ignore_errors=True)


def test_an_engine_reached_only_through_docker_host_tcp(second_engine, monkeypatch, tmp_path):
    url, client = second_engine
    main = docker_client()  # the usual engine, on its unix socket
    monkeypatch.setenv("DOCKER_HOST", url)
    monkeypatch.setenv("PATH", str(tmp_path))  # and no docker command either
    env = DockerREPL(image=DOCKER_IMAGE)
    try:
        assert env.isolation["engine"] == url.replace("tcp://", "http://")
        assert env.execute_code("print(sum(range(10)))").stdout == "45\n"
        container_id = env.container_id
        assert [c["Id"] for c in client.api.containers(all=True)] == [container_id]
        assert gone(container_id, main)  # it lives on the second engine only
        assert client.api.inspect_container(container_id)["HostConfig"]["NetworkMode"] == "none"
    finally:
        env.cleanup()
    assert client.api.containers(all=True) == []
    assert json.dumps(env.isolation)  # still describable after cleanup

    # The same engine named by the current Docker context instead (no DOCKER_HOST).
    import docker as sdk

    monkeypatch.delenv("DOCKER_HOST")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "config"))
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.json").write_text(json.dumps({"currentContext": "rlm-2nd"}))
    # Written as `docker context create rlm-2nd --docker host=URL` writes it (the SDK's own
    # create_context turns tcp:// into https://).
    import hashlib

    meta = tmp_path / "config" / "contexts" / "meta" / hashlib.sha256(b"rlm-2nd").hexdigest()
    meta.mkdir(parents=True)
    endpoint = {"Host": url, "SkipTLSVerify": False}
    (meta / "meta.json").write_text(
        json.dumps({"Name": "rlm-2nd", "Metadata": {}, "Endpoints": {"docker": endpoint}})
    )
    assert sdk.ContextAPI.get_context("rlm-2nd").Host == url
    env = DockerREPL(image=DOCKER_IMAGE)
    try:
        assert env.isolation["engine"] == url.replace("tcp://", "http://")
        assert env.execute_code("print('via context')").stdout == "via context\n"
        assert [c["Id"] for c in client.api.containers(all=True)] == [env.container_id]
    finally:
        env.cleanup()
    assert client.api.containers(all=True) == []


# -- a missing image pulled from a registry (a loopback stub of the registry API) --------


class _Registry:
    """Serves one image (the test image's config and layer, exported from the engine) over
    the registry HTTP API v2 on 127.0.0.1, which the engine trusts without TLS."""

    def __init__(self, image: str):
        import hashlib
        import io
        import tarfile
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        data = b"".join(docker_client().api.get_image(image))
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            (entry,) = json.load(tar.extractfile("manifest.json"))
            config = tar.extractfile(entry["Config"]).read()
            layers = [tar.extractfile(name).read() for name in entry["Layers"]]

        def digest(blob: bytes) -> str:
            return "sha256:" + hashlib.sha256(blob).hexdigest()

        blobs = {digest(b): b for b in [config, *layers]}
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {
                    "mediaType": "application/vnd.docker.container.image.v1+json",
                    "size": len(config),
                    "digest": digest(config),
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                        "size": len(layer),
                        "digest": digest(layer),
                    }
                    for layer in layers
                ],
            }
        ).encode()
        self.requests: list[str] = []
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, body: bool) -> None:
                registry.requests.append(f"{self.command} {self.path}")
                if self.path == "/v2/":
                    payload, kind = b"{}", "application/json"
                elif "/manifests/" in self.path:
                    payload = manifest
                    kind = "application/vnd.docker.distribution.manifest.v2+json"
                elif "/blobs/" in self.path and self.path.rsplit("/", 1)[1] in blobs:
                    payload, kind = blobs[self.path.rsplit("/", 1)[1]], "application/octet-stream"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("Docker-Content-Digest", digest(payload))
                self.send_header("Docker-Distribution-API-Version", "registry/2.0")
                self.end_headers()
                if body:
                    self.wfile.write(payload)

            def do_GET(self):
                self._answer(True)

            def do_HEAD(self):
                self._answer(False)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_port
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_missing_image_is_pulled_with_progress(docker, capfd):
    registry = _Registry(DOCKER_IMAGE)
    image = f"127.0.0.1:{registry.port}/rlm-pull-test:one"
    try:
        env = docker(image=image)
        assert env.execute_code("print('pulled')").stdout == "pulled\n"
        err = capfd.readouterr().err
        assert f"rlm docker: pulling {image}" in err and f"rlm docker: pulled {image}" in err
        assert any("/manifests/one" in r for r in registry.requests)
    finally:
        registry.close()
        try:
            docker_client().api.remove_image(image)  # the tag only: the image stays
        except Exception:
            pass


# -- removal on the failing paths ------------------------------------------------------------


def ours() -> list[str]:
    """Containers this process started that still exist."""
    from rlm.environments.docker_repl import owner_label

    found = docker_client().api.containers(
        all=True, filters={"label": f"{LABEL_OWNER}={owner_label()}"}
    )
    return [c["Id"] for c in found]


def test_a_failing_setup_code_removes_its_container(docker):
    assert ours() == []
    with pytest.raises(ConfigurationError, match="setup_code failed"):
        docker(setup_code="raise RuntimeError('no')")
    assert ours() == []


class _CtrlC:
    def __repr__(self):  # the context is sent as data; other objects become their repr
        raise KeyboardInterrupt


def test_ctrl_c_during_construction_removes_its_container(docker):
    assert ours() == []
    with pytest.raises(KeyboardInterrupt):
        docker(context_payload=_CtrlC())
    assert ours() == []
