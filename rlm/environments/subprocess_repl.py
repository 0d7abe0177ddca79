"""SubprocessREPL: the worker in a separate, confined process on this machine.

Layers, each used when this machine offers it (``env.isolation`` reports them):

* **scrubbed environment**: the worker sees only PATH, LANG and HOME (its own
  working directory); no API keys or tokens;
* **private working directory**, a fresh temporary directory removed by ``cleanup()``;
* **resource limits** (``resource.setrlimit`` before exec): address space,
  CPU time, file size, processes, open files;
* **namespaces** with ``bwrap`` (bubblewrap): no network (``--unshare-net``),
  its own process tree (it cannot see or signal the host), an unprivileged
  uid, and a private filesystem view holding only the system directories,
  the Python installation and the working directory; ``unshare`` (util-linux)
  is the fallback for the network and process namespaces;
* **seccomp** (with ``pyseccomp`` installed and ``bwrap``): system calls a REPL
  never needs (ptrace, mount, bpf, kernel modules, new namespaces, inet
  sockets...) fail with EPERM;
* **pids cgroup** when this process may create one (running as root, where
  RLIMIT_NPROC does not apply): a hard cap on the number of processes;
* **process group**: teardown kills the worker and everything it started.

The channel is the worker's stdin/stdout pipes, so the worker needs no socket.
"""

from __future__ import annotations

import errno
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

from rlm.environments.isolated import (
    BOOTSTRAP,
    IsolatedREPL,
    ProcessChannel,
    ProcessTransport,
    scrubbed_env,
)
from rlm.utils.exceptions import ConfigurationError

SANDBOX_CHOICES = ("auto", "bwrap", "unshare", "none")

#: System calls the worker never needs; with seccomp on they fail with EPERM.
SECCOMP_DENY = (
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "unshare",
    "setns",
    "bpf",
    "perf_event_open",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "keyctl",
    "add_key",
    "request_key",
    "userfaultfd",
    "open_by_handle_at",
    "name_to_handle_at",
    "reboot",
    "swapon",
    "swapoff",
    "syslog",
    "acct",
    "quotactl",
    "iopl",
    "ioperm",
)


def _tasks_of_user(uid: int) -> int:
    """How many tasks (processes and threads) ``uid`` runs now."""
    count = 0
    try:
        entries = os.listdir("/proc")
    except OSError:
        return 0
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status", "rb") as fh:
                status = fh.read()
        except OSError:
            continue
        uid_line = threads = None
        for line in status.splitlines():
            if line.startswith(b"Uid:"):
                uid_line = line.split()[1]
            elif line.startswith(b"Threads:"):
                threads = line.split()[1]
        if uid_line is not None and int(uid_line) == uid:
            count += int(threads or 1)
    return count


def _which(name: str) -> str | None:
    return shutil.which(name)


def _seccomp_program(path: str, deny_inet: bool) -> bool:
    """Write a BPF program denying SECCOMP_DENY (and inet sockets) to ``path``."""
    try:
        import pyseccomp
    except ImportError:
        return False
    import socket

    flt = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    for name in SECCOMP_DENY:
        try:
            flt.add_rule(pyseccomp.ERRNO(errno.EPERM), name)
        except (OSError, ValueError, RuntimeError):
            pass  # not a system call on this architecture
    if deny_inet:
        for family in (socket.AF_INET, socket.AF_INET6, socket.AF_PACKET, socket.AF_NETLINK):
            flt.add_rule(
                pyseccomp.ERRNO(errno.EPERM), "socket", pyseccomp.Arg(0, pyseccomp.EQ, family)
            )
    with open(path, "wb") as fh:
        flt.export_bpf(fh)
    return True


