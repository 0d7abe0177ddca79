"""What the cloud sandbox adapters (modal, e2b, daytona, prime) share.

Each adapter is a transport for :class:`~rlm.environments.isolated.IsolatedREPL`:
it creates a sandbox with its service's SDK, starts ``python3 -c BOOTSTRAP``
there, and moves frames over the process's stdin/stdout as the SDK offers it.
This module holds the parts that are the same for all of them:

* :class:`PushChannel`, a channel fed by the SDK's output callbacks or iterators;
* :data:`TEXT_BOOTSTRAP`, for services whose process output is text only: a
  relay in the sandbox turns base64 lines into the worker's bytes and back;
* :class:`SandboxTransport`, which always terminates the sandbox: in ``stop()``
  (``cleanup()``), when start-up fails or is interrupted (Ctrl-C included), and
  when the worker is restarted;
* :func:`require_sdk` and :func:`require_credentials`, one-line
  ``ConfigurationError`` messages naming the pip extra or the variable;
* :class:`AsyncLoop`, a private event loop thread for async-only SDK calls.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import importlib
import os
import shlex
import threading
import warnings
from collections.abc import Callable, Coroutine
from typing import Any

from rlm.environments.isolated import BOOTSTRAP, IsolatedREPL, take_exact
from rlm.utils.exceptions import ConfigurationError

#: Prepended to BOOTSTRAP where stdout carries text only: the host writes base64 lines,
#: a relay thread decodes them into a pipe that becomes fd 0; the worker's fd 1 is a pipe
#: whose bytes another relay thread writes out as base64 lines.
TEXT_RELAY = (
    "import os,base64,threading\n"
    "_i,_o=os.dup(0),os.dup(1)\n"
    "_a,_b=os.pipe();_c,_d=os.pipe()\n"
    "def _up():\n"
    "    w=os.fdopen(_b,'wb')\n"
    "    for line in os.fdopen(_i,'rb'):\n"
    "        w.write(base64.b64decode(line));w.flush()\n"
    "    w.close()\n"
    "def _down():\n"
    "    r=os.fdopen(_c,'rb',0);w=os.fdopen(_o,'wb')\n"
    "    while True:\n"
    "        k=r.read(49152)\n"
    "        if not k:break\n"
    "        w.write(base64.b64encode(k)+b'\\n');w.flush()\n"
    "threading.Thread(target=_up,daemon=True).start()\n"
    "threading.Thread(target=_down,daemon=True).start()\n"
    "os.dup2(_a,0);os.dup2(_d,1);os.close(_a);os.close(_d)\n"
)
TEXT_BOOTSTRAP = TEXT_RELAY + BOOTSTRAP
#: Bytes per base64 line the host sends (the services cap one stdin write).
TEXT_CHUNK = 768 * 1024
DEFAULT_LIFETIME = 3600
#: Options never shown in ``isolation`` (credentials).
SECRET_OPTIONS = frozenset({"api_key"})


def worker_argv(text: bool = False) -> list[str]:
    """The command that starts the worker in a sandbox (any image with ``python3``)."""
    return ["python3", "-I", "-S", "-B", "-c", TEXT_BOOTSTRAP if text else BOOTSTRAP]


def worker_command(text: bool = False) -> str:
    """:func:`worker_argv` as one shell command line."""
    return shlex.join(worker_argv(text))


def require_sdk(module: str, extra: str) -> Any:
    """Import a sandbox SDK, or a one-line ConfigurationError naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigurationError(
            f"environment={extra!r} needs the {module!r} package ({exc}). "
            f'Install it with: pip install "rlm[{extra}]"'
        ) from exc


def require_credentials(
    service: str, *alternatives: tuple[str, ...], files: tuple[str, ...] = ()
) -> None:
    """Raise unless one group of variables is all set (or one credentials file exists)."""
    for group in alternatives:
        if all(os.environ.get(name) for name in group):
            return
    for path in files:
        if os.path.exists(os.path.expanduser(path)):
            return
    wanted = " or ".join(" and ".join(group) for group in alternatives)
    where = f" (or a credentials file: {', '.join(files)})" if files else ""
    raise ConfigurationError(f"environment={service!r} needs credentials: set {wanted}{where}")


def rlms_alias(ours: str, value: Any, theirs: str, alias: Any, default: Any) -> Any:
    """Resolve an option that rlms spells ``theirs`` and we spell ``ours`` (both default
    to None in the signature): the one given, else ``default``; both, differing: an error."""
    if alias is not None and value is not None and alias != value:
        raise ConfigurationError(
            f"{theirs}={alias!r} (the rlms name) and {ours}={value!r} disagree: pass one of them"
        )
    for given in (value, alias):
        if given is not None:
            return given
    return default


class PushChannel:
    """A worker channel whose incoming bytes are pushed in by an SDK reader (``feed``)."""

    def __init__(self, send: Callable[[bytes], None], text: bool = False):
        self._send = send
        self._text = text
        self._buf = bytearray()
        self._pending_text = ""
        self._ended = False
        self._cond = threading.Condition()

    def feed(self, data: bytes | str) -> None:
        if self._text:
            text = self._pending_text + (data if isinstance(data, str) else data.decode("ascii"))
            *lines, self._pending_text = text.split("\n")
            data = b"".join(base64.b64decode(line) for line in lines if line)
        elif isinstance(data, str):
            data = data.encode("utf-8")
        if data:
            with self._cond:
                self._buf += data
                self._cond.notify_all()

    def end(self) -> None:
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def read_exact(self, n: int) -> bytes | None:
        with self._cond:
            self._cond.wait_for(lambda: len(self._buf) >= n or self._ended)
            return take_exact(self._buf, n, "the sandbox stream")

    def write(self, data: bytes) -> None:
        if self._ended:
            raise BrokenPipeError("the sandbox process has ended")
        if not self._text:
            self._send(bytes(data))
            return
        for i in range(0, len(data), TEXT_CHUNK):
            self._send(base64.b64encode(data[i : i + TEXT_CHUNK]) + b"\n")

    def close(self) -> None:
        self.end()


