"""DockerREPL: the worker in a locked-down container, driven through the Docker SDK.

The engine is reached with the Docker SDK for Python (the ``docker`` package, in the
``rlm[docker]`` extra), never the ``docker`` command: ``base_url`` when given, else
``DOCKER_HOST`` / ``DOCKER_TLS_VERIFY`` / ``DOCKER_CERT_PATH`` (``docker.from_env()``),
else the current Docker context (``DOCKER_CONTEXT`` or ``currentContext`` in the Docker
config), else the local socket. So a remote engine over TCP with TLS, or over SSH,
works on a machine without the CLI.

The container runs ``python3 -c BOOTSTRAP`` from any image that has ``python3``
(default ``python:3.11-slim``; nothing is installed at start). The worker's two files
arrive as the first frame over the container's attached stdin; the channel is that
attach socket (stdin in, stdout out, demultiplexed from the engine's 8-byte stream
headers, stderr kept as a tail for error messages), so no port is opened for it.

Hardening, set in the API's host config: no network (``network_mode="none"``), a
read-only root, tmpfs ``/work`` (HOME) and ``/tmp``, memory (swap included), CPU and
pids limits, every capability dropped, ``no-new-privileges``, an unprivileged user
(65534, "nobody"), ``nofile``/``core`` ulimits, no log driver, and our seccomp profile
(:func:`seccomp_profile`: an allow list of the system calls of x86_64 and aarch64 minus
everything Docker's default profile refuses, io_uring, namespace-creating ``clone``
flags and non-Unix sockets). Nothing from the host's environment is passed in.

Containers carry labels naming this host and the process that started them
(:data:`LABEL_OWNER`: boot id, pid and that pid's start time). They are removed on
every exit path (``cleanup()``, a failed start, Ctrl-C, a worker restart); a container
left behind by a killed process is removed by the next ``DockerREPL`` created on the
same host (:func:`remove_leftover_containers`).

A missing image is pulled when the engine can reach a registry (progress on stderr,
at most ``pull_timeout`` seconds), else the error names the image and
``scripts/docker_image.sh``. Engine errors become one-line rlm errors:
:class:`DockerEngineError` (no engine, permission denied on its socket),
:class:`DockerImageError` (image missing), :class:`DockerError` (anything else the
engine refused). A worker killed for memory is reported to the model as "out of memory".

Names kept from rlms' ``DockerREPL``: ``image``, ``container_id`` (the running
container's full id), ``temp_dir`` (an empty host-side folder, never mounted, removed
by ``cleanup()``), ``subcall_fn``, ``proxy_server`` (the host-side relay that serves
the container's sub-calls; it opens no port, so ``proxy_port`` is None) and code-string
custom tools (defined inside the container by the shared engine:
``repl_core.code_tool_source``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import uuid
from typing import Any

from rlm.environments.isolated import (
    BOOTSTRAP,
    IsolatedREPL,
    StderrTail,
    WorkerError,
    describe_returncode,
    take_exact,
)
from rlm.environments.local_repl import host_options
from rlm.environments.subprocess_repl import CLONE_NAMESPACE_FLAGS, SECCOMP_DENY
from rlm.utils.exceptions import ConfigurationError, RLMError

DEFAULT_IMAGE = "python:3.11-slim"
#: Set to use another image when ``environment_kwargs`` names none (tests and CI use a
#: locally built one: scripts/docker_image.sh).
IMAGE_ENV_VAR = "RLM_DOCKER_IMAGE"
#: Labels on every container we start: the sandbox kind, the host, and the owner process.
LABEL_SANDBOX = "org.rlm.sandbox"
LABEL_HOST = "org.rlm.host"
LABEL_OWNER = "org.rlm.owner"
#: Seconds one API call may take before it fails (the engine is stuck or unreachable).
API_TIMEOUT = 60
DEFAULT_PULL_TIMEOUT = 300.0
EXTRA = 'pip install "rlm[docker]"'


class DockerError(WorkerError, RLMError):
    """The Docker engine refused or failed an operation (a ``RuntimeError``, as in rlms)."""


class DockerEngineError(ConfigurationError, RuntimeError):
    """No usable Docker engine: none answers, or its socket refuses this user."""


class DockerImageError(ConfigurationError, DockerError):
    """The image is not on the engine and could not be pulled."""


def _sdk() -> Any:
    try:
        import docker  # type: ignore[import-untyped]
    except ImportError as exc:
        raise ConfigurationError(
            f"environment='docker' needs the Docker SDK for Python: {EXTRA}"
        ) from exc
    return docker


# ---------------------------------------------------------------------------
# Reaching the engine
# ---------------------------------------------------------------------------


def _causes(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or any(e is s for s in seen) or len(seen) > 20:
            continue
        seen.append(e)
        todo += [e.__cause__, e.__context__]
        todo += [a for a in getattr(e, "args", ()) if isinstance(a, BaseException)]
    return seen


def _engine_problem(exc: BaseException, where: str) -> DockerEngineError:
    """A one-line DockerEngineError for a failure to reach the engine at ``where``."""
    chain = _causes(exc)
    text = " ".join(str(e) for e in chain)
    if any(isinstance(e, PermissionError) for e in chain) or "Permission denied" in text:
        return DockerEngineError(
            f"environment='docker': permission denied on the Docker engine socket {where} "
            "(add this user to the 'docker' group, or point DOCKER_HOST at an engine it may use)"
        )
    if any(isinstance(e, (FileNotFoundError, ConnectionRefusedError)) for e in chain) or any(
        w in text for w in ("No such file", "Connection refused", "Connection aborted")
    ):
        why = "no Docker engine is running there"
    elif "timed out" in text.lower() or "timeout" in type(exc).__name__.lower():
        why = f"the engine did not answer within {API_TIMEOUT} s"
    else:
        why = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
    return DockerEngineError(
        f"environment='docker' cannot reach a Docker engine at {where}: {why} "
        "(start dockerd, e.g. scripts/docker_image.sh, or set DOCKER_HOST or a Docker context)"
    )


def _engine_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is the SDK or the connection failing (not a bug of ours)."""
    docker = _sdk()
    import requests

    return isinstance(
        exc, (OSError, requests.exceptions.RequestException, docker.errors.DockerException)
    )