class _PidsCgroup:
    """A cgroup-v1 ``pids`` group capping the worker's processes (root only, where writable)."""

    ROOT = "/sys/fs/cgroup/pids"

    def __init__(self, limit: int):
        self.path: str | None = None
        if os.geteuid() != 0 or not os.path.isdir(self.ROOT):
            return
        path = os.path.join(self.ROOT, f"rlm-{uuid.uuid4().hex[:12]}")
        try:
            os.mkdir(path)
            with open(os.path.join(path, "pids.max"), "w") as fh:
                fh.write(str(limit))
        except OSError:
            try:
                os.rmdir(path)
            except OSError:
                pass
            return
        self.path = path
        self.procs_file = os.path.join(path, "cgroup.procs").encode()

    def join_self(self) -> None:
        """Called in the child before exec (only system calls, no Python allocation games)."""
        if self.path is None:
            return
        fd = os.open(self.procs_file, os.O_WRONLY)
        try:
            os.write(fd, str(os.getpid()).encode())
        finally:
            os.close(fd)

    def kill_all(self) -> None:
        if self.path is None:
            return
        try:
            with open(os.path.join(self.path, "cgroup.procs")) as fh:
                pids = [int(line) for line in fh if line.strip()]
        except OSError:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def remove(self) -> None:
        """Kill what is left in the group and remove it (killed tasks take a moment to go)."""
        if self.path is None:
            return
        deadline = time.monotonic() + 2.0
        while True:
            self.kill_all()
            try:
                os.rmdir(self.path)
                self.path = None
                return
            except OSError:
                if time.monotonic() > deadline:
                    return  # left behind, empty soon; harmless
                time.sleep(0.01)


