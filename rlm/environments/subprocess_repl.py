"""SubprocessREPL: the worker in a separate, confined process on this machine.

It fails closed: it starts only when every layer below is in force, and otherwise
raises ``ConfigurationError`` naming what is missing, how to get it, and the
option that accepts less (which then warns once per process). ``env.isolation``
reports the layers in force.

* **namespaces and a private root**: user, pid, network, IPC, UTS, cgroup and
  mount namespaces; the filesystem holds only the system directories and the
  Python installation, read-only, plus a size-capped tmpfs work dir (``/work``,
  also HOME) and ``/tmp``. With bubblewrap (``sandbox="bwrap"``) or, without
  it, our own launcher over ``unshare(2)`` (``sandbox="unshare"``: standard
  library Python, needs only unprivileged user namespaces);
* **an unprivileged uid**: model code runs as uid 65534 inside, mapped to this
  user outside; when this process is root, to a fresh uid of its own that owns
  no host file (and the whole sandbox's processes count against it);
* **no capabilities**, ``no_new_privs``;
* **seccomp** (``pyseccomp``): ptrace, mounts, namespaces (``unshare``, ``setns``,
  ``clone`` with namespace flags, ``clone3``), ``io_uring``, bpf, kernel modules,
  keys, non-Unix sockets and the rest of what Docker's default profile refuses
  fail with EPERM;
* **whole-sandbox limits**: memory and processes through a cgroup (v2 where
  present, v1 otherwise); without one, ``setrlimit`` on every process (address
  space, CPU, file size, open files) and RLIMIT_NPROC on a uid of the sandbox's
  own, or a refusal of ``max_processes``;
* **scrubbed environment**: PATH, LANG and HOME only; no API keys or tokens;
* **process group and pid namespace**: teardown kills everything the worker started.

The channel is the worker's stdin/stdout pipes, so the worker needs no socket.
"""

from __future__ import annotations

import errno
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
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
#: The work dir (and HOME) inside the sandbox: a tmpfs of ``workdir_mb``.
SANDBOX_WORKDIR = "/work"
SANDBOX_UID = 65534
TMP_MB = 64

#: System calls the worker never needs; with seccomp on they fail with EPERM. Compared with
#: Docker's default profile (which allows a list and refuses the rest): everything it refuses
#: that exists on this architecture, plus io_uring (which bypasses the socket filter).
SECCOMP_DENY = (
    # tracing and other processes' memory
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "pidfd_getfd",
    # mounts and namespaces
    "mount",
    "umount",
    "umount2",
    "pivot_root",
    "chroot",
    "unshare",
    "setns",
    "open_tree",
    "move_mount",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    # the kernel and the machine
    "bpf",
    "perf_event_open",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "create_module",
    "get_kernel_syms",
    "query_module",
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
    "quotactl_fd",
    "iopl",
    "ioperm",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "stime",
    "sethostname",
    "setdomainname",
    "vhangup",
    "lookup_dcookie",
    "nfsservctl",
    "uselib",
    "ustat",
    "sysfs",
    "_sysctl",
    "vm86",
    "vm86old",
    "fanotify_init",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
)

#: clone() flags that create namespaces: refused (clone3 is refused with ENOSYS, so libc
#: falls back to clone, whose flags a filter can read).
CLONE_NAMESPACE_FLAGS = {
    "CLONE_NEWTIME": 0x00000080,
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}

_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def _which(name: str) -> str | None:
    return shutil.which(name)


def _seccomp_program(path: str, deny_sockets: bool) -> str | None:
    """Write the BPF program (SECCOMP_DENY, namespace clones, non-Unix sockets) to ``path``;
    None when written, else why not."""
    try:
        import pyseccomp
    except ImportError:
        return 'pyseccomp is not installed (pip install "rlm[subprocess]")'
    import socket

    flt = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    deny = pyseccomp.ERRNO(errno.EPERM)
    for name in SECCOMP_DENY:
        try:
            flt.add_rule(deny, name)
        except (OSError, ValueError, RuntimeError):
            pass  # not a system call on this architecture
    flt.add_rule(pyseccomp.ERRNO(errno.ENOSYS), "clone3")
    for flag in CLONE_NAMESPACE_FLAGS.values():
        flt.add_rule(deny, "clone", pyseccomp.Arg(0, pyseccomp.MASKED_EQ, flag, flag))
    if deny_sockets:  # only Unix sockets (pipes between the model's own processes)
        for call in ("socket", "socketpair"):
            flt.add_rule(deny, call, pyseccomp.Arg(0, pyseccomp.NE, socket.AF_UNIX))
    with open(path, "wb") as fh:
        flt.export_bpf(fh)
    return None