def _context_name() -> str:
    """The Docker context in use: DOCKER_CONTEXT, else the config's currentContext."""
    _sdk()
    from docker.context.config import get_current_context_name  # type: ignore[import-untyped]

    return os.environ.get("DOCKER_CONTEXT") or get_current_context_name() or "default"


def _context_endpoint() -> tuple[str, Any] | None:
    """(host, tls) of the current Docker context when it is not "default", else None."""
    docker = _sdk()
    name = _context_name()
    if not name or name == "default":
        return None
    try:
        ctx = docker.ContextAPI.get_context(name)
    except Exception as exc:
        raise ConfigurationError(f"environment='docker': Docker context {name!r}: {exc}") from exc
    if ctx is None or not ctx.Host:
        raise ConfigurationError(f"environment='docker': no Docker context named {name!r}")
    return ctx.Host, ctx.TLSConfig


_clients: dict[tuple, Any] = {}
_clients_lock = threading.Lock()


def engine_address(base_url: str | None = None) -> str:
    """Where the engine is looked for (for messages): base_url, DOCKER_HOST, context, socket."""
    if base_url:
        return base_url
    if os.environ.get("DOCKER_HOST"):
        return os.environ["DOCKER_HOST"]
    try:
        ctx = _context_endpoint()
    except ConfigurationError:
        ctx = None
    return ctx[0] if ctx else "unix:///var/run/docker.sock"


def docker_client(base_url: str | None = None) -> Any:
    """A ``docker.DockerClient`` for ``base_url`` or the environment (cached per setting;
    the engine has answered once). Raises :class:`DockerEngineError` when none answers."""
    docker = _sdk()
    key = (
        base_url,
        *(os.environ.get(k) for k in ("DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH")),
        None if base_url or os.environ.get("DOCKER_HOST") else _context_name(),
    )
    with _clients_lock:
        client = _clients.get(key)
    if client is not None:
        return client
    where = engine_address(base_url)
    try:
        if base_url:
            client = docker.DockerClient(base_url=base_url, timeout=API_TIMEOUT)
        elif os.environ.get("DOCKER_HOST"):
            client = docker.from_env(timeout=API_TIMEOUT)
        else:
            ctx = _context_endpoint()
            if ctx is None:
                client = docker.from_env(timeout=API_TIMEOUT)
            else:
                client = docker.DockerClient(base_url=ctx[0], tls=ctx[1], timeout=API_TIMEOUT)
        client.api.ping()
    except Exception as exc:  # DockerException, requests' ConnectionError, OSError
        if not _engine_failure(exc):
            raise
        raise _engine_problem(exc, where) from None
    with _clients_lock:
        _clients.setdefault(key, client)
        return _clients[key]


