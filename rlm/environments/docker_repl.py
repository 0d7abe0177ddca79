"""DockerREPL: the worker in a locked-down container.

The container runs ``python3 -c BOOTSTRAP`` from any image that has
``python3`` (default ``python:3.11-slim``; nothing is installed at start):
the worker's two files arrive as the first frame over ``docker run -i``
stdin, and the channel is that stdin/stdout, so no port is opened for it.

Started with ``--network none``, a read-only root, a tmpfs working directory,
memory, CPU and process limits, every capability dropped,
``no-new-privileges`` and an unprivileged user (65534, "nobody").
The ``docker`` command runs with a scrubbed environment (only PATH, HOME and
``DOCKER_*`` settings), and nothing from the host's environment is passed
into the container.

Names kept from rlms' ``DockerREPL``: ``image``, ``container_id`` (the real
container id, read from ``docker run --cidfile``), ``temp_dir`` (a host-side
folder for that file, removed by ``cleanup()``; nothing is mounted into the
container), ``subcall_fn``, ``proxy_server`` (the host-side relay that serves
the container's sub-calls; it opens no port, so ``proxy_port`` is None) and
code-string custom tools (a string that is the source of a ``def``, ``class``
or ``lambda`` binding the tool's name is defined inside the container, by the
shared engine: ``repl_core.code_tool_source``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from typing import Any

from rlm.environments.isolated import (
    BOOTSTRAP,
    IsolatedREPL,
    ProcessChannel,
    ProcessTransport,
    WorkerError,
)
from rlm.utils.exceptions import ConfigurationError

DEFAULT_IMAGE = "python:3.11-slim"
#: Set to use another image when ``environment_kwargs`` names none (tests and CI use a
#: locally built one: scripts/docker_image.sh).
IMAGE_ENV_VAR = "RLM_DOCKER_IMAGE"


def docker_env() -> dict[str, str]:
    """What the ``docker`` command needs from our environment, and nothing else."""
    env = {k: v for k, v in os.environ.items() if k.startswith("DOCKER_")}
    env["PATH"] = os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")
    env["HOME"] = os.environ.get("HOME", "/tmp")
    return env


_engines_seen: set[str] = set()


def docker_available(binary: str = "docker", timeout: float = 10.0) -> str | None:
    """None when an engine answers, else why not (for skip messages and errors)."""
    if binary in _engines_seen:
        return None
    if shutil.which(binary) is None:
        return f"no {binary!r} command on PATH"
    try:
        proc = subprocess.run(
            [binary, "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            timeout=timeout,
            env=docker_env(),
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"docker did not answer: {exc}"
    if proc.returncode != 0:
        return "no Docker engine reachable: " + proc.stderr.decode(errors="replace").strip()[:300]
    _engines_seen.add(binary)
    return None


class DockerTransport(ProcessTransport):
    """Starts the worker in a container; the channel is ``docker run -i`` stdin/stdout."""

    name = "docker"
    exit_wait = 5.0  # `docker run` exits after the container is torn down

    def __init__(
        self,
        image: str,
        docker: str = "docker",
        memory_mb: int | None = 2048,
        cpus: float | None = 1.0,
        pids_limit: int | None = 64,
        workdir_mb: int = 256,
        user: str = "65534:65534",
        network: str = "none",
        run_args: list[str] | None = None,
        cid_dir: str | None = None,
    ):
        self.image = image
        self.docker = docker
        self.limits = {
            "memory_mb": memory_mb,
            "cpus": cpus,
            "pids_limit": pids_limit,
            "workdir_mb": workdir_mb,
        }
        self.user = user
        self.network = network
        self.run_args = list(run_args or [])
        self.cid_dir = cid_dir
        self.container: str | None = None  # the name we gave it
        self._cidfile: str | None = None
        self._container_id: str | None = None
        super().__init__()

    def argv(self, name: str) -> list[str]:
        cmd = [
            self.docker,
            "run",
            "-i",
            "--rm",
            "--name",
            name,
            "--network",
            self.network,
            "--read-only",
            "--tmpfs",
            f"/work:rw,exec,size={self.limits['workdir_mb']}m,mode=1777",
            "--tmpfs",
            "/tmp:rw,size=64m,mode=1777",
            # No --workdir: with it, docker 20.10 resets the tmpfs mode to 755 (root only);
            # the worker moves to $HOME itself.
            "--env",
            "HOME=/work",
            "--env",
            "LANG=C.UTF-8",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "--user",
            self.user,
            "--ulimit",
            "nofile=256:256",
            "--ulimit",
            "core=0:0",
            "--log-driver",
            "none",
        ]
        if self.limits["memory_mb"]:
            mem = f"{self.limits['memory_mb']}m"
            cmd += ["--memory", mem, "--memory-swap", mem]
        if self.limits["cpus"]:
            cmd += ["--cpus", str(self.limits["cpus"])]
        if self.limits["pids_limit"]:
            cmd += ["--pids-limit", str(self.limits["pids_limit"])]
        if self._cidfile:
            cmd += ["--cidfile", self._cidfile]
        cmd += self.run_args
        return [*cmd, self.image, "python3", "-I", "-S", "-B", "-c", BOOTSTRAP]

    @property
    def container_id(self) -> str | None:
        """The running container's full id (docker writes it to the cidfile at creation)."""
        if self._container_id is None and self._cidfile and self.container:
            try:
                with open(self._cidfile, encoding="ascii") as f:
                    self._container_id = f.read().strip() or None
            except OSError:
                pass
        return self._container_id

    @property
    def isolation(self) -> dict[str, Any]:
        return {
            "sandbox": "docker",
            "image": self.image,
            "network": self.network,
            "read_only_root": True,
            "workdir": "/work (tmpfs)",
            "uid": self.user,
            "capabilities": "none",
            "no_new_privileges": True,
            "scrubbed_env": True,
            "limits": {k: v for k, v in self.limits.items() if v},
        }

    def start(self) -> ProcessChannel:
        self.stop()
        self.container = f"rlm-{uuid.uuid4().hex[:12]}"
        if self.cid_dir is not None and os.path.isdir(self.cid_dir):
            self._cidfile = os.path.join(self.cid_dir, f"{self.container}.cid")
        self.proc = subprocess.Popen(
            self.argv(self.container),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=docker_env(),
            start_new_session=True,
            bufsize=0,
        )
        self.channel = ProcessChannel(self.proc)
        return self.channel

    def stop(self) -> None:
        name, self.container = self.container, None
        proc, self.proc = self.proc, None
        cidfile, self._cidfile, self._container_id = self._cidfile, None, None
        if name is not None:
            self._remove(name)
        if proc is not None:
            try:
                proc.kill()
                proc.wait(timeout=10)
            except (OSError, subprocess.SubprocessError):
                pass
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if cidfile is not None:
            try:
                os.unlink(cidfile)
            except OSError:
                pass

    def _remove(self, name: str, deadline_s: float = 15.0) -> None:
        """Remove the container and return once it is gone (even when the docker client
        is stuck or gone). When the worker has just exited, ``--rm`` may already be
        removing it (``docker rm`` then answers "already in progress" at once), so wait
        for that removal to finish: a caller that sees cleanup() return must not find
        the container listed."""
        end = time.monotonic() + deadline_s
        try:
            subprocess.run(
                [self.docker, "rm", "-f", name],
                capture_output=True,
                timeout=30,
                env=docker_env(),
                check=False,
            )
            while time.monotonic() < end:
                probe = subprocess.run(
                    [self.docker, "inspect", "--format", "{{.State.Status}}", name],
                    capture_output=True,
                    timeout=30,
                    env=docker_env(),
                    check=False,
                )
                if probe.returncode != 0:  # no such container: removed
                    return
                time.sleep(0.05)
        except (OSError, subprocess.SubprocessError):
            pass