# ---------------------------------------------------------------------------
# cgroups: memory and pids for the whole process tree
# ---------------------------------------------------------------------------


def _own_cgroups() -> dict[str, str]:
    """Controller (or "" for v2) -> this process's cgroup path."""
    out: dict[str, str] = {}
    try:
        with open("/proc/self/cgroup") as fh:
            for line in fh:
                parts = line.rstrip("\n").split(":", 2)
                if len(parts) != 3:
                    continue
                for controller in parts[1].split(",") if parts[1] else [""]:
                    out[controller] = parts[2]
    except OSError:
        pass
    return out


class _Cgroup:
    """A cgroup for one sandbox: ``memory`` and ``pids`` limits over the whole tree.

    cgroup v2 when a writable hierarchy with both controllers is there, v1 (one group per
    controller) otherwise; ``version`` is None when neither can be created here."""

    def __init__(self, memory_mb: int | None, max_processes: int | None):
        self.version: int | None = None
        self.dirs: list[str] = []
        self.controllers: set[str] = set()
        self.why = ""
        wanted = {"memory": memory_mb is not None, "pids": max_processes is not None}
        if not any(wanted.values()):
            self.why = "no limit asked for"
            return
        name = f"rlm-{uuid.uuid4().hex[:12]}"
        own = _own_cgroups()
        errors: list[str] = []
        for root in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
            v2 = os.path.exists(os.path.join(root, "cgroup.controllers"))
            if v2 and self._v2(root, own.get("", "/"), name, memory_mb, max_processes, errors):
                return
        if self._v1(own, name, memory_mb, max_processes, wanted, errors):
            return
        self.why = "; ".join(errors) or "no cgroup hierarchy is mounted"

    def _write(self, directory: str, filename: str, value: str) -> None:
        with open(os.path.join(directory, filename), "w") as fh:
            fh.write(value)

    def _v2(self, root, own, name, memory_mb, max_processes, errors) -> bool:
        parent = os.path.join(root, own.lstrip("/"))
        try:
            with open(os.path.join(parent, "cgroup.subtree_control")) as fh:
                enabled = set(fh.read().split())
            need = {"memory", "pids"} - enabled
            if need:  # refused (EBUSY) where the parent holds processes, as usual
                self._write(parent, "cgroup.subtree_control", " ".join("+" + c for c in need))
            path = os.path.join(parent, name)
            os.mkdir(path)
        except OSError as exc:
            errors.append(f"cgroup v2 at {parent}: {exc.strerror or exc}")
            return False
        try:
            if memory_mb is not None:
                self._write(path, "memory.max", str(memory_mb * 1024 * 1024))
                if os.path.exists(os.path.join(path, "memory.swap.max")):
                    self._write(path, "memory.swap.max", "0")
            if max_processes is not None:
                self._write(path, "pids.max", str(max_processes))
        except OSError as exc:
            errors.append(f"cgroup v2 at {path}: {exc.strerror or exc}")
            os.rmdir(path)
            return False
        self.version, self.dirs = 2, [path]
        self.controllers = {c for c, v in (("memory", memory_mb), ("pids", max_processes)) if v}
        return True

    def _v1(self, own, name, memory_mb, max_processes, wanted, errors) -> bool:
        made: list[str] = []
        try:
            for controller, on in wanted.items():
                if not on:
                    continue
                base = os.path.join("/sys/fs/cgroup", controller)
                if not os.path.isdir(base):
                    raise OSError(errno.ENOENT, f"no cgroup v1 {controller} hierarchy")
                path = os.path.join(base, own.get(controller, "/").lstrip("/"), name)
                os.mkdir(path)
                made.append(path)
                if controller == "memory":
                    limit = str(memory_mb * 1024 * 1024)  # type: ignore[operator]
                    self._write(path, "memory.limit_in_bytes", limit)
                    if os.path.exists(os.path.join(path, "memory.memsw.limit_in_bytes")):
                        self._write(path, "memory.memsw.limit_in_bytes", limit)
                else:
                    self._write(path, "pids.max", str(max_processes))
        except OSError as exc:
            errors.append(f"cgroup v1: {exc.strerror or exc}")
            for path in made:
                try:
                    os.rmdir(path)
                except OSError:
                    pass
            return False
        self.version, self.dirs = 1, made
        self.controllers = {c for c, on in wanted.items() if on}
        return True

    def join_self(self) -> None:
        """In the child before exec (system calls only)."""
        for directory in self.dirs:
            fd = os.open(os.path.join(directory, "cgroup.procs"), os.O_WRONLY)
            try:
                os.write(fd, str(os.getpid()).encode())
            finally:
                os.close(fd)

    def kill_all(self) -> None:
        for directory in self.dirs:
            kill_file = os.path.join(directory, "cgroup.kill")
            if os.path.exists(kill_file):
                try:
                    self._write(directory, "cgroup.kill", "1")
                    continue
                except OSError:
                    pass
            try:
                with open(os.path.join(directory, "cgroup.procs")) as fh:
                    pids = [int(line) for line in fh if line.strip()]
            except OSError:
                continue
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass

    def remove(self) -> None:
        """Kill what is left in the group and remove it (killed tasks take a moment to go)."""
        deadline = time.monotonic() + 2.0
        while self.dirs:
            self.kill_all()
            left = []
            for directory in self.dirs:
                try:
                    os.rmdir(directory)
                except FileNotFoundError:
                    pass
                except OSError:
                    left.append(directory)
            self.dirs = left
            if not left or time.monotonic() > deadline:
                return  # anything left is empty soon; harmless
            time.sleep(0.01)


