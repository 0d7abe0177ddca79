"""PrimeREPL: the worker in a Prime Intellect sandbox, over a live process.

``AsyncSandboxClient().create(CreateSandboxRequest(name=..., docker_image=...,
timeout_minutes=...))`` (prime-sandboxes 0.5) and ``wait_for_creation(id)`` make the
sandbox; ``open_process(id, command)`` starts the worker as a live process
(``write_stdin(bytes)``, ``stdout``/``stderr`` async byte iterators; VM
sandboxes, which 0.5 makes by default). The SDK's streaming API is async, so calls run on a private
event loop thread. ``kill()`` and ``delete(id)`` run on cleanup, on a failed or
interrupted start and on a worker restart. Credentials: ``PRIME_API_KEY`` or
``~/.prime/config.json`` (``prime login``).
"""

from __future__ import annotations

import uuid
from typing import Any

from rlm.environments.local_repl import host_options
from rlm.environments.sandbox import (
    AsyncLoop,
    SandboxREPL,
    SandboxTransport,
    rlms_alias,
    worker_command,
)

DEFAULT_IMAGE = "python:3.11-slim"


class PrimeTransport(SandboxTransport):
    name = "prime"

    def _open(self) -> None:
        self.loop = AsyncLoop()
        self.loop.run(self._aopen())
        self.loop.spawn(self._pump(self.process, self.channel))
        self.loop.spawn(self._pump(self.process, None))

    async def _aopen(self) -> None:
        sdk, opts = self.sdk, self.options
        self.client = sdk.AsyncSandboxClient()
        self.process = None
        request: dict[str, Any] = {
            "name": opts["name"] or f"rlm-{uuid.uuid4().hex[:12]}",
            "docker_image": opts["image"],
            "timeout_minutes": opts["lifetime_minutes"],
        }
        if not opts["network"]:
            request["network_allowlist"] = []  # an empty allowlist denies all egress, DNS too
        self.sandbox = await self.client.create(sdk.CreateSandboxRequest(**request))
        await self.client.wait_for_creation(self.sandbox.id)
        self.process = await self.client.open_process(self.sandbox.id, worker_command())

    async def _pump(self, process: Any, channel: Any) -> None:
        """stdout into ``channel`` (stderr into the tail when ``channel`` is None)."""
        try:
            async for chunk in process.stdout if channel is not None else process.stderr:
                (channel.feed if channel is not None else self.note_stderr)(chunk)
        except Exception as exc:
            self.note_stderr(f"prime process stream ended: {type(exc).__name__}: {exc}\n")
        if channel is not None:
            code = process.returncode
            self.ended(channel, None if code is None else f"exit status {code}")

    def _send(self, data: bytes) -> None:
        self.loop.run(self.process.write_stdin(data))

    def _terminate(self) -> None:
        try:
            self.loop.run(self._aterminate(), timeout=120)
        finally:
            self.loop.close()

    async def _aterminate(self) -> None:
        try:
            if self.process is not None:
                await self.process.kill()
                await self.process.aclose()
        finally:
            try:
                await self.client.delete(self.sandbox.id)
            finally:
                await self.client.aclose()


class PrimeREPL(SandboxREPL):
    """The worker in a Prime Intellect VM sandbox (see the module docstring).

    Options: ``image`` ("python:3.11-slim"; rlms calls it ``docker_image``),
    ``lifetime_minutes`` (60; rlms: ``timeout_minutes``), ``name`` (the sandbox's
    name; default a fresh ``rlm-...`` one), ``network`` (False: no egress at all;
    rlms: ``network_access``, which defaults to True there), ``sdk`` (a stand-in for
    the ``prime_sandboxes`` module), plus the common ones.
    """

    SERVICE = "prime"
    SDK_MODULE = "prime_sandboxes"
    CREDENTIALS = (("PRIME_API_KEY",),)
    CREDENTIAL_FILES = ("~/.prime/config.json",)
    TRANSPORT = PrimeTransport

    def __init__(
        self,
        name: str | None = None,
        docker_image: str | None = None,
        timeout_minutes: int | None = None,
        lm_handler_address: tuple[str, int] | None = None,
        context_payload: Any = None,
        setup_code: str | None = None,
        network_access: bool | None = None,
        persistent: bool = False,
        depth: int = 1,
        *,
        image: str | None = None,
        lifetime_minutes: int | None = None,
        network: bool | None = None,
        sdk: Any = None,
        **kwargs: Any,
    ):
        options = dict(
            image=rlms_alias("image", image, "docker_image", docker_image, DEFAULT_IMAGE),
            lifetime_minutes=rlms_alias(
                "lifetime_minutes", lifetime_minutes, "timeout_minutes", timeout_minutes, 60
            ),
            name=name,
            network=bool(rlms_alias("network", network, "network_access", network_access, False)),
        )
        super().__init__(sdk=sdk, transport_options=options, **host_options(locals()), **kwargs)
