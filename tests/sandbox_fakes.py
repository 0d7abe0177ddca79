"""Local stand-ins for the cloud sandbox SDKs (modal, e2b, daytona, prime_sandboxes).

Each fake has the methods, arguments and stream shapes the adapter calls (checked
against the real SDKs: modal 1.6, e2b 2.56, daytona 0.226, prime-sandboxes 0.5.1) and
runs the command it is given for real, as a local process with a scrubbed
environment in its own directory: every frame flows through the adapter and the
driver. ``FAKE.sandboxes`` records each sandbox and whether it was terminated.
``fail_after_create`` makes the next start fail (or be interrupted) once the sandbox
exists, to test that the adapter terminates it.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
from types import SimpleNamespace
from typing import Any

from rlm.environments.isolated import scrubbed_env


class LocalBox:
    """One fake sandbox: a directory and the processes started in it."""

    def __init__(self, registry: FakeService, **create_args: Any):
        self.id = f"sb-{len(registry.sandboxes) + 1}"
        self.create_args = create_args
        self.dir = tempfile.mkdtemp(prefix="rlm_fake_sandbox_")
        self.procs: list[subprocess.Popen[bytes]] = []
        self.terminated = False
        self.registry = registry
        registry.sandboxes.append(self)

    def spawn(self, argv: list[str]) -> subprocess.Popen[bytes]:
        if self.terminated:
            raise RuntimeError("sandbox was terminated")
        failure = self.registry.fail_after_create
        if failure is not None:
            self.registry.fail_after_create = None
            raise failure
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=self.dir,
            env=scrubbed_env(self.dir),
            start_new_session=True,
            bufsize=0,
        )
        self.procs.append(proc)
        return proc

    def terminate(self) -> None:
        self.terminated = True
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class FakeService:
    def __init__(self) -> None:
        self.sandboxes: list[LocalBox] = []
        self.fail_after_create: BaseException | None = None

    def all_terminated(self) -> bool:
        return all(box.terminated for box in self.sandboxes)


def _chunks(stream: Any, size: int = 65536):
    while True:
        chunk = stream.read1(size) if hasattr(stream, "read1") else stream.read(size)
        if not chunk:
            return
        yield chunk


# ---------------------------------------------------------------------------
# modal: App.lookup, Image.*, Sandbox.create(...) -> .exec(*args, text=False) -> process
# ---------------------------------------------------------------------------


class _ModalWriter:
    def __init__(self, stream: Any):
        self._stream = stream
        self._buf = bytearray()

    def write(self, data: bytes | str) -> None:
        self._buf += data.encode() if isinstance(data, str) else data

    def drain(self) -> None:
        data, self._buf = bytes(self._buf), bytearray()
        self._stream.write(data)
        self._stream.flush()


class _ModalProcess:
    def __init__(self, proc: subprocess.Popen[bytes]):
        self._proc = proc
        self.stdin = _ModalWriter(proc.stdin)
        self.stdout = _chunks(proc.stdout)
        self.stderr = _chunks(proc.stderr)

    def poll(self) -> int | None:
        return self._proc.poll()


class _ModalSandbox:
    def __init__(self, box: LocalBox):
        self._box = box
        self.object_id = box.id

    def exec(self, *args: str, text: bool = True, **_: Any) -> _ModalProcess:
        assert text is False, "the adapter must ask for bytes"
        return _ModalProcess(self._box.spawn(list(args)))

    def terminate(self) -> None:
        self._box.terminate()


def fake_modal() -> Any:
    service = FakeService()

    class Sandbox:
        @staticmethod
        def create(
            *, app: Any, image: Any, timeout: int, block_network: bool, cpu: Any, memory: Any
        ):
            return _ModalSandbox(
                LocalBox(
                    service, app=app, image=image, timeout=timeout, block_network=block_network
                )
            )

    return SimpleNamespace(
        FAKE=service,
        App=SimpleNamespace(lookup=lambda name, create_if_missing=False: ("app", name)),
        Image=SimpleNamespace(
            debian_slim=lambda python_version=None: ("debian_slim", python_version),
            from_registry=lambda tag: ("registry", tag),
        ),
        Sandbox=Sandbox,
    )


# ---------------------------------------------------------------------------
# e2b: Sandbox.create(...) -> .commands.run(cmd, background=True, stdin=True) -> handle
# ---------------------------------------------------------------------------


class _E2BHandle:
    """Iterating yields ``(stdout, stderr, pty)`` text chunks, like e2b's CommandHandle."""

    def __init__(self, proc: subprocess.Popen[bytes]):
        self._proc = proc
        self.pid = proc.pid
        self._events: list[tuple[str | None, str | None, None] | None] = []
        self._cond = threading.Condition()
        self._open = 2
        for stream, slot in ((proc.stdout, 0), (proc.stderr, 1)):
            threading.Thread(target=self._pump, args=(stream, slot), daemon=True).start()

    def _pump(self, stream: Any, slot: int) -> None:
        for chunk in _chunks(stream):
            text = chunk.decode("utf-8", "replace")
            with self._cond:
                self._events.append((text, None, None) if slot == 0 else (None, text, None))
                self._cond.notify_all()
        with self._cond:
            self._open -= 1
            self._cond.notify_all()

    def __iter__(self):
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._events or self._open == 0)
                if not self._events:
                    break
                event = self._events.pop(0)
            yield event
        if self._proc.wait() != 0:
            raise RuntimeError(f"CommandExitException: exit code {self._proc.returncode}")

    def send_stdin(self, data: str | bytes, request_timeout: float | None = None) -> None:
        self._proc.stdin.write(data.encode() if isinstance(data, str) else data)
        self._proc.stdin.flush()