# ---------------------------------------------------------------------------
# The launcher: a private root without bubblewrap (unshare(2), standard library only)
# ---------------------------------------------------------------------------

#: Run as ``python3 -I -S -B -c LAUNCHER CONFIG_JSON``. It makes mount/pid/net/ipc/uts/cgroup
#: namespaces (and a user namespace unless started as root), builds a tmpfs root of read-only
#: binds (from file descriptors the host opened), pivots into it, becomes the unprivileged
#: uid (as root: a fresh one; else 65534 mapped to this user), drops every capability, sets
#: no_new_privs and the seccomp filter, and runs the worker under a small init that reaps.
LAUNCHER = r"""
import ctypes, json, os, select, sys
cfg = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
def check(ret, what):
    if ret != 0:
        e = ctypes.get_errno()
        sys.stderr.write("rlm launcher: %s: %s\n" % (what, os.strerror(e)))
        os._exit(126)
def mount(src, dst, fstype, flags, data=None):
    enc = lambda v: None if v is None else v.encode()
    check(libc.mount(enc(src), enc(dst), enc(fstype), ctypes.c_ulong(flags), enc(data)),
          "mount %s" % dst)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
uid, gid = os.getuid(), os.getgid()
become = cfg["become"]  # [uid, gid] when started as root: no user namespace, then that uid
flags = 0x00020000 | 0x20000000 | 0x08000000 | 0x04000000 | 0x02000000
if not cfg["network"]:
    flags |= 0x40000000
if become is None:
    flags |= 0x10000000
check(libc.unshare(flags), "unshare")
if become is None:
    for name, text in (("setgroups", "deny"), ("uid_map", "%d %d 1" % (cfg["uid"], uid)),
                       ("gid_map", "%d %d 1" % (cfg["uid"], gid))):
        with open("/proc/self/" + name, "w") as fh:
            fh.write(text)
import resource
if cfg["nproc"]:  # counted per user namespace: the sandbox's tasks only
    resource.setrlimit(resource.RLIMIT_NPROC, (cfg["nproc"], cfg["nproc"]))
NR = {"x86_64": (155, 126), "aarch64": (41, 91)}.get(os.uname().machine)
if NR is None:
    sys.stderr.write("rlm launcher: unsupported machine %s\n" % os.uname().machine)
    os._exit(126)
def code(status):
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
pid = os.fork()
if pid:
    # Wait for the sandbox, or for the host to die: then leave, and the sandbox's pid 1
    # (killed by its death signal when this launcher goes) takes every process with it.
    try:
        child = os.pidfd_open(pid)
        host = [os.pidfd_open(cfg["host_pid"])] if cfg.get("host_pid") else []
    except (AttributeError, OSError):  # no pidfds (Linux < 5.3): wait for the sandbox only
        os._exit(code(os.waitpid(pid, 0)[1]))
    if host and os.getppid() != cfg["host_pid"]:
        os._exit(137)  # the host died before we watched it
    if child in select.select([child, *host], [], [])[0]:
        os._exit(code(os.waitpid(pid, 0)[1]))
    os._exit(137)
check(libc.prctl(1, 9, 0, 0, 0), "PR_SET_PDEATHSIG")  # SIGKILL when the launcher goes
# pid 1 of the new pid namespace: build the root.
mount(None, "/", None, MS_REC | MS_PRIVATE)
root = cfg["root"]
mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
def inside(path):
    return root + path
def mkdirs(path):
    os.makedirs(inside(path), mode=0o755, exist_ok=True)
def bind(src, dest, is_dir, ro=True):
    if is_dir:
        mkdirs(dest)
    else:
        mkdirs(os.path.dirname(dest))
        open(inside(dest), "a").close()
    mount(src, inside(dest), None, MS_BIND)
    if ro:
        st = os.statvfs(src).f_flag
        extra = 0
        for bit, flag in ((os.ST_NOEXEC, MS_NOEXEC), (os.ST_NOATIME, MS_NOATIME),
                          (os.ST_NODIRATIME, MS_NODIRATIME), (getattr(os, "ST_RELATIME", 0), MS_RELATIME)):
            if bit and st & bit:
                extra |= flag
        mount(None, inside(dest), None,
              MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | extra)
for src, dest, is_dir in cfg["binds"]:
    bind(src, dest, is_dir)
for link, target in cfg["symlinks"]:
    os.symlink(target, inside(link))
mkdirs("/dev")
mount("tmpfs", inside("/dev"), "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755,size=64k")
for dev in cfg["devices"]:
    bind(dev, dev, False, ro=False)
for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                     ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
    os.symlink(target, inside("/dev/" + name))
os.mkdir(inside("/dev/shm"))
mount("tmpfs", inside("/dev/shm"), "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=%dm" % cfg["tmp_mb"])
for path, size in ((cfg["workdir"], cfg["workdir_mb"]), ("/tmp", cfg["tmp_mb"])):
    mkdirs(path)
    owner = ",uid=%d,gid=%d" % tuple(become) if become and path == cfg["workdir"] else ""
    mount("tmpfs", inside(path), "tmpfs", MS_NOSUID | MS_NODEV,
          "mode=%s,size=%dm%s" % ("0700" if path == cfg["workdir"] else "1777", size, owner))
mkdirs("/proc")
mount("proc", inside("/proc"), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
os.chdir(root)
check(libc.syscall(NR[0], b".", b"."), "pivot_root")
check(libc.umount2(b".", 2), "umount old root")  # MNT_DETACH
os.chdir("/")
mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
libc.sethostname(b"rlm-sandbox", 11)
os.chdir(cfg["workdir"])
keep = {0, 1, 2, cfg["seccomp_fd"]} if cfg["seccomp_fd"] is not None else {0, 1, 2}
for fd in os.listdir("/proc/self/fd"):
    if int(fd) not in keep:
        try:
            os.close(int(fd))
        except OSError:
            pass
# No way back: no new privileges, no capabilities, then the filter.
check(libc.prctl(38, 1, 0, 0, 0), "PR_SET_NO_NEW_PRIVS")
cap = 0
while libc.prctl(24, cap, 0, 0, 0) == 0:  # PR_CAPBSET_DROP
    cap += 1
class Hdr(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
class Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]
if become is not None:  # leaving uid 0 clears every capability
    os.setgroups([])
    os.setresgid(become[1], become[1], become[1])
    os.setresuid(become[0], become[0], become[0])
    check(libc.prctl(1, 9, 0, 0, 0), "PR_SET_PDEATHSIG")  # the uid change cleared it
check(libc.syscall(NR[1], ctypes.byref(Hdr(0x20080522, 0)), (Data * 2)()), "capset")
if cfg["seccomp_fd"] is not None:
    prog = os.read(cfg["seccomp_fd"], 1 << 20)
    os.close(cfg["seccomp_fd"])
    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]
    check(libc.prctl(22, 2, ctypes.byref(Prog(len(prog) // 8, prog)), 0, 0), "seccomp")
if become is not None:
    check(libc.prctl(4, 1, 0, 0, 0), "PR_SET_DUMPABLE")  # /proc/self stays ours after setuid
pid = os.fork()
if pid == 0:
    if cfg["argv"] is not None:
        os.execve(cfg["argv"][0], cfg["argv"], cfg["env"])
    # The worker in this same interpreter (one start fewer): a fresh environment and module.
    os.environ.clear()
    os.environ.update(cfg["env"])
    sys.argv = ["-c"]
    del cfg, libc
    exec(compile(BOOTSTRAP, "<bootstrap>", "exec"), {"__name__": "__main__"})
    os._exit(0)
while True:  # init: reap orphans; leave with the worker
    try:
        got, status = os.wait()
    except ChildProcessError:
        os._exit(0)
    if got == pid:
        os._exit(code(status))
"""