def docker_available(binary: str = "docker", timeout: float = 10.0) -> str | None:
    """None when an engine answers (through the SDK), else why not (for skips and errors).
    ``binary`` and ``timeout`` are accepted for older callers and not used."""
    try:
        docker_client()
    except (ConfigurationError, RLMError) as exc:
        return str(exc)
    return None


def image_available(image: str, base_url: str | None = None) -> bool:
    """Whether the engine has ``image`` locally."""
    docker = _sdk()
    try:
        docker_client(base_url).api.inspect_image(image)
    except docker.errors.ImageNotFound:
        return False
    return True


# ---------------------------------------------------------------------------
# Leftover containers of killed processes
# ---------------------------------------------------------------------------


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


def _start_ticks(pid: int) -> str | None:
    """The process's start time (clock ticks since boot), or None when it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]


def owner_label(pid: int | None = None) -> str:
    """``boot_id:pid:start_ticks`` of a process (this one by default)."""
    pid = os.getpid() if pid is None else pid
    return f"{_boot_id()}:{pid}:{_start_ticks(pid) or '?'}"


def _owner_gone(owner: str) -> bool:
    try:
        boot, pid_text, ticks = owner.split(":")
        pid = int(pid_text)
    except ValueError:
        return False  # not ours to judge
    if boot != _boot_id():
        return True  # started before this boot: its process is gone
    return _start_ticks(pid) != ticks  # dead, or the pid belongs to another process now


_swept: set[int] = set()


def remove_leftover_containers(client: Any, force: bool = False) -> list[str]:
    """Remove the containers that processes on this host started and left behind when they
    were killed (their owner process is gone). Runs once per client unless ``force``.
    Returns the ids removed. Containers of live processes and of other hosts are kept."""
    if id(client) in _swept and not force:
        return []
    _swept.add(id(client))
    removed: list[str] = []
    try:
        found = client.api.containers(
            all=True,
            filters={"label": [f"{LABEL_SANDBOX}=docker", f"{LABEL_HOST}={socket.gethostname()}"]},
        )
    except Exception:
        return removed
    for info in found:
        owner = (info.get("Labels") or {}).get(LABEL_OWNER, "")
        if _owner_gone(owner):
            try:
                client.api.remove_container(info["Id"], force=True, v=True)
                removed.append(info["Id"])
            except Exception:
                pass
    return removed


# ---------------------------------------------------------------------------
# The seccomp profile
# ---------------------------------------------------------------------------

#: Every system call name of x86_64 and aarch64 (from libseccomp 2.5.4's tables). The
#: profile allows these minus the refused ones; anything else (a call newer than this
#: list, another architecture's calls) is refused, as in Docker's default profile.
_KNOWN_SYSCALLS = (
    "_sysctl accept accept4 access acct add_key adjtimex afs_syscall alarm arch_prctl bind bpf "
    "brk cachestat capget capset chdir chmod chown chroot clock_adjtime clock_getres "
    "clock_gettime clock_nanosleep clock_settime clone clone3 close close_range connect "
    "copy_file_range creat create_module delete_module dup dup2 dup3 epoll_create epoll_create1 "
    "epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2 epoll_wait epoll_wait_old eventfd "
    "eventfd2 execve execveat exit exit_group faccessat faccessat2 fadvise64 fallocate "
    "fanotify_init fanotify_mark fchdir fchmod fchmodat fchmodat2 fchown fchownat fcntl "
    "fdatasync fgetxattr finit_module flistxattr flock fork fremovexattr fsconfig fsetxattr "
    "fsmount fsopen fspick fstat fstatfs fsync ftruncate futex futex_requeue futex_wait "
    "futex_waitv futex_wake futimesat get_kernel_syms get_mempolicy get_robust_list "
    "get_thread_area getcpu getcwd getdents getdents64 getegid geteuid getgid getgroups "
    "getitimer getpeername getpgid getpgrp getpid getpmsg getppid getpriority getrandom "
    "getresgid getresuid getrlimit getrusage getsid getsockname getsockopt gettid gettimeofday "
    "getuid getxattr init_module inotify_add_watch inotify_init inotify_init1 inotify_rm_watch "
    "io_cancel io_destroy io_getevents io_pgetevents io_setup io_submit io_uring_enter "
    "io_uring_register io_uring_setup ioctl ioperm iopl ioprio_get ioprio_set kcmp "
    "kexec_file_load kexec_load keyctl kill landlock_add_rule landlock_create_ruleset "
    "landlock_restrict_self lchown lgetxattr link linkat listen listxattr llistxattr "
    "lookup_dcookie lremovexattr lseek lsetxattr lstat madvise map_shadow_stack mbind "
    "membarrier memfd_create memfd_secret migrate_pages mincore mkdir mkdirat mknod mknodat "
    "mlock mlock2 mlockall mmap modify_ldt mount mount_setattr move_mount move_pages mprotect "
    "mq_getsetattr mq_notify mq_open mq_timedreceive mq_timedsend mq_unlink mremap msgctl "
    "msgget msgrcv msgsnd msync munlock munlockall munmap name_to_handle_at nanosleep "
    "newfstatat nfsservctl open open_by_handle_at open_tree openat openat2 pause "
    "perf_event_open personality pidfd_getfd pidfd_open pidfd_send_signal pipe pipe2 pivot_root "
    "pkey_alloc pkey_free pkey_mprotect poll ppoll prctl pread64 preadv preadv2 prlimit64 "
    "process_madvise process_mrelease process_vm_readv process_vm_writev pselect6 ptrace "
    "putpmsg pwrite64 pwritev pwritev2 query_module quotactl quotactl_fd read readahead "
    "readlink readlinkat readv reboot recvfrom recvmmsg recvmsg remap_file_pages removexattr "
    "rename renameat renameat2 request_key restart_syscall rmdir rseq rt_sigaction "
    "rt_sigpending rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend rt_sigtimedwait "
    "rt_tgsigqueueinfo sched_get_priority_max sched_get_priority_min sched_getaffinity "
    "sched_getattr sched_getparam sched_getscheduler sched_rr_get_interval sched_setaffinity "
    "sched_setattr sched_setparam sched_setscheduler sched_yield seccomp security select semctl "
    "semget semop semtimedop sendfile sendmmsg sendmsg sendto set_mempolicy "
    "set_mempolicy_home_node set_robust_list set_thread_area set_tid_address setdomainname "
    "setfsgid setfsuid setgid setgroups sethostname setitimer setns setpgid setpriority "
    "setregid setresgid setresuid setreuid setrlimit setsid setsockopt settimeofday setuid "
    "setxattr shmat shmctl shmdt shmget shutdown sigaltstack signalfd signalfd4 socket "
    "socketpair splice stat statfs statx swapoff swapon symlink symlinkat sync sync_file_range "
    "syncfs sysfs sysinfo syslog tee tgkill time timer_create timer_delete timer_getoverrun "
    "timer_gettime timer_settime timerfd_create timerfd_gettime timerfd_settime times tkill "
    "truncate tuxcall umask umount2 uname unlink unlinkat unshare uselib userfaultfd ustat "
    "utime utimensat utimes vfork vhangup vmsplice vserver wait4 waitid write writev "
)
#: Refused on top of SECCOMP_DENY: what Docker's default profile allows only with
#: CAP_SYS_NICE (dropped here), and reserved numbers that no kernel implements.
_EXTRA_DENY = (
    "mbind get_mempolicy set_mempolicy set_mempolicy_home_node migrate_pages move_pages "
    "afs_syscall tuxcall security putpmsg getpmsg vserver"
)
#: personality() values allowed, as in Docker's default profile (PER_LINUX, the 32-bit
#: one, UNAME26 variants, and the query).
_PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)
_profile: str | None = None


def seccomp_profile() -> str:
    """Our seccomp profile, as the JSON the engine takes in ``security_opt``.

    Default action EPERM; allowed: every call of :data:`_KNOWN_SYSCALLS` except
    ``SECCOMP_DENY`` (everything Docker's default profile refuses, plus io_uring) and
    :data:`_EXTRA_DENY`; ``clone`` only without namespace flags, ``clone3`` fails with
    ENOSYS (so libc falls back to ``clone``), ``socket``/``socketpair`` only for Unix
    sockets, ``personality`` only for the values Docker's default allows."""
    global _profile
    if _profile is None:
        refused = set(SECCOMP_DENY) | set(_EXTRA_DENY.split())
        special = {"clone", "clone3", "socket", "socketpair", "personality"}
        names = sorted(set(_KNOWN_SYSCALLS.split()) - refused - special)
        ns_mask = 0
        for flag in CLONE_NAMESPACE_FLAGS.values():
            ns_mask |= flag
        rules: list[dict[str, Any]] = [
            {"names": names, "action": "SCMP_ACT_ALLOW"},
            {
                "names": ["clone"],
                "action": "SCMP_ACT_ALLOW",
                "args": [{"index": 0, "value": ns_mask, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}],
            },
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},  # ENOSYS
            {
                "names": ["socket", "socketpair"],
                "action": "SCMP_ACT_ALLOW",
                "args": [{"index": 0, "value": socket.AF_UNIX, "op": "SCMP_CMP_EQ"}],
            },
        ]
        for value in _PERSONALITIES:
            rules.append(
                {
                    "names": ["personality"],
                    "action": "SCMP_ACT_ALLOW",
                    "args": [{"index": 0, "value": value, "op": "SCMP_CMP_EQ"}],
                }
            )
        _profile = json.dumps(
            {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": rules}, separators=(",", ":")
        )
    return _profile


# ---------------------------------------------------------------------------
# The channel: the attach socket, demultiplexed
# ---------------------------------------------------------------------------


class AttachChannel:
    """The worker's channel over the container's attach socket.

    Writes go to the container's stdin as they are. Reads come from the engine's
    multiplexed stream: frames of an 8-byte header (stream 0/1/2, three zero bytes, a
    4-byte big-endian length) and that many bytes; stdout frames feed :meth:`read_exact`,
    stderr frames a bounded tail kept for error messages."""

    CHUNK = 1 << 18

    def __init__(self, sock: Any, stderr_keep: int = 8192):
        self._holder = sock  # the SDK's object (it keeps the HTTP response alive)
        raw = getattr(sock, "_sock", None)  # SocketIO (unix socket, plain TCP) -> its socket
        self._sock = raw if raw is not None else sock
        try:
            self._sock.settimeout(None)  # the SDK's API timeout must not end a long cell
        except (AttributeError, OSError):
            pass
        self._recv_into = getattr(self._sock, "recv_into", None)
        self._buf = bytearray(self.CHUNK)
        self._out = bytearray()
        self._header = b""
        self._kind = 1
        self._left = 0
        self._tail = StderrTail(stderr_keep)

    def _receive(self) -> memoryview:
        if self._recv_into is not None:
            n = self._recv_into(self._buf)
            return memoryview(self._buf)[:n]
        return memoryview(self._sock.recv(self.CHUNK))  # e.g. a paramiko channel (ssh://)

    def _fill(self) -> bool:
        """Receive one chunk and route its frames; False at the end of the stream."""
        view = self._receive()
        n = len(view)
        if n == 0:
            return False
        i = 0
        while i < n:
            if self._left == 0:
                take = min(8 - len(self._header), n - i)
                self._header += bytes(view[i : i + take])
                i += take
                if len(self._header) == 8:
                    self._kind = self._header[0]
                    self._left = int.from_bytes(self._header[4:8], "big")
                    self._header = b""
                continue
            k = min(self._left, n - i)
            if self._kind == 1:
                self._out += view[i : i + k]
            elif self._kind == 2:
                self._tail.add(bytes(view[i : i + k]))
            i += k
            self._left -= k
        return True

    def stderr_tail(self) -> str:
        return self._tail.text()

    def read_exact(self, n: int) -> bytes | None:
        while len(self._out) < n and self._fill():
            pass
        return take_exact(self._out, n, "the worker channel")

    def write(self, data: bytes) -> None:
        self._sock.sendall(data)

    def close(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except (AttributeError, OSError):
            pass
        for obj in (self._sock, self._holder, getattr(self._holder, "_response", None)):
            try:
                if obj is not None:
                    obj.close()
            except Exception:
                pass


# ---------------------------------------------------------------------------
# The transport
# ---------------------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    explanation = getattr(exc, "explanation", None)
    text = str(explanation or exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:500]


class DockerTransport:
    """Starts the worker in a container and tears it down (see the module docstring)."""

    name = "docker"
    exit_wait = 5.0  # seconds exit_status() waits for the container to finish exiting

    def __init__(
        self,
        client: Any = None,
        image: str | None = None,
        base_url: str | None = None,
        memory_mb: int | None = 2048,
        cpus: float | None = 1.0,
        pids_limit: int | None = 64,
        workdir_mb: int = 256,
        user: str = "65534:65534",
        network: str = "none",
        seccomp: bool = True,
        host_config: dict[str, Any] | None = None,
        pull: bool = True,
        pull_timeout: float = DEFAULT_PULL_TIMEOUT,
    ):
        image = image or os.environ.get(IMAGE_ENV_VAR) or DEFAULT_IMAGE
        if not isinstance(image, str) or not image.strip():
            raise ConfigurationError(f"image must be a non-empty string, got {image!r}")
        if host_config is not None and not isinstance(host_config, dict):
            raise ConfigurationError(f"host_config must be a dict, got {host_config!r}")
        if seccomp not in (True, False):
            raise ConfigurationError(f"seccomp must be True or False, got {seccomp!r}")
        if not (isinstance(pull_timeout, (int, float)) and pull_timeout > 0):
            raise ConfigurationError(
                f"pull_timeout must be a positive number, got {pull_timeout!r}"
            )
        if client is None:  # the engine at base_url (default: DOCKER_HOST, the context...)
            client = docker_client(base_url)
            remove_leftover_containers(client)
        self.client = client
        self.image = image
        self.limits = {
            "memory_mb": memory_mb,
            "cpus": cpus,
            "pids_limit": pids_limit,
            "workdir_mb": workdir_mb,
        }
        self.user = user
        self.network = network
        self.seccomp = seccomp
        self.extra_host_config = dict(host_config or {})
        self.pull = bool(pull)
        self.pull_timeout = float(pull_timeout)
        self.container: str | None = None  # the name we gave it
        self.container_id: str | None = None
        self.channel: AttachChannel | None = None

    @property
    def address(self) -> str:
        return str(getattr(self.client.api, "base_url", "the Docker engine"))

    def host_config(self) -> dict[str, Any]:
        docker = _sdk()
        security = ["no-new-privileges"]
        if self.seccomp:
            security.append(f"seccomp={seccomp_profile()}")
        args: dict[str, Any] = dict(
            network_mode=self.network,
            read_only=True,
            # No working_dir: with it, docker 20.10 resets the tmpfs mode to 755 (root
            # only); the worker moves to $HOME itself.
            tmpfs={
                "/work": f"rw,exec,size={self.limits['workdir_mb']}m,mode=1777",
                "/tmp": "rw,size=64m,mode=1777",
            },
            cap_drop=["ALL"],
            security_opt=security,
            ulimits=[
                docker.types.Ulimit(name="nofile", soft=256, hard=256),
                docker.types.Ulimit(name="core", soft=0, hard=0),
            ],
            log_config=docker.types.LogConfig(type="none"),
        )
        if self.limits["memory_mb"]:
            args["mem_limit"] = args["memswap_limit"] = f"{self.limits['memory_mb']}m"
        if self.limits["cpus"]:
            args["nano_cpus"] = int(float(self.limits["cpus"]) * 1e9)
        if self.limits["pids_limit"]:
            args["pids_limit"] = int(self.limits["pids_limit"])
        args.update(self.extra_host_config)
        return self.client.api.create_host_config(**args)

    @property
    def isolation(self) -> dict[str, Any]:
        return {
            "sandbox": "docker",
            "engine": self.address,
            "image": self.image,
            "network": self.network,
            "read_only_root": True,
            "workdir": "/work (tmpfs)",
            "uid": self.user,
            "capabilities": "none",
            "no_new_privileges": True,
            "seccomp": "rlm profile (Docker's default refusals + io_uring, namespaces, "
            "non-Unix sockets)"
            if self.seccomp
            else "the engine's default profile",
            "scrubbed_env": True,
            "limits": {k: v for k, v in self.limits.items() if v},
        }

    # -- images ----------------------------------------------------------------------

    def _missing_image(self, why: str) -> DockerImageError:
        return DockerImageError(
            f"environment='docker': the image {self.image!r} is not on the Docker engine at "
            f"{self.address} and {why}; build one offline with scripts/docker_image.sh "
            f"IMAGE and name it with environment_kwargs={{'image': ...}} or ${IMAGE_ENV_VAR}"
        )

    def _pull(self) -> None:
        """Pull the image, printing progress to stderr; at most ``pull_timeout`` seconds."""
        docker = _sdk()
        from docker.utils import parse_repository_tag  # type: ignore[import-untyped]

        repo, tag = parse_repository_tag(self.image)
        done = threading.Event()
        failure: list[BaseException] = []
        print(f"rlm docker: pulling {self.image} ...", file=sys.stderr, flush=True)

        def run() -> None:
            last = 0.0
            try:
                for event in self.client.api.pull(repo, tag=tag, stream=True, decode=True):
                    if "error" in event:
                        raise docker.errors.APIError(str(event["error"]))
                    now = time.monotonic()
                    if now - last >= 1.0 and event.get("status"):
                        last = now
                        layer = f"{event['id']}: " if event.get("id") else ""
                        status = f"{layer}{event['status']} {event.get('progress', '')}".rstrip()
                        print(f"rlm docker: {self.image}: {status}", file=sys.stderr, flush=True)
            except BaseException as exc:  # handed to the waiting thread
                failure.append(exc)
            finally:
                done.set()

        threading.Thread(target=run, name="rlm-docker-pull", daemon=True).start()
        if not done.wait(self.pull_timeout):
            raise self._missing_image(f"pulling it took longer than {self.pull_timeout:g} s")
        if failure:
            raise self._missing_image(f"pulling it failed ({_one_line(failure[0])})")
        print(f"rlm docker: pulled {self.image}", file=sys.stderr, flush=True)

    # -- lifecycle -------------------------------------------------------------------

    def _create(self) -> str:
        docker = _sdk()
        api = self.client.api
        spec = dict(
            image=self.image,
            command=["python3", "-I", "-S", "-B", "-c", BOOTSTRAP],
            user=self.user,
            environment=["HOME=/work", "LANG=C.UTF-8"],
            stdin_open=True,  # with detach=False: StdinOnce, so when the host's attach
            # connection drops (a killed host), stdin closes and the worker exits
            tty=False,
            labels={
                LABEL_SANDBOX: "docker",
                LABEL_HOST: socket.gethostname(),
                LABEL_OWNER: owner_label(),
            },
            name=self.container,
            host_config=self.host_config(),
        )
        try:
            return api.create_container(**spec)["Id"]
        except docker.errors.ImageNotFound:
            if not self.pull:
                raise self._missing_image("pull=False") from None
        self._pull()
        try:
            return api.create_container(**spec)["Id"]
        except docker.errors.ImageNotFound:
            raise self._missing_image("the pull did not provide it") from None

    def start(self) -> AttachChannel:
        docker = _sdk()
        self.stop()
        self.container = f"rlm-{uuid.uuid4().hex[:12]}"
        api = self.client.api
        try:
            self.container_id = self._create()
            sock = api.attach_socket(
                self.container_id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
            )
            self.channel = AttachChannel(sock)
            api.start(self.container_id)
        except BaseException as exc:
            self.stop()
            if isinstance(exc, RLMError) or not _engine_failure(exc):
                raise
            if isinstance(exc, docker.errors.APIError):
                raise DockerError(
                    f"environment='docker': the engine at {self.address} refused to start the "
                    f"container: {_one_line(exc)}"
                ) from None
            raise _engine_problem(exc, self.address) from None
        return self.channel

    def stop(self) -> None:
        name, self.container = self.container, None
        cid, self.container_id = self.container_id, None
        channel, self.channel = self.channel, None
        ref = cid or name
        if ref is not None:
            self._remove(ref)
        if channel is not None:
            channel.close()

    def _remove(self, ref: str, deadline_s: float = 15.0) -> None:
        """Remove the container and return once it is gone (or the engine is gone)."""
        docker = _sdk()
        end = time.monotonic() + deadline_s
        while True:
            try:
                self.client.api.remove_container(ref, force=True, v=True)
                return
            except docker.errors.NotFound:
                return
            except docker.errors.APIError as exc:
                # 409: a removal is already in progress; wait for it to finish.
                if getattr(exc, "status_code", None) != 409 or time.monotonic() >= end:
                    return
                try:
                    self.client.api.wait(ref, timeout=2, condition="removed")
                except Exception:
                    time.sleep(0.05)
            except Exception:
                return  # the engine is unreachable: the next run's sweep removes it

    def exit_status(self) -> str | None:
        cid = self.container_id
        if cid is None:
            return None
        api = self.client.api
        try:
            code = api.wait(cid, timeout=self.exit_wait).get("StatusCode")
            state = api.inspect_container(cid).get("State") or {}
        except Exception:
            return None
        if state.get("OOMKilled"):
            limit = self.limits["memory_mb"]
            return "out of memory: the container was OOM-killed" + (
                f" at its memory limit of {limit} MB" if limit else ""
            )
        return describe_returncode(code)

    def stderr_tail(self) -> str:
        return self.channel.stderr_tail() if self.channel is not None else ""


class SubcallRelay:
    """What serves the container's ``llm_query``/``rlm_query`` calls: the host driver,
    over the attach channel. It stands where rlms keeps an HTTP proxy
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
    ``python:3.11-slim``), ``base_url`` (the engine, e.g. ``tcp://host:2376``; default
    ``DOCKER_HOST``, the Docker context, the local socket), ``memory_mb`` (2048), ``cpus``
    (1.0), ``pids_limit`` (64), ``workdir_mb`` (256), ``user`` ("65534:65534"),
    ``network`` ("none"), ``seccomp`` (True: our profile; False: the engine's default),
    ``pull`` (True: pull a missing image), ``pull_timeout`` (300 s), ``host_config``
    (extra ``create_host_config`` arguments, applied over ours): all but ``image`` are
    :class:`DockerTransport`'s, passed through (keyword arguments). Plus ``cell_timeout``,
    ``max_output_chars``, ``setup_code``, ``start_timeout``.
    The RLM's options come after ``image`` in rlms' positional order (``lm_handler_address``
    ... ``max_concurrent_subcalls``); ours are keyword-only.
    ``subcall_fn(prompt, model) -> RLMChatCompletion``, as in rlms, serves ``rlm_query``
    on the host instead of the LM handler. ``docker`` (the CLI command) and ``run_args``
    (CLI arguments) belonged to the CLI, which is no longer used: only their defaults
    are accepted.
    """

    TRANSPORT = DockerTransport

    def __init__(
        self,
        image: str | None = None,
        lm_handler_address: tuple[str, int] | None = None,
        context_payload: Any = None,
        setup_code: str | None = None,
        persistent: bool = False,
        depth: int = 1,
        subcall_fn: Any = None,
        custom_tools: dict[str, Any] | None = None,
        custom_sub_tools: dict[str, Any] | None = None,
        compaction: bool = False,
        max_concurrent_subcalls: int = 4,
        *,
        docker: str = "docker",
        run_args: list[str] | None = None,
        **kwargs: Any,
    ):
        if subcall_fn is not None and not callable(subcall_fn):
            raise ConfigurationError(f"subcall_fn must be callable, got {subcall_fn!r}")
        if docker != "docker":
            raise ConfigurationError(
                f"docker={docker!r}: the docker command is no longer used (the engine is "
                "reached through the Docker SDK); point base_url= or DOCKER_HOST at the engine"
            )
        if run_args:
            raise ConfigurationError(
                f"run_args={run_args!r}: `docker run` arguments no longer apply (the engine is "
                "reached through the Docker SDK); pass host_config={...} (create_host_config "
                "arguments) instead"
            )
        self.proxy_server = SubcallRelay(self)
        self.proxy_port: int | None = None
        self.temp_dir: str = tempfile.mkdtemp(prefix="rlm_docker_")
        try:  # the transport (DockerTransport) checks the other options, then the engine
            super().__init__(image=image, **host_options(locals()), **kwargs)
        except BaseException:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            raise

    @property
    def image(self) -> str:
        """The image the container runs (``$RLM_DOCKER_IMAGE`` or python:3.11-slim by default)."""
        return self.transport.image  # type: ignore[attr-defined]

    @property
    def container_id(self) -> str | None:
        """The id of the container the worker runs in now (None once cleaned up)."""
        transport = getattr(self, "transport", None)
        return None if transport is None else transport.container_id

    def cleanup(self) -> None:
        try:
            super().cleanup()
        finally:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
