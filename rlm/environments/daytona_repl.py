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

from rlm.environments.local_repl import host_options
from rlm.environments.sandbox import (
    SandboxREPL,
    SandboxTransport,
    reader_thread,
    rlms_alias,
    worker_command,
)

#: The image of a sandbox given resources but no ``image`` (it must have ``python3``).
DEFAULT_IMAGE = "python:3.11-slim"


class DaytonaTransport(SandboxTransport):
    name = "daytona"
    text = True

    def _open(self) -> None:
        sdk, opts = self.sdk, self.options
        config = {k: opts[k] for k in ("api_key", "target") if opts[k] is not None}
        client = sdk.Daytona(sdk.DaytonaConfig(**config)) if config else sdk.Daytona()
        params: dict[str, Any] = {
            "language": "python",
            "network_block_all": not opts["network"],
            "ephemeral": True,
        }
        for key in ("name", "auto_stop_interval"):
            if opts[key] is not None:
                params[key] = opts[key]
        sizes = {k: opts[k] for k in ("cpu", "memory", "disk") if opts[k] is not None}
        if opts["image"] is not None or sizes:  # resources apply to image-based sandboxes only
            if sizes:
                params["resources"] = sdk.Resources(**sizes)
            request = sdk.CreateSandboxFromImageParams(
                image=opts["image"] if opts["image"] is not None else DEFAULT_IMAGE, **params
            )
        else:
            if opts["snapshot"]:
                params["snapshot"] = opts["snapshot"]
            request = sdk.CreateSandboxFromSnapshotParams(**params)
        self.sandbox = client.create(request, timeout=opts["create_timeout"])
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

    rlms' options: ``api_key`` and ``target`` (the client's ``DaytonaConfig``; with
    ``api_key`` no variable is needed), ``name`` (the sandbox's name; default: one
    Daytona chooses, so that runs never collide), ``image`` (a ``daytona.Image`` or an
    image name) and ``cpu``/``memory``/``disk`` (cores, GB, GB: the sandbox is then
    built from an image, ``python:3.11-slim`` unless ``image`` says otherwise),
    ``auto_stop_interval`` (minutes), and ``timeout`` (seconds per code execution:
    our ``cell_timeout``).
    """

    SERVICE = "daytona"
    SDK_MODULE = "daytona"
    CREDENTIALS = (("DAYTONA_API_KEY",), ("DAYTONA_JWT_TOKEN", "DAYTONA_ORGANIZATION_ID"))
    TRANSPORT = DaytonaTransport

    def __init__(
        self,
        api_key: str | None = None,
        target: str | None = None,
        name: str | None = None,
        timeout: float | None = None,
        cpu: int | None = None,
        memory: int | None = None,
        disk: int | None = None,
        auto_stop_interval: int | None = None,
        image: Any = None,
        lm_handler_address: tuple[str, int] | None = None,
        context_payload: Any = None,
        setup_code: str | None = None,
        persistent: bool = False,
        depth: int = 1,
        custom_tools: dict[str, Any] | None = None,
        custom_sub_tools: dict[str, Any] | None = None,
        *,
        snapshot: str | None = None,
        network: bool = False,
        create_timeout: float = 120,
        sdk: Any = None,
        **kwargs: Any,
    ):
        if timeout is not None:
            kwargs["cell_timeout"] = rlms_alias(
                "cell_timeout", kwargs.get("cell_timeout"), "timeout", timeout, None
            )
        self._explicit_credentials = bool(api_key)
        options = dict(
            snapshot=snapshot, network=network, create_timeout=create_timeout, api_key=api_key,
            target=target, name=name, image=image, cpu=cpu, memory=memory, disk=disk,
            auto_stop_interval=auto_stop_interval,
        )  # fmt: skip
        super().__init__(sdk=sdk, transport_options=options, **host_options(locals()), **kwargs)