def _base_layout() -> tuple[list[tuple[str, str, bool]], list[tuple[str, str]]]:
    """The system directories every sandbox root holds: binds and symlinks."""
    binds: list[tuple[str, str, bool]] = [("/usr", "/usr", True)]
    links: list[tuple[str, str]] = []
    for top in ("/bin", "/lib", "/lib32", "/lib64", "/sbin"):
        if os.path.islink(top):
            links.append((top, os.readlink(top)))
        elif os.path.isdir(top):
            binds.append((top, top, True))
    return binds, links


def _python_dirs(python: str) -> list[str]:
    """The directories of the Python installation the sandbox binds (outside /usr)."""
    if python == os.path.realpath(sys.executable):
        dirs = {os.path.realpath(sys.base_prefix), os.path.dirname(python)}
    else:
        dirs = {os.path.dirname(os.path.dirname(python))}
    out: list[str] = []
    for d in sorted(dirs):
        system = any(d == p or d.startswith(p + os.sep) for p in ("/usr", "/bin", "/lib"))
        if not system and not any(d.startswith(o + os.sep) for o in out):
            out.append(d)
    return out


def _reachable_by_others(path: str) -> bool:
    """Whether a uid owning nothing can reach ``path`` (every parent searchable by others)."""
    path = os.path.realpath(path)
    while True:
        parent = os.path.dirname(path)
        if parent == path:
            return True
        try:
            if not os.stat(parent).st_mode & 0o001:
                return False
        except OSError:
            return False
        path = parent


