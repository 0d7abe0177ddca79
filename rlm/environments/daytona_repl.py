"""DaytonaREPL: the worker in a Daytona sandbox, over a session command's stdin/stdout.

``Daytona().create(CreateSandboxFromSnapshotParams(language="python",
network_block_all=True, ephemeral=True), timeout=...)`` makes the sandbox;
``sandbox.process.create_session(id)`` and ``execute_session_command(id,
SessionExecuteRequest(command=..., run_async=True, suppress_input_echo=True))``
start the worker (input echo off: echoed stdin would corrupt its stdout);
``send_session_command_input(id, cmd_id, data)`` writes its stdin and
``get_session_command_logs_async(id, cmd_id, on_stdout, on_stderr)`` streams its
output (text, so frames travel as base64 lines, see ``TEXT_BOOTSTRAP``).
``sandbox.delete()`` runs on cleanup, on a failed or interrupted start and on a
worker restart. Credentials: ``DAYTONA_API_KEY`` (and ``DAYTONA_API_URL`` for a
self-hosted server).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from rlm.environments.sandbox import (
    SandboxREPL,
    SandboxTransport,
    reader_thread,
    worker_command,
)


class DaytonaTransport(SandboxTransport):
    name = "daytona"
    text = True

    def _open(self) -> None:
        sdk, opts = self.sdk, self.options
        params: dict[str, Any] = {"language": "python", "network_block_all": not opts["network"]}
        if opts["snapshot"]:
            params["snapshot"] = opts["snapshot"]
        self.sandbox = sdk.Daytona().create(
            sdk.CreateSandboxFromSnapshotParams(ephemeral=True, **params),
            timeout=opts["create_timeout"],
        )
        process = self.sandbox.process
        self.session = f"rlm-{uuid.uuid4().hex[:12]}"
        process.create_session(self.session)
        response = process.execute_session_command(
            self.session,
            sdk.SessionExecuteRequest(
                command=worker_command(text=True), run_async=True, suppress_input_echo=True
            ),
        )
        self.command_id = response.cmd_id
        reader_thread(self._read, "daytona")

    def _read(self) -> None:
        channel = self.channel
        try:
            asyncio.run(
                self.sandbox.process.get_session_command_logs_async(
                    self.session, self.command_id, channel.feed, self.note_stderr
                )
            )
        except Exception as exc:
            self.note_stderr(f"daytona log stream ended: {type(exc).__name__}: {exc}\n")
        self.ended(channel)

    def _send(self, data: bytes) -> None:
        self.sandbox.process.send_session_command_input(
            self.session, self.command_id, data.decode("ascii")
        )

    def _terminate(self) -> None:
        self.sandbox.delete()


class DaytonaREPL(SandboxREPL):
    """The worker in a Daytona sandbox (see the module docstring).

    Options: ``snapshot`` (default: Daytona's default Python snapshot),
    ``network`` (False), ``create_timeout`` (seconds, 120), ``sdk`` (a stand-in
    for the ``daytona`` module), plus the common ones. The sandbox is ephemeral:
    Daytona deletes it when it stops.
    """

    SERVICE = "daytona"
    SDK_MODULE = "daytona"
    CREDENTIALS = (("DAYTONA_API_KEY",), ("DAYTONA_JWT_TOKEN", "DAYTONA_ORGANIZATION_ID"))
    TRANSPORT = DaytonaTransport

    def __init__(
        self,
        snapshot: str | None = None,
        network: bool = False,
        create_timeout: float = 120,
        sdk: Any = None,
        **kwargs: Any,
    ):
        self.check_kwargs(kwargs)
        options = dict(snapshot=snapshot, network=network, create_timeout=create_timeout)
        super().__init__(sdk=sdk, transport_options=options, **kwargs)
