"""E2BREPL: the worker in an E2B sandbox, over a background command's stdin/stdout.

``e2b.Sandbox.create(template=..., timeout=..., allow_internet_access=False)``
makes the sandbox; ``sandbox.commands.run(cmd, background=True, stdin=True,
timeout=0)`` starts the worker and returns a handle: ``handle.send_stdin(data)``
writes, iterating the handle yields ``(stdout, stderr, pty)`` text chunks.
E2B decodes process output as UTF-8 text, so frames travel as base64 lines
(``TEXT_BOOTSTRAP`` relays them inside the sandbox). ``sandbox.kill()`` runs on
cleanup, on a failed or interrupted start and on a worker restart.
Credentials: ``E2B_API_KEY``.
"""

from __future__ import annotations

from typing import Any

from rlm.environments.local_repl import host_options
from rlm.environments.sandbox import (
    DEFAULT_LIFETIME,
    SandboxREPL,
    SandboxTransport,
    reader_thread,
    rlms_alias,
    worker_command,
)


class E2BTransport(SandboxTransport):
    name = "e2b"
    text = True

    def _open(self) -> None:
        opts = self.options
        self.sandbox = self.sdk.Sandbox.create(
            template=opts["template"],
            timeout=opts["lifetime"],
            allow_internet_access=opts["network"],
        )
        self.handle = self.sandbox.commands.run(
            worker_command(text=True), background=True, stdin=True, timeout=0
        )
        reader_thread(self._read, "e2b")

    def _read(self) -> None:
        channel, handle = self.channel, self.handle
        try:
            for stdout, stderr, _pty in handle:
                if stdout is not None:
                    channel.feed(stdout)
                elif stderr is not None:
                    self.note_stderr(stderr)
        except Exception as exc:  # the command ended with an error, or the stream broke
            self.note_stderr(f"e2b command stream ended: {type(exc).__name__}: {exc}\n")
        self.ended(channel)

    def _send(self, data: bytes) -> None:
        self.handle.send_stdin(data.decode("ascii"))

    def _terminate(self) -> None:
        self.sandbox.kill()


class E2BREPL(SandboxREPL):
    """The worker in an E2B sandbox (see the module docstring).

    Options: ``template`` (default: E2B's ``base`` template, which has ``python3``),
    ``lifetime`` (seconds, 3600; rlms calls it ``timeout``), ``network`` (False),
    ``sdk`` (a stand-in for the ``e2b`` module), plus the common ones.
    """

    SERVICE = "e2b"
    SDK_MODULE = "e2b"
    CREDENTIALS = (("E2B_API_KEY",),)
    TRANSPORT = E2BTransport

    def __init__(
        self,
        timeout: int | None = None,
        lm_handler_address: tuple[str, int] | None = None,
        context_payload: Any = None,
        setup_code: str | None = None,
        persistent: bool = False,
        *,
        template: str | None = None,
        lifetime: int | None = None,
        network: bool = False,
        sdk: Any = None,
        **kwargs: Any,
    ):
        lifetime = rlms_alias("lifetime", lifetime, "timeout", timeout, DEFAULT_LIFETIME)
        options = dict(template=template, lifetime=lifetime, network=network)
        super().__init__(sdk=sdk, transport_options=options, **host_options(locals()), **kwargs)