def _private_uid() -> int:
    """A uid owning no host file and running nothing else (used when this process is root)."""
    return 2_000_000_000 + random.SystemRandom().randrange(100_000_000)


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
        workdir_mb: int = 1024,
    ):
        if sandbox not in SANDBOX_CHOICES:
            raise ConfigurationError(
                f"sandbox must be one of {', '.join(SANDBOX_CHOICES)}, got {sandbox!r}"
            )
        if seccomp not in (None, True, False):
            raise ConfigurationError(f"seccomp must be None, True or False, got {seccomp!r}")
        self.limits = {
            "memory_mb": memory_mb,
            "cpu_seconds": cpu_seconds,
            "max_file_mb": max_file_mb,
            "max_processes": max_processes,
            "max_open_files": max_open_files,
            "workdir_mb": workdir_mb,
        }
        for label, value in self.limits.items():
            if value is not None and not (
                isinstance(value, int) and not isinstance(value, bool) and value > 0
            ):
                raise ConfigurationError(
                    f"{label} must be a positive integer or None, got {value!r}"
                )
        if not isinstance(workdir_mb, int):
            raise ConfigurationError(f"workdir_mb must be a positive integer, got {workdir_mb!r}")
        self.python = os.path.realpath(python or sys.executable)
        self.network = network
        self.tool = self._pick_sandbox(sandbox, self.python)
        self.base_dir = tempfile.mkdtemp(prefix="rlm_subprocess_")
        self.cgroup: _Cgroup | None = None
        try:
            self._plan(seccomp)
        except BaseException:
            self.remove_files()
            raise
        super().__init__()

    # -- the plan ----------------------------------------------------------------------------

    def _plan(self, seccomp: bool | None) -> None:
        missing_accept: list[str] = []
        root = os.geteuid() == 0
        confined = self.tool != "none"
        # The uid model code runs as, outside: never one that owns host files.
        self.host_uid = _private_uid() if root and confined else os.getuid()
        self.host_gid = self.host_uid if root and confined else os.getgid()
        os.chmod(self.base_dir, 0o711)
        if confined:
            self.root_dir = os.path.join(self.base_dir, "root")
            os.mkdir(self.root_dir, 0o755)
            self.workdir = SANDBOX_WORKDIR
        else:
            self.workdir = os.path.join(self.base_dir, "work")
            os.mkdir(self.workdir, 0o700)
        # seccomp: required unless seccomp=False.
        self.seccomp_path: str | None = None
        if seccomp is False:
            _warn_once("seccomp", "rlm subprocess: seccomp=False, system calls are not filtered")
        elif not confined:
            if seccomp is True:
                raise ConfigurationError(
                    "seccomp=True needs a sandbox (sandbox='bwrap' or 'unshare'), not 'none'"
                )
        else:
            path = os.path.join(self.base_dir, "seccomp.bpf")
            why = _seccomp_program(path, deny_sockets=not self.network)
            if why is not None:
                missing_accept.append(f"seccomp: {why}; or pass seccomp=False to run without it")
            else:
                os.chmod(path, 0o644)
                self.seccomp_path = path
        # Whole-tree memory and pids: a cgroup; else RLIMIT_NPROC on a uid of our own.
        memory_mb, nproc = self.limits["memory_mb"], self.limits["max_processes"]
        self.cgroup = _Cgroup(memory_mb, nproc)
        self.nproc_scope: str | None = None
        if nproc is not None and self.cgroup.version is None:
            if root and confined:
                self.nproc_scope = "RLIMIT_NPROC on the sandbox's own uid"
            elif self.tool == "unshare":
                self.nproc_scope = "RLIMIT_NPROC in the sandbox's user namespace"
            else:
                missing_accept.append(
                    f"max_processes={nproc} cannot be enforced for the whole sandbox here "
                    f"(no pids cgroup: {self.cgroup.why}; "
                    + ("no private uid" if root else "not root, and bubblewrap's user namespace")
                    + "); pass max_processes=None to run without a process cap, or "
                    "sandbox='unshare'"
                )
        if missing_accept:
            raise ConfigurationError(
                "environment='subprocess' refuses to start with less isolation than it "
                "promises: " + " | ".join(missing_accept)
            )
        if memory_mb is not None and "memory" not in self.cgroup.controllers:
            _warn_once(
                "memory",
                f"rlm subprocess: no memory cgroup here ({self.cgroup.why}); memory_mb={memory_mb} "
                "bounds each process (RLIMIT_AS), and the tree through max_processes",
            )
        if nproc is None:
            _warn_once(
                "nproc", "rlm subprocess: max_processes=None, the process count is not capped"
            )

    @staticmethod
    def _pick_sandbox(sandbox: str, python: str) -> str:
        if sandbox == "none":
            _warn_once(
                "none",
                "rlm subprocess: sandbox='none': model code runs without namespaces, with this "
                "machine's files, network and processes in reach (a scrubbed environment and "
                "rlimits only)",
            )
            return "none"
        bwrap_why = _bwrap_problem()
        if bwrap_why is None and os.geteuid() == 0:
            # bwrap runs as the sandbox's unprivileged uid and resolves its sources by path.
            hidden = [d for d in _python_dirs(python) if not _reachable_by_others(d)]
            if hidden:
                bwrap_why = (
                    f"as root it runs as an unprivileged uid, which cannot reach {hidden[0]} "
                    "(pass python= an interpreter outside it, e.g. /usr/bin/python3)"
                )
        if sandbox in ("auto", "bwrap") and bwrap_why is None:
            return "bwrap"
        if sandbox == "bwrap":
            raise ConfigurationError(
                f"sandbox='bwrap' but bubblewrap cannot run here: {bwrap_why} "
                "(apt-get install bubblewrap), or use sandbox='unshare' or 'auto'"
            )
        launcher_why = _launcher_problem(python)
        if launcher_why is None:
            return "unshare"
        raise ConfigurationError(
            f"environment='subprocess' cannot isolate the filesystem here. bubblewrap: "
            f"{bwrap_why}; unprivileged user namespaces: {launcher_why}. Install bubblewrap "
            "(apt-get install bubblewrap) or allow user namespaces (sysctl -w "
            "kernel.unprivileged_userns_clone=1, user.max_user_namespaces=10000, "
            "kernel.apparmor_restrict_unprivileged_userns=0). To run with less isolation, "
            "pass environment_kwargs={'sandbox': 'none'} (model code then reaches your files)."
        )

    def _system_binds(self) -> tuple[list[tuple[str, str, bool]], list[tuple[str, str]]]:
        """(path, dest, is_dir) read-only binds and (link, target) symlinks of the root."""
        binds, links = _base_layout()
        etc = ["/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/localtime"]
        if self.network:
            etc += ["/etc/resolv.conf", "/etc/hosts", "/etc/ssl", "/etc/nsswitch.conf"]
        for path in etc:
            if os.path.exists(path):
                binds.append((path, path, os.path.isdir(path)))
        for d in _python_dirs(self.python):
            binds.append((d, d, True))
        return binds, links

    def _argv(self, fds: dict[str, int]) -> list[str]:
        worker = [self.python, "-I", "-S", "-B", "-c", BOOTSTRAP]
        binds, links = self._system_binds()
        if self.tool == "bwrap":
            mb = 1024 * 1024
            cmd = [
                "bwrap",
                "--unshare-user",
                "--unshare-pid",
                "--unshare-ipc",
                "--unshare-uts",
                "--unshare-cgroup-try",
                "--disable-userns",
                "--die-with-parent",
                "--new-session",
                "--uid",
                str(SANDBOX_UID),
                "--gid",
                str(SANDBOX_UID),
            ]
            if not self.network:
                cmd.append("--unshare-net")
            for path, dest, _ in binds:
                cmd += ["--ro-bind-fd", str(fds[path]), dest]
            for link, target in links:
                cmd += ["--symlink", target, link]
            cmd += ["--proc", "/proc", "--dev", "/dev"]
            cmd += ["--size", str(TMP_MB * mb), "--tmpfs", "/tmp"]
            cmd += ["--perms", "0700", "--size", str(self.limits["workdir_mb"] * mb)]
            cmd += ["--tmpfs", self.workdir, "--chdir", self.workdir]
            cmd += ["--remount-ro", "/", "--hostname", "rlm-sandbox"]
            if self.seccomp_path is not None:
                cmd += ["--seccomp", str(fds["seccomp"])]
            return cmd + worker
        if self.tool == "unshare":
            cfg = {
                "uid": SANDBOX_UID,
                "become": [self.host_uid, self.host_gid] if os.geteuid() == 0 else None,
                "network": self.network,
                "nproc": self.limits["max_processes"] if self.nproc_scope else None,
                "root": self.root_dir,
                "binds": [list(b) for b in binds],
                "symlinks": [list(x) for x in links],
                "devices": [d for d in _DEVICES if os.path.exists(d)],
                "workdir": self.workdir,
                "workdir_mb": self.limits["workdir_mb"],
                "tmp_mb": TMP_MB,
                "seccomp_fd": fds.get("seccomp"),
                "argv": worker,
                "env": scrubbed_env(self.workdir),
            }
            cfg["argv"] = None  # the launcher runs the worker itself
            cfg["host_pid"] = os.getpid()  # the launcher ends the sandbox if the host dies
            launcher = LAUNCHER.replace("BOOTSTRAP", repr(BOOTSTRAP), 1)
            return [self.python, "-I", "-S", "-B", "-c", launcher, json.dumps(cfg)]
        return worker

    @property
    def isolation(self) -> dict[str, Any]:
        confined = self.tool != "none"
        cg = self.cgroup
        cg_kinds = cg.controllers if cg else set()
        memory_mb, nproc = self.limits["memory_mb"], self.limits["max_processes"]
        return {
            "sandbox": self.tool,
            "scrubbed_env": True,
            "workdir": self.workdir,
            "network": "host" if self.network else ("none" if confined else "host (no sandbox)"),
            "pid_namespace": confined,
            "filesystem": "private root (system dirs read-only, tmpfs work dir)"
            if confined
            else "host filesystem",
            "uid": (
                f"{self.host_uid} (a uid of its own, owning no host file)"
                if self.tool == "unshare" and os.geteuid() == 0
                else f"{SANDBOX_UID} in a user namespace, {self.host_uid} outside"
            )
            if confined
            else os.getuid(),
            "capabilities": "none" if confined else "inherited",
            "no_new_privileges": confined,
            "seccomp": self.seccomp_path is not None,
            "cgroup": cg.version if cg else None,
            "memory": None
            if memory_mb is None
            else (
                f"{memory_mb} MB for the whole sandbox (cgroup)"
                if "memory" in cg_kinds
                else f"{memory_mb} MB per process (RLIMIT_AS)"
            ),
            "max_processes": None
            if nproc is None
            else (
                f"{nproc} (pids cgroup)" if "pids" in cg_kinds else f"{nproc} ({self.nproc_scope})"
            ),
            "disk": f"{self.limits['workdir_mb']} MB work dir + {TMP_MB} MB /tmp (tmpfs)"
            if confined
            else "host work dir (no quota)",
            "rlimits": {
                k: v
                for k, v in self.limits.items()
                if v is not None and k not in ("max_processes", "workdir_mb")
            },
            "process_group": True,
        }

    # -- lifecycle -----------------------------------------------------------------------------

    def _preexec(self) -> None:
        limits = self.limits
        mb = 1024 * 1024
        if self.cgroup is not None:
            self.cgroup.join_self()
        if limits["memory_mb"]:
            resource.setrlimit(resource.RLIMIT_AS, (limits["memory_mb"] * mb,) * 2)
        if limits["cpu_seconds"]:
            cpu = limits["cpu_seconds"]
            resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))
        if limits["max_file_mb"]:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limits["max_file_mb"] * mb,) * 2)
        if limits["max_open_files"]:
            resource.setrlimit(resource.RLIMIT_NOFILE, (limits["max_open_files"],) * 2)
        if self.nproc_scope == "RLIMIT_NPROC on the sandbox's own uid":
            nproc = limits["max_processes"]
            resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if self.tool == "bwrap" and self.host_uid != os.getuid():  # the launcher does its own
            os.setgroups([])
            os.setresgid(self.host_gid, self.host_gid, self.host_gid)
            os.setresuid(self.host_uid, self.host_uid, self.host_uid)

    def _open_fds(self) -> dict[str, int]:
        """The seccomp program, and O_PATH descriptors of what bwrap binds (opened here, so
        what it binds is what this process saw)."""
        fds: dict[str, int] = {}
        if self.tool == "none":
            return fds
        paths = [p for p, _, _ in self._system_binds()[0]] if self.tool == "bwrap" else []
        try:
            for path in paths:
                fds[path] = os.open(path, os.O_PATH | os.O_CLOEXEC)
            if self.seccomp_path is not None:
                fds["seccomp"] = os.open(self.seccomp_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            for fd in fds.values():
                os.close(fd)
            raise
        return fds

    def start(self) -> ProcessChannel:
        self.stop()
        fds = self._open_fds()
        try:
            self.proc = subprocess.Popen(
                self._argv(fds),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=scrubbed_env(self.workdir),
                cwd="/" if self.tool != "none" else self.workdir,
                start_new_session=True,
                preexec_fn=self._preexec,
                pass_fds=tuple(fds.values()),
                bufsize=0,
            )
        finally:
            for fd in fds.values():
                os.close(fd)
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
        """Final teardown: the cgroup and the temporary directory."""
        if self.cgroup is not None:
            self.cgroup.remove()
        shutil.rmtree(self.base_dir, ignore_errors=True)


_DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")

_probe_cache: dict[str, str | None] = {}


def _probe(name: str, argv: list[str], **kwargs: Any) -> str | None:
    """None when ``argv`` succeeds (cached per process), else why not."""
    if name not in _probe_cache:
        try:
            proc = subprocess.run(argv, capture_output=True, timeout=10, check=False, **kwargs)
            _probe_cache[name] = (
                None
                if proc.returncode == 0
                else (
                    proc.stderr.decode(errors="replace").strip()[-300:] or f"exit {proc.returncode}"
                )
            )
        except (OSError, subprocess.SubprocessError) as exc:
            _probe_cache[name] = f"{type(exc).__name__}: {exc}"
    return _probe_cache[name]


def _as_unprivileged() -> None:
    if os.geteuid() == 0:
        uid = _private_uid()
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)