class SubcallRelay:
    """What serves the container's ``llm_query``/``rlm_query`` calls: the host driver,
    over the ``docker run -i`` channel. It stands where rlms keeps an HTTP proxy
    (``DockerREPL.proxy_server``); no port is opened, so :attr:`port` is None."""

    port: int | None = None

    def __init__(self, env: IsolatedREPL):
        self._env = env

    @property
    def lm_handler_address(self) -> tuple[str, int] | None:
        """The LM handler the relayed calls go to (changed by ``update_handler_address``)."""
        return self._env.lm_handler_address


class DockerREPL(IsolatedREPL):
    """The worker in a Docker container (see the module docstring).

    Options (``environment_kwargs``): ``image`` (default ``$RLM_DOCKER_IMAGE`` or
    ``python:3.11-slim``), ``docker`` (the client command), ``memory_mb`` (2048),
    ``cpus`` (1.0), ``pids_limit`` (64), ``workdir_mb`` (256), ``user``
    ("65534:65534"), ``network`` ("none"), ``run_args`` (extra ``docker run``
    arguments), plus ``cell_timeout``, ``max_output_chars``, ``setup_code``,
    ``start_timeout``. ``subcall_fn(prompt, model) -> RLMChatCompletion``, as in
    rlms, serves ``rlm_query`` on the host instead of the LM handler.
    """

    def __init__(
        self,
        image: str | None = None,
        docker: str = "docker",
        memory_mb: int | None = 2048,
        cpus: float | None = 1.0,
        pids_limit: int | None = 64,
        workdir_mb: int = 256,
        user: str = "65534:65534",
        network: str = "none",
        run_args: list[str] | None = None,
        subcall_fn: Any = None,
        **kwargs: Any,
    ):
        self.check_kwargs(kwargs)
        image = image or os.environ.get(IMAGE_ENV_VAR) or DEFAULT_IMAGE
        if not isinstance(image, str) or not image.strip():
            raise ConfigurationError(f"image must be a non-empty string, got {image!r}")
        if subcall_fn is not None and not callable(subcall_fn):
            raise ConfigurationError(f"subcall_fn must be callable, got {subcall_fn!r}")
        why = docker_available(docker)
        if why is not None:
            raise ConfigurationError(
                f"environment='docker' needs a running Docker engine: {why}. "
                "Install docker and start dockerd (see scripts/docker_image.sh)."
            )
        self.image = image
        self.subcall_fn = subcall_fn
        self.proxy_server = SubcallRelay(self)
        self.proxy_port: int | None = None
        self.temp_dir: str = tempfile.mkdtemp(prefix="rlm_docker_")
        self._transport_args = dict(
            image=image,
            docker=docker,
            memory_mb=memory_mb,
            cpus=cpus,
            pids_limit=pids_limit,
            workdir_mb=workdir_mb,
            user=user,
            network=network,
            run_args=run_args,
            cid_dir=self.temp_dir,
        )
        try:
            super().__init__(**kwargs)
        except BaseException:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            raise

    def _make_transport(self) -> DockerTransport:
        return DockerTransport(**self._transport_args)

    @property
    def container_id(self) -> str | None:
        """The id of the container the worker runs in now (None once cleaned up)."""
        transport = getattr(self, "transport", None)
        return None if transport is None else transport.container_id

    def setup(self) -> None:
        # The RLM's own callback is served through the LM handler (the same call, as in
        # LocalREPL); a user's subcall_fn is called on the host for each rlm_query.
        routed = getattr(self.subcall_fn, "rlm_routed_via_handler", False)
        self._channel.subcall_fn = None if routed else self.subcall_fn
        super().setup()

    def _start_worker(self) -> None:
        try:
            super()._start_worker()
        except WorkerError as exc:
            if "Unable to find image" not in str(exc):
                raise
            raise WorkerError(
                f"{exc}\nThe image {self.image!r} is not on this machine and could not be "
                "pulled. Build one offline with scripts/docker_image.sh and name it with "
                f"environment_kwargs={{'image': ...}} or ${IMAGE_ENV_VAR}."
            ) from exc

    def cleanup(self) -> None:
        try:
            super().cleanup()
        finally:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
