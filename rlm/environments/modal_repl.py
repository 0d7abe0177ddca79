"""ModalREPL: the worker in a Modal Sandbox, over ``Sandbox.exec`` stdin/stdout.

``modal.Sandbox.create(app=..., image=..., timeout=..., block_network=True)``
makes the sandbox; ``sandbox.exec("python3", ..., text=False)`` starts the
worker, whose stdin (``process.stdin.write`` + ``drain``) and stdout (an
iterator of byte chunks) are the channel: no port, no broker.
``sandbox.terminate()`` runs on cleanup, on a failed or interrupted start and
on a worker restart. Credentials: ``MODAL_TOKEN_ID`` and ``MODAL_TOKEN_SECRET``
or ``~/.modal.toml`` (``modal token new``).
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
    worker_argv,
)


class ModalTransport(SandboxTransport):
    name = "modal"

    def _open(self) -> None:
        modal, opts = self.sdk, self.options
        app = modal.App.lookup(opts["app_name"], create_if_missing=True)
        image = opts["image"]
        if image is None:
            image = modal.Image.debian_slim(python_version="3.11")
        elif isinstance(image, str):
            image = modal.Image.from_registry(image)
        # else: a modal.Image the caller built (rlms' form), used as it is
        self.sandbox = modal.Sandbox.create(
            app=app,
            image=image,
            timeout=opts["lifetime"],
            block_network=not opts["network"],
            cpu=opts["cpu"],
            memory=opts["memory_mb"],
        )
        self.process = self.sandbox.exec(*worker_argv(), text=False)
        reader_thread(self._read_stdout, "modal")
        reader_thread(self._read_stderr, "modal-stderr")

    def _read_stdout(self) -> None:
        channel, process = self.channel, self.process
        try:
            for chunk in process.stdout:
                channel.feed(chunk)
        except Exception as exc:
            self.note_stderr(f"modal stdout stream failed: {type(exc).__name__}: {exc}\n")
        code = process.poll()
        self.ended(channel, None if code is None else f"exit status {code}")

    def _read_stderr(self) -> None:
        try:
            for chunk in self.process.stderr:
                self.note_stderr(chunk)
        except Exception as exc:
            self.note_stderr(f"modal stderr stream failed: {type(exc).__name__}: {exc}\n")

    def _send(self, data: bytes) -> None:
        self.process.stdin.write(data)
        self.process.stdin.drain()

    def _terminate(self) -> None:
        self.sandbox.terminate()


class ModalREPL(SandboxREPL):
    """The worker in a Modal Sandbox (see the module docstring).

    Options: ``image`` (a registry image name with ``python3``, or a ``modal.Image``
    as rlms takes; default Modal's ``debian_slim`` with Python 3.11), ``app_name``
    ("rlm-sandboxes"), ``lifetime`` (seconds, 3600; rlms calls it ``timeout``),
    ``network`` (False), ``cpu``, ``memory_mb``, ``sdk`` (a stand-in for the
    ``modal`` module), plus the common ones.
    """

    SERVICE = "modal"
    SDK_MODULE = "modal"
    CREDENTIALS = (("MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET"),)
    CREDENTIAL_FILES = ("~/.modal.toml",)
    TRANSPORT = ModalTransport

    def __init__(
        self,
        app_name: str = "rlm-sandboxes",
        image: Any = None,
        timeout: int | None = None,
        lm_handler_address: tuple[str, int] | None = None,
        context_payload: Any = None,
        setup_code: str | None = None,
        persistent: bool = False,
        depth: int = 1,
        *,
        lifetime: int | None = None,
        network: bool = False,
        cpu: float | None = None,
        memory_mb: int | None = None,
        sdk: Any = None,
        **kwargs: Any,
    ):
        lifetime = rlms_alias("lifetime", lifetime, "timeout", timeout, DEFAULT_LIFETIME)
        options = dict(
            image=image, app_name=app_name, lifetime=lifetime, network=network, cpu=cpu,
            memory_mb=memory_mb,
        )  # fmt: skip
        super().__init__(sdk=sdk, transport_options=options, **host_options(locals()), **kwargs)