def _bwrap_problem() -> str | None:
    if _which("bwrap") is None:
        return "not installed"
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
        preexec_fn=_as_unprivileged,
        cwd="/",
    )


def _launcher_problem(python: str) -> str | None:
    """Whether our launcher can build a private root here (one trial run, cached)."""
    tmp = tempfile.mkdtemp(prefix="rlm_probe_")
    try:
        os.chmod(tmp, 0o755)
        binds, links = _base_layout()
        cfg = {
            "uid": SANDBOX_UID,
            "become": [_private_uid()] * 2 if os.geteuid() == 0 else None,
            "network": False,
            "nproc": None,
            "root": tmp,
            "binds": [list(b) for b in binds],
            "symlinks": [list(x) for x in links],
            "devices": [],
            "workdir": SANDBOX_WORKDIR,
            "workdir_mb": 1,
            "tmp_mb": 1,
            "seccomp_fd": None,
            "argv": ["/usr/bin/true"] if os.path.exists("/usr/bin/true") else ["/bin/true"],
            "env": {},
        }
        return _probe(
            "unshare:" + python,
            [python, "-I", "-S", "-B", "-c", LAUNCHER, json.dumps(cfg)],
            cwd="/",
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class SubprocessREPL(IsolatedREPL):
    """The worker in a confined child process (see the module docstring).

    Options (``environment_kwargs``): ``sandbox`` ("auto": bubblewrap, else the
    ``unshare`` launcher, else a ``ConfigurationError``; "bwrap", "unshare", or "none",
    which gives up the namespaces and warns), ``seccomp`` (None or True = required,
    False = off, with a warning), ``network`` (False), ``python`` (the interpreter to
    run; default this one), ``memory_mb`` (4096, the whole sandbox with a cgroup, else
    each process), ``cpu_seconds`` (3600, per process), ``max_file_mb`` (1024),
    ``max_processes`` (64, the whole sandbox; None = no cap, with a warning),
    ``max_open_files`` (256), ``workdir_mb`` (1024, the tmpfs work dir); None turns a
    limit off: :class:`SubprocessTransport`'s options, passed through (keyword
    arguments). And the common ones: ``cell_timeout``, ``max_output_chars``,
    ``setup_code``, ``start_timeout``.
    """

    TRANSPORT = SubprocessTransport

    @property
    def workdir(self) -> str:
        """The worker's working directory (and HOME): ``/work`` inside the sandbox (a tmpfs
        of ``workdir_mb``), or a temporary directory on this machine with sandbox="none"."""
        return self.transport.workdir  # type: ignore[attr-defined]

    def cleanup(self) -> None:
        if self._closed:
            return
        try:
            super().cleanup()
        finally:
            self.transport.remove_files()  # type: ignore[attr-defined]