class _E2BSandbox:
    def __init__(self, box: LocalBox):
        self._box = box
        self.sandbox_id = box.id
        box_ = box

        class Commands:
            @staticmethod
            def run(cmd: str, background: bool = False, stdin: bool = False, timeout: float = 60):
                assert background and stdin, "the adapter must run a background command with stdin"
                return _E2BHandle(box_.spawn(["/bin/bash", "-c", cmd]))

        self.commands = Commands()

    def kill(self) -> bool:
        self._box.terminate()
        return True


def fake_e2b() -> Any:
    service = FakeService()

    class Sandbox:
        @staticmethod
        def create(
            template: str | None = None,
            timeout: int | None = None,
            allow_internet_access: bool | None = None,
        ):
            return _E2BSandbox(
                LocalBox(
                    service, template=template, timeout=timeout, internet=allow_internet_access
                )
            )

    return SimpleNamespace(FAKE=service, Sandbox=Sandbox)


# ---------------------------------------------------------------------------
# daytona: Daytona().create(params) -> sandbox.process sessions; logs streamed async
# ---------------------------------------------------------------------------


class _DaytonaProcess:
    def __init__(self, box: LocalBox):
        self._box = box
        self._sessions: dict[str, dict[str, subprocess.Popen[bytes]]] = {}

    def create_session(self, session_id: str) -> None:
        self._sessions[session_id] = {}

    def execute_session_command(self, session_id: str, req: Any) -> Any:
        assert req.run_async is True and req.echo is False, "async, without input echo"
        proc = self._box.spawn(["/bin/bash", "-c", req.command])
        cmd_id = f"cmd-{len(self._sessions[session_id]) + 1}"
        self._sessions[session_id][cmd_id] = proc
        return SimpleNamespace(cmd_id=cmd_id)

    async def get_session_command_logs_async(
        self, session_id: str, command_id: str, on_stdout: Any, on_stderr: Any
    ) -> None:
        proc = self._sessions[session_id][command_id]
        loop = asyncio.get_running_loop()

        async def pump(stream: Any, sink: Any) -> None:
            while True:
                chunk = await loop.run_in_executor(None, stream.read, 65536)
                if not chunk:
                    return
                sink(chunk.decode("utf-8", "replace"))

        await asyncio.gather(pump(proc.stdout, on_stdout), pump(proc.stderr, on_stderr))

    def send_session_command_input(self, session_id: str, command_id: str, data: str) -> None:
        stdin = self._sessions[session_id][command_id].stdin
        stdin.write(data.encode())
        stdin.flush()


def fake_daytona() -> Any:
    service = FakeService()

    class Daytona:
        def __init__(self, config: Any = None):
            self.config = config

        def create(self, params: Any, *, timeout: float = 60) -> Any:
            box = LocalBox(service, config=self.config, **vars(params))
            return SimpleNamespace(id=box.id, process=_DaytonaProcess(box), delete=box.terminate)

    return SimpleNamespace(
        FAKE=service,
        Daytona=Daytona,
        DaytonaConfig=lambda **kw: SimpleNamespace(**kw),
        Resources=lambda **kw: SimpleNamespace(**kw),
        CreateSandboxFromImageParams=lambda **kw: SimpleNamespace(kind="image", **kw),
        CreateSandboxFromSnapshotParams=lambda **kw: SimpleNamespace(kind="snapshot", **kw),
        SessionExecuteRequest=lambda command, run_async=False, suppress_input_echo=None: (
            SimpleNamespace(command=command, run_async=run_async, echo=not suppress_input_echo)
        ),
    )


# ---------------------------------------------------------------------------
# prime_sandboxes: AsyncSandboxClient().create / wait_for_creation / open_process / delete
# ---------------------------------------------------------------------------


class _AsyncStream:
    def __init__(self, stream: Any):
        self._stream = stream

    def __aiter__(self):
        return self

    async def __anext__(self) -> bytes:
        chunk = await asyncio.get_running_loop().run_in_executor(None, self._stream.read, 65536)
        if not chunk:
            raise StopAsyncIteration
        return chunk


class _PrimeProcess:
    def __init__(self, proc: subprocess.Popen[bytes]):
        self._proc = proc
        self.stdout = _AsyncStream(proc.stdout)
        self.stderr = _AsyncStream(proc.stderr)

    @property
    def returncode(self) -> int | None:
        return self._proc.poll()

    async def write_stdin(self, data: bytes) -> None:
        self._proc.stdin.write(data)
        self._proc.stdin.flush()

    async def kill(self) -> None:
        self._proc.kill()

    async def aclose(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._proc.wait)


def fake_prime() -> Any:
    service = FakeService()
    boxes: dict[str, LocalBox] = {}

    class AsyncSandboxClient:
        async def create(self, request: Any) -> Any:
            box = LocalBox(service, **vars(request))
            boxes[box.id] = box
            return SimpleNamespace(id=box.id)

        async def wait_for_creation(self, sandbox_id: str) -> None:
            assert sandbox_id in boxes

        async def open_process(self, sandbox_id: str, command: str) -> _PrimeProcess:
            return _PrimeProcess(boxes[sandbox_id].spawn(shlex.split(command)))

        async def delete(self, sandbox_id: str) -> dict[str, Any]:
            boxes[sandbox_id].terminate()
            return {}

        async def aclose(self) -> None:
            return None

    return SimpleNamespace(
        FAKE=service,
        AsyncSandboxClient=AsyncSandboxClient,
        CreateSandboxRequest=lambda **kw: SimpleNamespace(**kw),
    )


FAKES = {"modal": fake_modal, "e2b": fake_e2b, "daytona": fake_daytona, "prime": fake_prime}