class SubprocessTransport(ProcessTransport):
    """Starts the worker as a confined child process (see the module docstring)."""

    name = "subprocess"

    def __init__(
        self,
        python: str | None = None,
        sandbox: str = "auto",
        seccomp: bool | None = None,
        network: bool = False,
        memory_mb: int | None = 4096,
        cpu_seconds: int | None = 3600,
        max_file_mb: int | None = 1024,
        max_processes: int | None = 64,
        max_open_files: int | None = 256,
    ):
        if sandbox not in SANDBOX_CHOICES:
            raise ConfigurationError(
                f"sandbox must be one of {', '.join(SANDBOX_CHOICES)}, got {sandbox!r}"
            )
        for label, value in (
            ("memory_mb", memory_mb),
            ("cpu_seconds", cpu_seconds),
            ("max_file_mb", max_file_mb),
            ("max_processes", max_processes),
            ("max_open_files", max_open_files),
        ):
            if value is not None and not (isinstance(value, int) and value > 0):
                raise ConfigurationError(
                    f"{label} must be a positive integer or None, got {value!r}"
                )
        self.python = os.path.realpath(python or sys.executable)
        self.network = network
        self.limits = {
            "memory_mb": memory_mb,
            "cpu_seconds": cpu_seconds,
            "max_file_mb": max_file_mb,
            "max_processes": max_processes,
            "max_open_files": max_open_files,
        }
        self.base_dir = tempfile.mkdtemp(prefix="rlm_subprocess_")
        self.workdir = os.path.join(self.base_dir, "work")
        os.mkdir(self.workdir, 0o700)
        self.tool = self._pick_sandbox(sandbox)
        self.seccomp_path: str | None = None
        if seccomp is not False and self.tool == "bwrap":
            path = os.path.join(self.base_dir, "seccomp.bpf")
            if _seccomp_program(path, deny_inet=not network):
                self.seccomp_path = path
        if seccomp is True and self.seccomp_path is None:
            raise ConfigurationError(
                "seccomp=True needs bubblewrap (apt-get install bubblewrap) and pyseccomp "
                '(pip install "rlm[subprocess]")'
            )
        self.cgroup = _PidsCgroup(max_processes) if max_processes else None
        self._nproc: int | None = None
        super().__init__()

    # -- the plan ----------------------------------------------------------------------------

    @staticmethod
    def _pick_sandbox(sandbox: str) -> str:
        if sandbox in ("auto", "bwrap") and _which("bwrap") and _bwrap_works():
            return "bwrap"
        if sandbox == "bwrap":
            raise ConfigurationError(
                "sandbox='bwrap' but bubblewrap is missing or cannot create namespaces here "
                "(apt-get install bubblewrap)"
            )
        if sandbox in ("auto", "unshare") and _which("unshare") and _unshare_works():
            return "unshare"
        if sandbox == "unshare":
            raise ConfigurationError(
                "sandbox='unshare' but unshare (util-linux) cannot create user namespaces here"
            )
        return "none"

    def _python_dirs(self) -> list[str]:
        dirs = {os.path.realpath(sys.base_prefix), os.path.dirname(self.python)}
        out = []
        for d in sorted(dirs):
            if not any(d == p or d.startswith(p + os.sep) for p in ("/usr", "/bin", "/lib")):
                out.append(d)
        return out

    def argv(self) -> list[str]:
        worker = [self.python, "-I", "-S", "-B", "-c", BOOTSTRAP]
        if self.tool == "bwrap":
            cmd = [
                "bwrap",
                "--unshare-user",
                "--unshare-pid",
                "--unshare-ipc",
                "--unshare-uts",
                "--unshare-cgroup-try",
                "--die-with-parent",
                "--new-session",
                "--uid",
                "65534",
                "--gid",
                "65534",
                "--ro-bind",
                "/usr",
                "/usr",
            ]
            if not self.network:
                cmd.append("--unshare-net")
            for top in ("/bin", "/lib", "/lib32", "/lib64", "/sbin"):
                if os.path.islink(top):
                    cmd += ["--symlink", os.readlink(top), top]
                elif os.path.isdir(top):
                    cmd += ["--ro-bind", top, top]
            for etc in ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/localtime"):
                cmd += ["--ro-bind-try", etc, etc]
            if self.network:
                for etc in ("/etc/resolv.conf", "/etc/hosts", "/etc/ssl", "/etc/nsswitch.conf"):
                    cmd += ["--ro-bind-try", etc, etc]
            for d in self._python_dirs():
                cmd += ["--ro-bind", d, d]
            cmd += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
            cmd += ["--bind", self.workdir, self.workdir, "--chdir", self.workdir]
            if self.seccomp_path is not None:
                cmd += ["--seccomp", "3"]
            return cmd + worker
        if self.tool == "unshare":
            flags = ["--user", "--map-root-user", "--pid", "--fork", "--kill-child"]
            if not self.network:
                flags.append("--net")
            return ["unshare", *flags, *worker]
        return worker

    @property
    def isolation(self) -> dict[str, Any]:
        bwrap = self.tool == "bwrap"
        namespaced = self.tool in ("bwrap", "unshare")
        return {
            "sandbox": self.tool,
            "scrubbed_env": True,
            "workdir": self.workdir,
            "network": "host"
            if self.network
            else ("none" if namespaced else "host (no namespace tool)"),
            "pid_namespace": namespaced,
            "filesystem": "private view (system dirs read-only, workdir writable)"
            if bwrap
            else "host filesystem",
            "uid": "65534 in a user namespace"
            if bwrap
            else ("0 in a user namespace" if namespaced else os.getuid()),
            "capabilities": "none" if bwrap else ("namespace-local" if namespaced else "inherited"),
            "seccomp": self.seccomp_path is not None,
            "cgroup_pids": self.cgroup is not None and self.cgroup.path is not None,
            "rlimits": {k: v for k, v in self.limits.items() if v is not None},
            "process_group": True,
        }

    # -- lifecycle -----------------------------------------------------------------------------

    def _preexec(self) -> None:
        limits = self.limits
        mb = 1024 * 1024
        if limits["memory_mb"]:
            resource.setrlimit(resource.RLIMIT_AS, (limits["memory_mb"] * mb,) * 2)
        if limits["cpu_seconds"]:
            cpu = limits["cpu_seconds"]
            resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))
        if limits["max_file_mb"]:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limits["max_file_mb"] * mb,) * 2)
        if limits["max_open_files"]:
            resource.setrlimit(resource.RLIMIT_NOFILE, (limits["max_open_files"],) * 2)
        if self._nproc:
            resource.setrlimit(resource.RLIMIT_NPROC, (self._nproc,) * 2)
        if self.cgroup is not None:
            self.cgroup.join_self()
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    def start(self) -> ProcessChannel:
        self.stop()
        pass_fds: tuple[int, ...] = ()
        seccomp_fd = None
        if self.seccomp_path is not None:
            seccomp_fd = os.open(self.seccomp_path, os.O_RDONLY)
            pass_fds = (seccomp_fd,)
        # RLIMIT_NPROC counts every task (threads too) of the real user: leave room for the
        # ones that user already runs. (It does not bind root; the pids cgroup does.)
        nproc = self.limits["max_processes"]
        if nproc:
            self._nproc = nproc if os.getuid() == 0 else nproc + _tasks_of_user(os.getuid())
        argv = self.argv()
        if seccomp_fd is not None:
            argv[argv.index("--seccomp") + 1] = str(seccomp_fd)
        try:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=scrubbed_env(self.workdir),
                cwd=self.workdir,
                start_new_session=True,
                preexec_fn=self._preexec,
                pass_fds=pass_fds,
                bufsize=0,
            )
        finally:
            if seccomp_fd is not None:
                os.close(seccomp_fd)
        self.channel = ProcessChannel(self.proc)
        return self.channel

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                proc.kill()
            except OSError:
                pass
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.cgroup is not None:
            self.cgroup.kill_all()

    def remove_files(self) -> None:
        """Final teardown: the pids cgroup and the temporary directory."""
        if self.cgroup is not None:
            self.cgroup.remove()
        shutil.rmtree(self.base_dir, ignore_errors=True)