class AsyncLoop:
    """An event loop on its own thread, for SDKs whose streaming API is async only."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="rlm-sandbox-loop", daemon=True
        )
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float | None = None) -> Any:
        """Run ``coro`` on the loop and wait; Ctrl-C while waiting cancels it first."""
        future = self.spawn(coro)
        try:
            ok, value = future.result(timeout)
        except BaseException:
            future.cancel()
            raise
        if not ok:
            raise value
        return value

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> Any:
        async def guarded() -> tuple[bool, Any]:
            # A KeyboardInterrupt raised inside a task would stop the loop itself.
            try:
                return True, await coro
            except BaseException as exc:
                return False, exc

        return asyncio.run_coroutine_threadsafe(guarded(), self.loop)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


class SandboxTransport:
    """Base of the cloud transports: subclasses implement ``_open()`` and ``_terminate()``.

    ``_open()`` creates the sandbox (storing its handle at once, so that it can be
    terminated whatever happens next), starts the worker and connects
    ``self.channel``: reader threads call ``channel.feed``, ``note_stderr`` and, at the
    end of the stream, ``channel.end()``. ``_terminate()`` deletes the sandbox.
    """

    name = "sandbox"
    text = False  #: the service's process output is text: frames travel base64-encoded

    def __init__(self, sdk: Any, **options: Any):
        self.sdk = sdk
        self.options = options
        self.sandbox: Any = None
        self.channel: PushChannel | None = None
        self.status: str | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=64)

    # -- to implement -------------------------------------------------------------

    def _open(self) -> None:
        raise NotImplementedError

    def _send(self, data: bytes) -> None:
        raise NotImplementedError

    def _terminate(self) -> None:
        raise NotImplementedError

    # -- the transport interface ---------------------------------------------------

    def start(self) -> PushChannel:
        self.stop()
        self.status = None
        self.channel = PushChannel(self._send, text=self.text)
        try:
            self._open()
        except BaseException:  # a failed or interrupted start must not leave a sandbox running
            self.stop()
            raise
        return self.channel

    def stop(self) -> None:
        channel, self.channel = self.channel, None
        if channel is not None:
            channel.close()
        if self.sandbox is None:
            return
        try:
            self._terminate()
        except Exception as exc:  # loud, not fatal: cleanup must go on
            warnings.warn(
                f"rlm: could not terminate the {self.name} sandbox: {type(exc).__name__}: {exc}",
                RuntimeWarning,
                stacklevel=2,
            )
        finally:
            self.sandbox = None

    def note_stderr(self, text: bytes | str) -> None:
        self._tail.append(text.decode("utf-8", "replace") if isinstance(text, bytes) else text)

    def ended(self, channel: PushChannel, status: str | None = None) -> None:
        """Called by a reader when the output stream feeding ``channel`` is over (a reader
        of a replaced worker ends only its own channel, never the new one)."""
        if channel is self.channel:
            self.status = status or self.status
        channel.end()

    def exit_status(self) -> str | None:
        return self.status

    def stderr_tail(self) -> str:
        return "".join(self._tail)[-8192:]

    @property
    def isolation(self) -> dict[str, Any]:
        return {
            "sandbox": self.name,
            "remote": True,
            "scrubbed_env": True,  # nothing from the host's environment is passed in
            **{k: v for k, v in self.options.items() if v is not None and k not in SECRET_OPTIONS},
        }


def reader_thread(target: Callable[[], None], name: str) -> None:
    threading.Thread(target=target, name=f"rlm-{name}-reader", daemon=True).start()


class SandboxREPL(IsolatedREPL):
    """Base of the cloud REPLs: ``sdk`` (a stand-in for the SDK module, for tests and
    other services speaking the same API; default: import the real one, which then
    needs credentials) and the transport's options."""

    SERVICE = ""
    SDK_MODULE = ""
    CREDENTIALS: tuple[tuple[str, ...], ...] = ()
    CREDENTIAL_FILES: tuple[str, ...] = ()
    TRANSPORT: type[SandboxTransport] = SandboxTransport

    def __init__(
        self, sdk: Any = None, transport_options: dict[str, Any] | None = None, **kwargs: Any
    ):
        self.check_kwargs(kwargs)  # before the SDK and the credentials are looked for
        if sdk is None:
            if not getattr(self, "_explicit_credentials", False):  # e.g. daytona's api_key=
                require_credentials(self.SERVICE, *self.CREDENTIALS, files=self.CREDENTIAL_FILES)
            sdk = require_sdk(self.SDK_MODULE, self.SERVICE)
        self._sdk = sdk
        self._transport_options = dict(transport_options or {})
        super().__init__(**kwargs)

    def _make_transport(self) -> SandboxTransport:
        return self.TRANSPORT(self._sdk, **self._transport_options)