_probe_cache: dict[str, bool] = {}


def _probe(name: str, argv: list[str]) -> bool:
    if name not in _probe_cache:
        try:
            _probe_cache[name] = (
                subprocess.run(argv, capture_output=True, timeout=10, check=False).returncode == 0
            )
        except (OSError, subprocess.SubprocessError):
            _probe_cache[name] = False
    return _probe_cache[name]


def _bwrap_works() -> bool:
    return _probe(
        "bwrap",
        [
            "bwrap",
            "--unshare-user",
            "--unshare-net",
            "--unshare-pid",
            "--ro-bind",
            "/",
            "/",
            "true",
        ],
    )


def _unshare_works() -> bool:
    return _probe("unshare", ["unshare", "--user", "--map-root-user", "--net", "true"])


class SubprocessREPL(IsolatedREPL):
    """The worker in a confined child process (see the module docstring).

    Options (``environment_kwargs``): ``sandbox`` ("auto", "bwrap", "unshare",
    "none"), ``seccomp`` (None = when available, True = required, False = off),
    ``network`` (False), ``python`` (the interpreter to run; default this one),
    ``memory_mb`` (4096), ``cpu_seconds`` (3600, for the worker's whole life),
    ``max_file_mb`` (1024), ``max_processes`` (64), ``max_open_files`` (256);
    None turns a limit off. And the common ones: ``cell_timeout``,
    ``max_output_chars``, ``setup_code``, ``start_timeout``.
    """

    def __init__(
        self,
        python: str | None = None,
        sandbox: str = "auto",
        seccomp: bool | None = None,
        network: bool = False,
        memory_mb: int | None = 4096,
        cpu_seconds: int | None = 3600,
        max_file_mb: int | None = 1024,
        max_processes: int | None = 64,
        max_open_files: int | None = 256,
        **kwargs: Any,
    ):
        self.check_kwargs(kwargs)
        self._transport_args = dict(
            python=python,
            sandbox=sandbox,
            seccomp=seccomp,
            network=network,
            memory_mb=memory_mb,
            cpu_seconds=cpu_seconds,
            max_file_mb=max_file_mb,
            max_processes=max_processes,
            max_open_files=max_open_files,
        )
        super().__init__(**kwargs)

    def _make_transport(self) -> SubprocessTransport:
        return SubprocessTransport(**self._transport_args)

    @property
    def workdir(self) -> str:
        """The worker's working directory (and HOME), on this machine."""
        return self.transport.workdir  # type: ignore[attr-defined]

    def cleanup(self) -> None:
        if self._closed:
            return
        try:
            super().cleanup()
        finally:
            self.transport.remove_files()  # type: ignore[attr-defined]
